//! End to end (issue 20, item 4): the container-definition fields that gate no capability reach
//! Docker and the process. A user's task definition registered with boto3 through ec2sim (which
//! renders it into ACS as ECS does: `dockerConfig.config`/`hostConfig`, container-features.md §0),
//! RunTask, the real agent, the real Docker engine; each field proved twice, by `docker inspect`
//! of the created container and by what the kernel shows inside it (`/proc`, mounts, cgroup
//! files, namespaces), never by the agent's own view.
//!
//! `privileged` cannot run on these machines (runc lacks CAP_SYS_RESOURCE, test-world.md): its
//! test proves that Docker is asked for it and that the task stops with Docker's reason.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn image() -> String {
    std::env::var("ECS_HOSTD_TEST_IMAGE").unwrap_or_else(|_| "ecs-hostd-test/busybox:latest".into())
}

const MIB: u64 = 1024 * 1024;

/// RegisterTaskDefinition with boto3, as a user writes it; returns the ARN.
fn register(sim: &Ec2Sim, family: &str, containers: Value, extra: Value) -> String {
    let out = boto(
        &sim.url(),
        r#"
ecs = client("ecs")
OUT = ecs.register_task_definition(
    family=A["family"], containerDefinitions=A["containers"], **A["extra"]
)["taskDefinition"]["taskDefinitionArn"]
"#,
        &json!({"family": family, "containers": containers, "extra": extra}),
    );
    out.as_str().expect("task definition ARN").to_owned()
}

/// `docker inspect` of one container, as Docker reports it.
fn inspect(id: &str) -> Value {
    let out = Command::new("docker")
        .args(["inspect", id])
        .output()
        .expect("docker inspect");
    assert!(out.status.success(), "docker inspect {id}: {out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0].clone()
}

/// `docker exec` of `sh -c script` in container `id` (as `user` when given, else the
/// container's user): (exit code, stdout, stderr).
fn exec(id: &str, user: Option<&str>, script: &str) -> (i32, String, String) {
    let mut cmd = Command::new("docker");
    cmd.arg("exec");
    if let Some(u) = user {
        cmd.args(["-u", u]);
    }
    let out = cmd
        .args([id, "sh", "-c", script])
        .output()
        .expect("docker exec");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// stdout of a script that must succeed inside container `id`.
fn inside(id: &str, script: &str) -> String {
    let (code, out, err) = exec(id, None, script);
    assert_eq!(code, 0, "`{script}` in {id}: {out}{err}");
    out
}

/// The Docker id of container `name` of a DescribeTasks answer.
fn runtime_id(t: &aws_sdk_ecs::types::Task, name: &str) -> String {
    t.containers()
        .iter()
        .find(|c| c.name() == Some(name))
        .and_then(|c| c.runtime_id())
        .unwrap_or_else(|| panic!("no runtime id for {name}: {t:?}"))
        .to_owned()
}

/// A cgroup v1 file of a running container's process, read on the host from the hierarchy its
/// `/proc/<pid>/cgroup` names (so a task cgroup parent changes nothing here).
fn host_cgroup_file(pid: u64, controller: &str, file: &str) -> String {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let path = cgroups
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            parts.next()?;
            parts.next().zip(parts.next())
        })
        .find(|(controllers, _)| controllers.split(',').any(|c| c == controller))
        .map(|(_, p)| p.to_owned())
        .unwrap_or_else(|| panic!("no {controller} cgroup in {cgroups}"));
    let full = format!("/sys/fs/cgroup/{controller}{path}/{file}");
    std::fs::read_to_string(&full)
        .unwrap_or_else(|e| panic!("{full}: {e}"))
        .trim()
        .to_owned()
}

/// Docker's events of container `id` since `since` (Unix seconds) until now:
/// (action, signal attribute, time in ns).
fn events_of(id: &str, since: u64) -> Vec<(String, String, u128)> {
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let out = Command::new("docker")
        .args([
            "events",
            "--since",
            &since.to_string(),
            "--until",
            &until.to_string(),
            "--filter",
            &format!("container={id}"),
            "--format",
            "{{json .}}",
        ])
        .output()
        .expect("docker events");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|e| {
            (
                e["Action"].as_str().unwrap_or_default().to_owned(),
                e["Actor"]["Attributes"]["signal"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["timeNano"].as_u64().unwrap_or_default() as u128,
            )
        })
        .collect()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The CapBnd mask of `/proc/<pid>/status` text.
fn cap_mask(status: &str, field: &str) -> u64 {
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim();
    u64::from_str_radix(hex, 16).unwrap()
}

/// The line of `/proc/mounts` text mounted at `at`.
fn mount_at<'a>(mounts: &'a str, at: &str) -> Option<&'a str> {
    mounts
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(at))
}

// Capability numbers (linux/capability.h).
const CAP_CHOWN: u32 = 0;
const CAP_DAC_OVERRIDE: u32 = 1;
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;

/// What `main` runs: it ignores SIGTERM (so a stop waits for the whole grace), serves `/www`
/// on 8080 for the port mapping, and stays up.
const MAIN_SCRIPT: &str = "trap '' TERM; httpd -f -p 8080 -h /www & while true; do sleep 1; done";

/// The task definition of the main test: `main` sets every field, `side` is not essential and
/// links to it.
fn every_field_containers() -> Value {
    json!([
        {
            "name": "main",
            "image": image(),
            "cpu": 256,
            "memory": 64,
            "memoryReservation": 32,
            "essential": true,
            "entryPoint": ["/bin/sh", "-c"],
            "command": [MAIN_SCRIPT],
            "environment": [{"name": "FIELDS_GREETING", "value": "hello fields"}],
            "portMappings": [{"containerPort": 8080, "hostPort": 0, "protocol": "tcp"}],
            "user": "65534:65534",
            "workingDirectory": "/www",
            "hostname": "fields-host",
            "readonlyRootFilesystem": true,
            "interactive": true,
            "pseudoTerminal": true,
            "dnsServers": ["10.53.0.53"],
            "dnsSearchDomains": ["fields.example"],
            "extraHosts": [{"hostname": "db.fields.example", "ipAddress": "10.11.12.13"}],
            "dockerLabels": {"team": "fields", "com.example.tier": "web"},
            "dockerSecurityOptions": ["no-new-privileges"],
            "ulimits": [
                {"name": "nofile", "softLimit": 1000, "hardLimit": 2000},
                {"name": "core", "softLimit": 1024, "hardLimit": 2048}
            ],
            "systemControls": [
                {"namespace": "net.core.somaxconn", "value": "1234"},
                {"namespace": "net.ipv4.ip_unprivileged_port_start", "value": "1025"}
            ],
            "stopTimeout": 5,
            "linuxParameters": {
                "capabilities": {"add": ["NET_ADMIN"], "drop": ["CHOWN", "NET_RAW"]},
                "devices": [
                    {"hostPath": "/dev/fuse", "containerPath": "/dev/fields-fuse", "permissions": ["read"]}
                ],
                "initProcessEnabled": true,
                "sharedMemorySize": 96,
                "tmpfs": [{"containerPath": "/scratch", "size": 16, "mountOptions": ["noexec", "nosuid"]}],
                "maxSwap": 32,
                "swappiness": 10
            }
        },
        {
            "name": "side",
            "image": image(),
            "memory": 16,
            "essential": false,
            "links": ["main:db-link"],
            "command": ["sleep", "3600"]
        }
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn every_container_field_reaches_docker_and_the_process() {
    let w = World::start("fields", &[], "").await;
    let td = register(
        &w.sim,
        &unique("fields"),
        every_field_containers(),
        json!({}),
    );
    let task = run_task(&w.sim, &w.cluster, &td).await;
    let t = wait_task_status(
        &w.sim,
        &w.cluster,
        &task,
        "RUNNING",
        Duration::from_secs(60),
        &w.agent,
    )
    .await;
    let main = runtime_id(&t, "main");
    let side = runtime_id(&t, "side");
    let i = inspect(&main);
    let (cfg, host) = (&i["Config"], &i["HostConfig"]);

    // --- entryPoint, command, environment, user, workingDirectory, hostname, labels.
    assert_eq!(cfg["Entrypoint"], json!(["/bin/sh", "-c"]));
    assert_eq!(cfg["Cmd"], json!([MAIN_SCRIPT]));
    assert!(
        cfg["Env"]
            .as_array()
            .unwrap()
            .contains(&json!("FIELDS_GREETING=hello fields")),
        "{}",
        cfg["Env"]
    );
    assert_eq!(cfg["User"], "65534:65534");
    assert_eq!(cfg["WorkingDir"], "/www");
    assert_eq!(cfg["Hostname"], "fields-host");
    assert_eq!(cfg["Labels"]["team"], "fields");
    assert_eq!(cfg["Labels"]["com.example.tier"], "web");
    // initProcessEnabled: docker-init is PID 1 and runs the entry point and command.
    assert_eq!(host["Init"], true);
    assert_eq!(inside(&main, "cat /proc/1/comm").trim(), "docker-init");
    let cmdline = inside(&main, "cat /proc/1/cmdline").replace('\0', " ");
    assert!(
        cmdline.contains(&format!("-- /bin/sh -c {MAIN_SCRIPT}")),
        "{cmdline}"
    );
    let environ = inside(&main, "cat /proc/1/environ").replace('\0', "\n");
    assert!(
        environ.lines().any(|l| l == "FIELDS_GREETING=hello fields"),
        "{environ}"
    );
    let status = inside(&main, "cat /proc/1/status");
    assert!(
        status.contains("Uid:\t65534\t65534") && status.contains("Gid:\t65534\t65534"),
        "{status}"
    );
    assert_eq!(inside(&main, "id -u; id -g"), "65534\n65534\n");
    assert_eq!(inside(&main, "readlink /proc/1/cwd").trim(), "/www");
    assert_eq!(inside(&main, "hostname").trim(), "fields-host");

    // --- extraHosts, dnsServers, dnsSearchDomains.
    assert_eq!(host["ExtraHosts"], json!(["db.fields.example:10.11.12.13"]));
    assert_eq!(host["Dns"], json!(["10.53.0.53"]));
    assert_eq!(host["DnsSearch"], json!(["fields.example"]));
    let hosts = inside(&main, "cat /etc/hosts");
    assert!(
        hosts
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["10.11.12.13", "db.fields.example"]),
        "{hosts}"
    );
    let resolv = inside(&main, "cat /etc/resolv.conf");
    assert!(
        resolv.lines().any(|l| l.trim() == "nameserver 10.53.0.53")
            && resolv.lines().any(|l| l.trim() == "search fields.example"),
        "{resolv}"
    );

    // --- readonlyRootFilesystem: the kernel mounts / read-only; a write fails with EROFS.
    assert_eq!(host["ReadonlyRootfs"], true);
    let mounts = inside(&main, "cat /proc/mounts");
    let root = mount_at(&mounts, "/").unwrap_or_else(|| panic!("no / in {mounts}"));
    assert!(
        root.split_whitespace()
            .nth(3)
            .is_some_and(|o| o.split(',').any(|x| x == "ro")),
        "{root}"
    );
    let (code, _, err) = exec(&main, None, "touch /www/written");
    assert!(
        code != 0 && err.contains("Read-only file system"),
        "{code} {err}"
    );

    // --- interactive, pseudoTerminal: PID 1's standard streams are a terminal.
    assert_eq!(cfg["OpenStdin"], true);
    assert_eq!(cfg["Tty"], true);
    for fd in [0, 1] {
        let target = inside(&main, &format!("readlink /proc/1/fd/{fd}"));
        assert!(target.trim().starts_with("/dev/pts/"), "fd {fd}: {target}");
    }

    // --- ulimits.
    assert_eq!(
        host["Ulimits"],
        json!([{"Name": "nofile", "Soft": 1000, "Hard": 2000}, {"Name": "core", "Soft": 1024, "Hard": 2048}])
    );
    let limits = inside(&main, "cat /proc/1/limits");
    let limit = |name: &str| -> Vec<String> {
        let line = limits
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {limits}"));
        line[name.len()..]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(limit("Max open files")[..2], ["1000", "2000"]);
    assert_eq!(limit("Max core file size")[..2], ["1024", "2048"]);
    assert_eq!(inside(&main, "ulimit -n; ulimit -Hn"), "1000\n2000\n");

    // --- systemControls (namespaced sysctls of the container's own network namespace).
    assert_eq!(
        host["Sysctls"],
        json!({"net.core.somaxconn": "1234", "net.ipv4.ip_unprivileged_port_start": "1025"})
    );
    assert_eq!(
        inside(
            &main,
            "cat /proc/sys/net/core/somaxconn /proc/sys/net/ipv4/ip_unprivileged_port_start"
        ),
        "1234\n1025\n"
    );

    // --- capabilities and dockerSecurityOptions: the kernel's bounding set and NoNewPrivs.
    assert_eq!(host["CapAdd"], json!(["NET_ADMIN"]));
    assert_eq!(host["CapDrop"], json!(["CHOWN", "NET_RAW"]));
    let bounding = cap_mask(&status, "CapBnd");
    let has = |cap: u32| bounding & (1 << cap) != 0;
    assert!(has(CAP_NET_ADMIN), "NET_ADMIN added: {bounding:x}");
    assert!(
        !has(CAP_CHOWN) && !has(CAP_NET_RAW),
        "dropped: {bounding:x}"
    );
    assert!(
        has(CAP_DAC_OVERRIDE),
        "Docker's defaults kept: {bounding:x}"
    );
    assert_eq!(host["SecurityOpt"], json!(["no-new-privileges"]));
    assert!(status.contains("NoNewPrivs:\t1"), "{status}");

    // --- devices: the node exists with the host device's numbers, and its cgroup allows
    // reading only (as root in the container: its mode would refuse the user anyway).
    assert_eq!(
        host["Devices"],
        json!([{"PathOnHost": "/dev/fuse", "PathInContainer": "/dev/fields-fuse", "CgroupPermissions": "r"}])
    );
    assert_eq!(
        inside(&main, "stat -c '%F %t:%T' /dev/fields-fuse").trim(),
        "character special file a:e5",
        "/dev/fuse is 10:229"
    );
    let (code, out, err) = exec(&main, Some("0"), ": < /dev/fields-fuse && echo read-ok");
    assert!(code == 0 && out.contains("read-ok"), "{code} {out}{err}");
    let (code, _, err) = exec(&main, Some("0"), ": > /dev/fields-fuse");
    assert!(
        code != 0 && err.contains("Operation not permitted"),
        "a write must be refused by the device cgroup: {code} {err}"
    );
    let devices = inside(&main, "cat /sys/fs/cgroup/devices/devices.list");
    assert!(
        devices.lines().any(|l| l.trim() == "c 10:229 r"),
        "{devices}"
    );

    // --- sharedMemorySize and tmpfs: the kernel's mounts and their sizes.
    assert_eq!(host["ShmSize"], json!(96 * MIB));
    assert_eq!(host["Tmpfs"], json!({"/scratch": "size=16m,noexec,nosuid"}));
    let shm = mount_at(&mounts, "/dev/shm").unwrap_or_else(|| panic!("{mounts}"));
    assert!(shm.contains("size=98304k"), "{shm}");
    let df = inside(&main, "df -k /dev/shm | tail -n 1");
    assert_eq!(df.split_whitespace().nth(1), Some("98304"), "{df}");
    let scratch = mount_at(&mounts, "/scratch").unwrap_or_else(|| panic!("{mounts}"));
    let options: Vec<&str> = scratch
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split(',')
        .collect();
    assert!(
        scratch.starts_with("tmpfs ")
            && options.contains(&"size=16384k")
            && options.contains(&"noexec")
            && options.contains(&"nosuid"),
        "{scratch}"
    );
    assert_eq!(
        inside(&main, "echo x > /scratch/f && cat /scratch/f"),
        "x\n",
        "the tmpfs is writable under a read-only root"
    );

    // --- cpu, memory, memoryReservation, maxSwap, swappiness: the container's cgroup files,
    // read on the host and inside.
    assert_eq!(host["CpuShares"], 256);
    assert_eq!(host["Memory"], json!(64 * MIB));
    assert_eq!(host["MemoryReservation"], json!(32 * MIB));
    assert_eq!(host["MemorySwap"], json!((64 + 32) * MIB));
    assert_eq!(host["MemorySwappiness"], 10);
    let pid = i["State"]["Pid"].as_u64().unwrap();
    let cg = |controller: &str, file: &str| host_cgroup_file(pid, controller, file);
    assert_eq!(cg("cpu", "cpu.shares"), "256");
    assert_eq!(
        cg("memory", "memory.limit_in_bytes"),
        (64 * MIB).to_string()
    );
    assert_eq!(
        cg("memory", "memory.soft_limit_in_bytes"),
        (32 * MIB).to_string()
    );
    assert_eq!(
        cg("memory", "memory.memsw.limit_in_bytes"),
        (96 * MIB).to_string()
    );
    assert_eq!(cg("memory", "memory.swappiness"), "10");
    assert_eq!(
        inside(
            &main,
            "cat /sys/fs/cgroup/memory/memory.swappiness /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes /sys/fs/cgroup/cpu/cpu.shares"
        ),
        format!("10\n{}\n256\n", 96 * MIB)
    );

    // --- portMappings: Docker's binding, ECS's networkBindings, and the server answering.
    assert_eq!(host["PortBindings"]["8080/tcp"][0]["HostPort"], "");
    let host_port: u16 = i["NetworkSettings"]["Ports"]["8080/tcp"][0]["HostPort"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let bound = t
        .containers()
        .iter()
        .find(|c| c.name() == Some("main"))
        .unwrap()
        .network_bindings()
        .iter()
        .any(|b| b.container_port() == Some(8080) && b.host_port() == Some(host_port as i32));
    assert!(bound, "networkBindings of main: {t:?}");
    let page = Command::new("wget")
        .args(["-qO-", "-T", "3", &format!("http://127.0.0.1:{host_port}/")])
        .output()
        .expect("wget");
    assert_eq!(
        String::from_utf8_lossy(&page.stdout).trim(),
        "hello from ecs-hostd"
    );

    // --- links: side resolves main by the alias.
    let side_i = inspect(&side);
    let links = side_i["HostConfig"]["Links"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        links
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.ends_with("/db-link"))),
        "{links:?}"
    );
    let main_ip = i["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        .as_str()
        .unwrap()
        .to_owned();
    let side_hosts = inside(&side, "cat /etc/hosts");
    assert!(
        side_hosts.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.first() == Some(&main_ip.as_str()) && words.contains(&"db-link")
        }),
        "{main_ip} db-link in {side_hosts}"
    );

    // --- essential: false: side dies, the task keeps running.
    assert!(
        Command::new("docker")
            .args(["kill", &side])
            .output()
            .unwrap()
            .status
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = w
            .sim
            .ecs()
            .await
            .describe_tasks()
            .cluster(&w.cluster)
            .tasks(&task)
            .send()
            .await
            .unwrap();
        let t = &out.tasks()[0];
        let side_status = t
            .containers()
            .iter()
            .find(|c| c.name() == Some("side"))
            .and_then(|c| c.last_status())
            .map(str::to_owned);
        if side_status.as_deref() == Some("STOPPED") {
            assert_eq!(
                t.last_status(),
                Some("RUNNING"),
                "a non-essential exit stopped the task"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "side never reported STOPPED:\n{}",
            w.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(inspect(&main)["State"]["Running"], true);

    // --- stopTimeout: Docker's SIGTERM → SIGKILL grace on StopTask is the task definition's 5 s
    // (the agent's own default here is 2 s: ECS_CONTAINER_STOP_TIMEOUT in World).
    let since = unix_now();
    stop_task(&w.sim, &w.cluster, &task).await;
    wait_task_status(
        &w.sim,
        &w.cluster,
        &task,
        "STOPPED",
        Duration::from_secs(60),
        &w.agent,
    )
    .await;
    let events = events_of(&main, since.saturating_sub(1));
    let term = events
        .iter()
        .find(|(a, s, _)| a == "kill" && s == "15")
        .unwrap_or_else(|| panic!("no SIGTERM in {events:?}"));
    let killed = events
        .iter()
        .find(|(a, s, _)| a == "kill" && s == "9")
        .unwrap_or_else(|| panic!("no SIGKILL in {events:?}"));
    let grace = Duration::from_nanos((killed.2 - term.2) as u64);
    eprintln!("stop grace observed: {grace:?}");
    assert!(
        grace >= Duration::from_millis(4_500) && grace < Duration::from_secs(15),
        "SIGTERM → SIGKILL took {grace:?}, stopTimeout is 5 s: {events:?}"
    );
}

/// The namespace `/proc/self/ns/<kind>` names, read by this test process (on the host).
fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The task-level `pidMode: host` and `ipcMode: host` / `none` (task mode is another change's),
/// and `privileged`: what Docker is asked for and which namespaces the process is in.
#[tokio::test(flavor = "multi_thread")]
async fn task_pid_and_ipc_modes_and_privileged_reach_docker() {
    let w = World::start("nsmodes", &[], "").await;
    let sleeper = |name: &str| {
        json!({"name": name, "image": image(), "memory": 16, "essential": true,
               "command": ["sleep", "3600"]})
    };
    let host_td = register(
        &w.sim,
        &unique("hostns"),
        json!([sleeper("app")]),
        json!({"pidMode": "host", "ipcMode": "host"}),
    );
    let none_td = register(
        &w.sim,
        &unique("noipc"),
        json!([sleeper("app")]),
        json!({"ipcMode": "none"}),
    );
    let mut privileged = sleeper("app");
    privileged["privileged"] = json!(true);
    let privileged_td = register(&w.sim, &unique("priv"), json!([privileged]), json!({}));
    // startTimeout: db's first health check is a minute away, so it stays "starting"; web,
    // which needs it HEALTHY, gives up after db's 2 s instead of waiting for ever.
    let mut db = sleeper("db");
    db["essential"] = json!(false);
    db["startTimeout"] = json!(2);
    db["healthCheck"] = json!({"command": ["CMD-SHELL", "exit 0"], "interval": 60, "timeout": 5,
                               "retries": 1, "startPeriod": 60});
    let mut web = sleeper("web");
    web["dependsOn"] = json!([{"containerName": "db", "condition": "HEALTHY"}]);
    let timeout_td = register(&w.sim, &unique("starttimeout"), json!([db, web]), json!({}));
    let timeout_task = run_task(&w.sim, &w.cluster, &timeout_td).await;
    let host_task = run_task(&w.sim, &w.cluster, &host_td).await;
    let none_task = run_task(&w.sim, &w.cluster, &none_td).await;
    let privileged_task = run_task(&w.sim, &w.cluster, &privileged_td).await;
    let within = Duration::from_secs(60);
    let host_t =
        wait_task_status(&w.sim, &w.cluster, &host_task, "RUNNING", within, &w.agent).await;
    let none_t =
        wait_task_status(&w.sim, &w.cluster, &none_task, "RUNNING", within, &w.agent).await;

    // pidMode host, ipcMode host: the host's PID and IPC namespaces.
    let app = runtime_id(&host_t, "app");
    let hc = inspect(&app)["HostConfig"].clone();
    assert_eq!(
        (&hc["PidMode"], &hc["IpcMode"]),
        (&json!("host"), &json!("host"))
    );
    for kind in ["pid", "ipc"] {
        assert_eq!(
            inside(&app, &format!("readlink /proc/self/ns/{kind}")).trim(),
            host_ns(kind),
            "{kind} namespace"
        );
    }

    // ipcMode none: a private IPC namespace without /dev/shm; the PID namespace its own.
    let app = runtime_id(&none_t, "app");
    let hc = inspect(&app)["HostConfig"].clone();
    assert_eq!(hc["IpcMode"], "none");
    assert_ne!(
        inside(&app, "readlink /proc/self/ns/ipc").trim(),
        host_ns("ipc")
    );
    assert_ne!(
        inside(&app, "readlink /proc/self/ns/pid").trim(),
        host_ns("pid")
    );
    let mounts = inside(&app, "cat /proc/mounts");
    assert!(mount_at(&mounts, "/dev/shm").is_none(), "{mounts}");

    // privileged: Docker is asked for it; runc cannot grant it on these machines, so the task
    // stops with Docker's reason instead of running without it.
    let t = wait_task_status(
        &w.sim,
        &w.cluster,
        &privileged_task,
        "STOPPED",
        within,
        &w.agent,
    )
    .await;
    let c = &t.containers()[0];
    let id = c
        .runtime_id()
        .expect("the privileged container was created");
    assert_eq!(inspect(id)["HostConfig"]["Privileged"], true);
    assert!(c.reason().is_some_and(|r| !r.is_empty()), "a reason: {c:?}");
    eprintln!("privileged container's reason: {:?}", c.reason());

    // startTimeout: web was never created and says why; the task stopped (web is essential).
    let t = wait_task_status(
        &w.sim,
        &w.cluster,
        &timeout_task,
        "STOPPED",
        within,
        &w.agent,
    )
    .await;
    let web = t
        .containers()
        .iter()
        .find(|c| c.name() == Some("web"))
        .unwrap();
    assert!(web.runtime_id().is_none(), "web was created: {web:?}");
    let reason = web.reason().unwrap_or_default();
    assert!(
        reason.starts_with("DependencyConditionError") && reason.contains("startTimeout of 2 s"),
        "{reason}"
    );
}

/// `networkMode: none`, `disableNetworking`, a UDP port, a container port range and the health
/// check's timings: what Docker is asked for, what the process sees, and the bindings ECS is told.
#[tokio::test(flavor = "multi_thread")]
async fn network_fields_ports_and_health_check_timings_reach_docker() {
    let w = World::start("netfields", &[], "").await;
    let sleeper = |name: &str| {
        json!({"name": name, "image": image(), "memory": 16, "essential": true,
               "command": ["sleep", "3600"]})
    };
    let none_td = register(
        &w.sim,
        &unique("netnone"),
        json!([sleeper("app")]),
        json!({"networkMode": "none"}),
    );
    let mut isolated = sleeper("isolated");
    isolated["disableNetworking"] = json!(true);
    let mut ports = sleeper("ports");
    ports["portMappings"] = json!([
        {"containerPort": 5353, "protocol": "udp"},
        {"containerPortRange": "9000-9002", "protocol": "tcp"}
    ]);
    ports["healthCheck"] = json!({"command": ["CMD-SHELL", "exit 0"], "interval": 7,
                                  "timeout": 3, "retries": 4, "startPeriod": 2});
    let bridge_td = register(
        &w.sim,
        &unique("netbridge"),
        json!([isolated, ports]),
        json!({"networkMode": "bridge"}),
    );
    let none_task = run_task(&w.sim, &w.cluster, &none_td).await;
    let bridge_task = run_task(&w.sim, &w.cluster, &bridge_td).await;
    let within = Duration::from_secs(60);
    let none_t =
        wait_task_status(&w.sim, &w.cluster, &none_task, "RUNNING", within, &w.agent).await;
    let bridge_t = wait_task_status(
        &w.sim,
        &w.cluster,
        &bridge_task,
        "RUNNING",
        within,
        &w.agent,
    )
    .await;

    // The links a process sees: /proc/net/dev lists its namespace's interfaces.
    let links = |id: &str| -> Vec<String> {
        inside(id, "cat /proc/net/dev")
            .lines()
            .skip(2)
            .filter_map(|l| l.split(':').next())
            .map(|s| s.trim().to_owned())
            .collect()
    };
    // networkMode none: Docker's `none` network, only the loopback inside.
    let app = runtime_id(&none_t, "app");
    assert_eq!(inspect(&app)["HostConfig"]["NetworkMode"], "none");
    assert_eq!(links(&app), ["lo"]);

    // disableNetworking: Config.NetworkDisabled, only the loopback inside, in a bridge task.
    let isolated = runtime_id(&bridge_t, "isolated");
    assert_eq!(inspect(&isolated)["Config"]["NetworkDisabled"], true);
    assert_eq!(links(&isolated), ["lo"]);

    // The ports container has a real bridge interface; its UDP port and every port of the range
    // are published on host ports Docker chose, and ECS is told the same bindings.
    let ports = runtime_id(&bridge_t, "ports");
    assert!(
        links(&ports).iter().any(|l| l == "eth0"),
        "{:?}",
        links(&ports)
    );
    let i = inspect(&ports);
    let published = &i["NetworkSettings"]["Ports"];
    let host_port = |key: &str| -> u16 {
        published[key][0]["HostPort"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{key} not published: {published}"))
    };
    let udp = host_port("5353/udp");
    let range: Vec<u16> = (9000..=9002)
        .map(|p| host_port(&format!("{p}/tcp")))
        .collect();
    let reported = bridge_t
        .containers()
        .iter()
        .find(|c| c.name() == Some("ports"))
        .unwrap()
        .network_bindings()
        .to_vec();
    assert!(
        reported.iter().any(|b| b.container_port() == Some(5353)
            && b.host_port() == Some(i32::from(udp))
            && b.protocol().map(|p| p.as_str()) == Some("udp")),
        "{reported:?}"
    );
    // Each port of the range is reported with the host port Docker bound (one binding a port;
    // the official agent collapses a contiguous host range into `hostPortRange`).
    for (port, host) in (9000..=9002).zip(&range) {
        assert!(
            reported.iter().any(|b| b.container_port() == Some(port)
                && b.host_port() == Some(i32::from(*host))
                && b.protocol().map(|p| p.as_str()) == Some("tcp")),
            "{port} → {host}: {reported:?}"
        );
    }

    // The health check's timings, in nanoseconds as Docker keeps them.
    let hc = &i["Config"]["Healthcheck"];
    let s = 1_000_000_000u64;
    assert_eq!(hc["Test"], json!(["CMD-SHELL", "exit 0"]));
    assert_eq!(
        (
            &hc["Interval"],
            &hc["Timeout"],
            &hc["Retries"],
            &hc["StartPeriod"]
        ),
        (&json!(7 * s), &json!(3 * s), &json!(4), &json!(2 * s))
    );
}
