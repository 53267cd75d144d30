#!/usr/bin/env bash
# The agent's main job on this machine, against the local test world: set up Docker, ec2sim and
# the test image (only what the demo needs: the images the tests build are left to
# scripts/test.sh); build ecs-hostd; start it as the daemon would run; show the container instance
# registered in (emulated) ECS exactly as a user sees it with boto3; stop everything.
#
#   bash scripts/demo.sh            # debug build (fast to build)
#   DEMO_PROFILE=release bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/world.sh
world_setup_demo

PROFILE="${DEMO_PROFILE:-debug}"
log "building ecs-hostd ($PROFILE)"
if [ "$PROFILE" = release ]; then cargo build --release --quiet; else cargo build --quiet; fi
BIN="target/$PROFILE/ecs-hostd"

WORK=$(mktemp -d)
EC2SIM_LOG="$WORK/ec2sim.log"
world_ec2sim
AGENT_PID=""
cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  kill "$EC2SIM_PID" 2>/dev/null && wait "$EC2SIM_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

ENDPOINT="http://127.0.0.1:$EC2SIM_PORT"
API_PORT=$("$ECS_HOSTD_PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export AWS_ACCESS_KEY_ID=AKIDDEMO AWS_SECRET_ACCESS_KEY=demo AWS_DEFAULT_REGION=us-east-1
export AWS_ENDPOINT_URL="$ENDPOINT" AWS_EC2_METADATA_SERVICE_ENDPOINT="$ENDPOINT"

PY="$ECS_HOSTD_PYTHON"
boto() { "$PY" - "$@"; }

log "creating cluster 'demo' (boto3, as a user would)"
boto <<'PY'
import boto3, os
ecs = boto3.client("ecs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
ecs.create_cluster(clusterName="demo")
PY

# What user-data writes on a real instance.
printf 'ECS_CLUSTER=demo\nECS_RESERVED_MEMORY=32\nECS_INSTANCE_ATTRIBUTES={"demo":"yes"}\n' >"$WORK/ecs.config"
: >"$WORK/config.toml"

log "pre-flight: ecs-hostd check"
# The harness's own variables are not the agent's business.
ECS_HOSTD_TEST_IMAGE_SAVED="$ECS_HOSTD_TEST_IMAGE"
unset ECS_HOSTD_PYTHON ECS_HOSTD_TEST_IMAGE
"$BIN" check --ecs-config "$WORK/ecs.config" --config "$WORK/config.toml"

log "starting: ecs-hostd run"
START=$(date +%s.%N)
# This machine is no instance of ours: the agent leaves its iptables and sysctls alone
# (ECS_HOSTD_HOST_NAT=false; on an instance it installs the 169.254.170.2 NAT).
ECS_DATADIR="$WORK/data" ECS_HOSTD_API_ADDR="127.0.0.1:$API_PORT" ECS_HOSTD_DOCKER_WATCHDOG=false \
  ECS_HOSTD_HOST_NAT=false ECS_CONTAINER_STOP_TIMEOUT=2s ECS_HOSTD_STARTUP_JITTER=0 \
  "$BIN" run --ecs-config "$WORK/ecs.config" --config "$WORK/config.toml" >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
REGISTERED=""
for _ in $(seq 600); do
  # Capture, then match: `status | grep -q` under pipefail failed whenever grep quit before status
  # wrote its last line, so most polls missed a registered agent (issue 23: 20 s "to register").
  OUT=$(ECS_HOSTD_API_ADDR="127.0.0.1:$API_PORT" "$BIN" status --ecs-config /dev/null --config "$WORK/config.toml" 2>/dev/null || true)
  case "$OUT" in *'instance:  arn:'*) REGISTERED=yes; break ;; esac
  kill -0 "$AGENT_PID" 2>/dev/null || { cat "$WORK/agent.log"; log "the agent exited"; exit 1; }
  sleep 0.05
done
END=$(date +%s.%N)
[ -n "$REGISTERED" ] || { cat "$WORK/agent.log"; log "the agent did not register within the wait"; exit 1; }
printf '\nregistered %.2f s after start\n\n' "$(echo "$END - $START" | bc -l 2>/dev/null || python3 -c "print($END-$START)")"

log "ecs-hostd status"
ECS_HOSTD_API_ADDR="127.0.0.1:$API_PORT" "$BIN" status --ecs-config /dev/null --config "$WORK/config.toml"

log "what ECS knows (boto3 describe_container_instances)"
boto <<'PY'
import boto3, os
ecs = boto3.client("ecs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
arns = ecs.list_container_instances(cluster="demo")["containerInstanceArns"]
ci = ecs.describe_container_instances(cluster="demo", containerInstances=arns)["containerInstances"][0]
print("container instance:", ci["containerInstanceArn"])
print("ec2 instance:      ", ci["ec2InstanceId"], "status", ci["status"])
for r in ci["registeredResources"]:
    value = r["stringSetValue"] if r["type"] == "STRINGSET" else r["integerValue"]
    print(f"  {r['name']:<9} {value}")
attrs = {a["name"]: a.get("value") for a in ci["attributes"]}
print("attributes:        ", len(attrs), "e.g. demo =", attrs.get("demo"), "| ecs.os-type =", attrs.get("ecs.os-type"))
PY

log "running a task exactly as a user would (boto3 register_task_definition + run_task)"
TEST_IMAGE="$ECS_HOSTD_TEST_IMAGE_SAVED" boto <<'PY'
import boto3, os, time, urllib.request
ecs = boto3.client("ecs", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
td = ecs.register_task_definition(family="demo-web", containerDefinitions=[
    {"name": "web", "image": os.environ["TEST_IMAGE"], "memory": 64, "essential": True,
     "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
     "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}]},
    {"name": "sidecar", "image": os.environ["TEST_IMAGE"], "memory": 32, "essential": False,
     "command": ["sleep", "3600"]},
])["taskDefinition"]["taskDefinitionArn"]
start = time.time()
task = ecs.run_task(cluster="demo", taskDefinition=td)["tasks"][0]["taskArn"]
def wait(status):
    for _ in range(600):
        t = ecs.describe_tasks(cluster="demo", tasks=[task])["tasks"][0]
        if t["lastStatus"] == status:
            return t
        time.sleep(0.1)
    raise SystemExit(f"task did not reach {status}: {t['lastStatus']}")
t = wait("RUNNING")
print(f"task {task.rsplit('/', 1)[1]} RUNNING {time.time() - start:.2f} s after run_task")
for c in t["containers"]:
    print(f"  {c['name']:<8} {c['lastStatus']:<8} bindings {c.get('networkBindings', [])}")
port = [c for c in t["containers"] if c["name"] == "web"][0]["networkBindings"][0]["hostPort"]
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode().strip()
print(f"GET http://127.0.0.1:{port}/ -> {body!r}")
ecs.stop_task(cluster="demo", task=task, reason="demo done")
t = wait("STOPPED")
print("task STOPPED:", ", ".join(f"{c['name']} exit {c.get('exitCode')}" for c in t["containers"]),
      "| reason:", t.get("stoppedReason"))
PY

log "stopping the agent (SIGTERM)"
kill "$AGENT_PID"; wait "$AGENT_PID" && echo "agent exited 0"; AGENT_PID=""
grep -E 'ecs-hostd started|Registered container instance' "$WORK/agent.log" | sed 's/^/  log: /'
