# shellcheck shell=bash
# The official Amazon ECS agent (github.com/aws/amazon-ecs-agent, the `agent` main package, not
# ecs-init), built offline from the source mirror and run against ec2sim, so a benchmark can compare
# ecs-hostd with it in the same run. Source this file (after scripts/world.sh, which starts dockerd
# and ec2sim):
#
#   official_agent_build                                   # cached; prints the binary's path
#   pid=$(official_agent_start <sim_url> <cluster> <datadir> <logfile>)
#   official_agent_stop "$pid"
#
# Go comes from Debian's bookworm-backports (golang-1.23-go; the agent's go.mod says go 1.23.0) and
# every dependency from the agent's vendor/ directory: no module proxy, no network at build time.
#
# The source mirror lacks one vendored blob that the agent needs, the generated response
# deserializers of the EC2 SDK (agent/vendor/github.com/aws/aws-sdk-go-v2/service/ec2/
# deserializers.go, several MB). The agent calls only two EC2 operations, DescribeTags (propagating
# instance tags, off by default) and CreateTags, so official_agent_source writes a replacement with
# working deserializers for those two and, for every other operation, one that returns an error.
# No other file of the release is changed.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OFFICIAL_AGENT_VERSION="${OFFICIAL_AGENT_VERSION:-v1.101.2}"
OFFICIAL_AGENT_MIRROR="${OFFICIAL_AGENT_MIRROR:-/work/.mirror/aws+amazon-ecs-agent/repo}"
OFFICIAL_AGENT_GO="/usr/lib/go-1.23/bin/go"
OFFICIAL_AGENT_HOME="$ROOT/target/official-agent"

official_agent_log() { printf '\033[1m[official-agent]\033[0m %s\n' "$*" >&2; }

# Go 1.23 from bookworm-backports, when it is not installed yet.
official_agent_go() {
  [ -x "$OFFICIAL_AGENT_GO" ] && return 0
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    official_agent_log "adding bookworm-backports to apt's sources"
    cat >/etc/apt/sources.list.d/bookworm-backports.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  fi
  official_agent_log "installing golang-1.23-go from bookworm-backports"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -t bookworm-backports golang-1.23-go >/dev/null
  [ -x "$OFFICIAL_AGENT_GO" ] || { official_agent_log "no $OFFICIAL_AGENT_GO after installing golang-1.23-go"; return 1; }
}

# The release's source tree (agent/ with its vendor/, ecs-agent/, the ECS SDK it replaces) in $1.
official_agent_source() {
  local dest=$1 tmp
  [ -d "$OFFICIAL_AGENT_MIRROR" ] || { official_agent_log "no source mirror at $OFFICIAL_AGENT_MIRROR (OFFICIAL_AGENT_MIRROR)"; return 1; }
  tmp="$dest.tmp"
  rm -rf "$tmp" "$dest"
  mkdir -p "$tmp"
  # The excluded blobs are absent from the mirror (agent/handlers.test is a stray test binary); git
  # still prints "invalid object" for the deserializers but writes everything else.
  git --git-dir="$OFFICIAL_AGENT_MIRROR" archive "$OFFICIAL_AGENT_VERSION" -- \
    agent ecs-agent aws-sdk-go-v2/service/ecs VERSION \
    ':(exclude)agent/handlers.test' ':(exclude)*/service/ec2/deserializers.go' 2>/dev/null \
    | tar -x -C "$tmp"
  [ -f "$tmp/agent/agent.go" ] && [ -f "$tmp/agent/vendor/modules.txt" ] \
    || { official_agent_log "incomplete source tree from $OFFICIAL_AGENT_MIRROR"; return 1; }
  local ec2="$tmp/agent/vendor/github.com/aws/aws-sdk-go-v2/service/ec2"
  [ -f "$ec2/deserializers.go" ] || official_agent_ec2_deserializers "$ec2" >"$ec2/deserializers.go"
  mv "$tmp" "$dest"
}

# Prints a deserializers.go for the vendored EC2 SDK package in $1 (see the header of this file).
official_agent_ec2_deserializers() {
  local pkg=$1 op
  cat <<'EOF'
// Replacement for the generated deserializers.go of aws-sdk-go-v2/service/ec2, which the source
// mirror lacks (written by ecs-hostd's scripts/official-agent.sh). DescribeTags and CreateTags, the
// only EC2 operations the ECS agent calls, decode their responses; every other operation fails.

package ec2

import (
	"bytes"
	"context"
	"encoding/xml"
	"fmt"
	"io"

	awsmiddleware "github.com/aws/aws-sdk-go-v2/aws/middleware"
	"github.com/aws/aws-sdk-go-v2/aws/protocol/ec2query"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	smithy "github.com/aws/smithy-go"
	"github.com/aws/smithy-go/middleware"
	smithyhttp "github.com/aws/smithy-go/transport/http"
)

// ec2Response runs the rest of the stack and returns the HTTP response, or the error an EC2 Query
// error response stands for.
func ec2Response(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (
	*smithyhttp.Response, middleware.DeserializeOutput, middleware.Metadata, error,
) {
	out, metadata, err := next.HandleDeserialize(ctx, in)
	if err != nil {
		return nil, out, metadata, err
	}
	response, ok := out.RawResponse.(*smithyhttp.Response)
	if !ok {
		return nil, out, metadata, &smithy.DeserializationError{Err: fmt.Errorf("unknown transport type %T", out.RawResponse)}
	}
	if response.StatusCode < 200 || response.StatusCode >= 300 {
		return nil, out, metadata, ec2ErrorResponse(response, &metadata)
	}
	return response, out, metadata, nil
}

func ec2ErrorResponse(response *smithyhttp.Response, metadata *middleware.Metadata) error {
	var errorBuffer bytes.Buffer
	if _, err := io.Copy(&errorBuffer, response.Body); err != nil {
		return &smithy.DeserializationError{Err: fmt.Errorf("failed to copy error response body, %w", err)}
	}
	errorComponents, err := ec2query.GetErrorResponseComponents(bytes.NewReader(errorBuffer.Bytes()))
	if err != nil {
		return err
	}
	awsmiddleware.SetRequestIDMetadata(metadata, errorComponents.RequestID)
	errorCode, errorMessage := "UnknownError", "UnknownError"
	if len(errorComponents.Code) != 0 {
		errorCode = errorComponents.Code
	}
	if len(errorComponents.Message) != 0 {
		errorMessage = errorComponents.Message
	}
	return &smithy.GenericAPIError{Code: errorCode, Message: errorMessage}
}

// ec2Unavailable is the deserializer of every operation this file does not implement.
type ec2Unavailable struct{}

func (*ec2Unavailable) ID() string { return "OperationDeserializer" }

func (*ec2Unavailable) HandleDeserialize(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (
	middleware.DeserializeOutput, middleware.Metadata, error,
) {
	_, out, metadata, err := ec2Response(ctx, in, next)
	if err != nil {
		return out, metadata, err
	}
	return out, metadata, &smithy.DeserializationError{Err: fmt.Errorf(
		"EC2 %s: no response deserializer in this build", awsmiddleware.GetOperationName(ctx))}
}

type awsEc2query_deserializeOpCreateTags struct{}

func (*awsEc2query_deserializeOpCreateTags) ID() string { return "OperationDeserializer" }

func (*awsEc2query_deserializeOpCreateTags) HandleDeserialize(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (
	middleware.DeserializeOutput, middleware.Metadata, error,
) {
	response, out, metadata, err := ec2Response(ctx, in, next)
	if err != nil {
		return out, metadata, err
	}
	out.Result = &CreateTagsOutput{}
	if _, err := io.Copy(io.Discard, response.Body); err != nil {
		return out, metadata, &smithy.DeserializationError{Err: fmt.Errorf("failed to discard response body, %w", err)}
	}
	return out, metadata, nil
}

type awsEc2query_deserializeOpDescribeTags struct{}

func (*awsEc2query_deserializeOpDescribeTags) ID() string { return "OperationDeserializer" }

func (*awsEc2query_deserializeOpDescribeTags) HandleDeserialize(ctx context.Context, in middleware.DeserializeInput, next middleware.DeserializeHandler) (
	middleware.DeserializeOutput, middleware.Metadata, error,
) {
	response, out, metadata, err := ec2Response(ctx, in, next)
	if err != nil {
		return out, metadata, err
	}
	var doc struct {
		NextToken *string `xml:"nextToken"`
		Tags      []struct {
			Key          *string `xml:"key"`
			ResourceId   *string `xml:"resourceId"`
			ResourceType string  `xml:"resourceType"`
			Value        *string `xml:"value"`
		} `xml:"tagSet>item"`
	}
	if err := xml.NewDecoder(response.Body).Decode(&doc); err != nil && err != io.EOF {
		return out, metadata, &smithy.DeserializationError{Err: fmt.Errorf("failed to decode response body, %w", err)}
	}
	output := &DescribeTagsOutput{NextToken: doc.NextToken}
	for _, t := range doc.Tags {
		output.Tags = append(output.Tags, types.TagDescription{
			Key: t.Key, ResourceId: t.ResourceId, ResourceType: types.ResourceType(t.ResourceType), Value: t.Value,
		})
	}
	out.Result = output
	return out, metadata, nil
}
EOF
  for op in $(grep -ohE '&awsEc2query_deserializeOp[A-Za-z0-9_]+\{\}' "$pkg"/api_op_*.go \
    | sed -E 's/^&awsEc2query_deserializeOp//; s/\{\}$//' | sort -u); do
    case $op in CreateTags | DescribeTags) continue ;; esac
    printf '\ntype awsEc2query_deserializeOp%s struct{ ec2Unavailable }\n' "$op"
  done
}

# Builds the agent into $OFFICIAL_AGENT_HOME/<version>/agent unless it is there; prints its path.
# Like the release's `make static` (scripts/build true "" true true): CGO off, stripped, the pause
# container's name and tag linked in; the version file is the one committed with the tag.
official_agent_build() {
  local dir="$OFFICIAL_AGENT_HOME/$OFFICIAL_AGENT_VERSION"
  local bin="$dir/agent" started=$SECONDS
  if [ ! -x "$bin" ]; then
    official_agent_go
    official_agent_log "building the ECS agent $OFFICIAL_AGENT_VERSION (several minutes on 2 cores)"
    official_agent_source "$dir/src"
    local cfg=github.com/aws/amazon-ecs-agent/agent/config
    (
      cd "$dir/src/agent"
      GOTOOLCHAIN=local GOFLAGS=-mod=vendor GOPROXY=off GO111MODULE=on CGO_ENABLED=0 \
        GOCACHE="$OFFICIAL_AGENT_HOME/go-cache" GOPATH="$OFFICIAL_AGENT_HOME/go-path" \
        nice -n 10 "$OFFICIAL_AGENT_GO" build \
        -ldflags "-s -X $cfg.DefaultPauseContainerTag=0.1.0 -X $cfg.DefaultPauseContainerImageName=amazon/amazon-ecs-pause" \
        -o "$bin.tmp" .
    )
    mv "$bin.tmp" "$bin"
    # The binary is the cache; the build cache (hundreds of MB) would serve only a rebuild.
    rm -rf "$OFFICIAL_AGENT_HOME/go-cache" "$OFFICIAL_AGENT_HOME/go-path" 2>/dev/null || true
    official_agent_log "built $bin in $((SECONDS - started)) s"
  fi
  echo "$bin"
}

# Starts the built agent in the background against ec2sim's default instance; prints its pid.
# <cluster> must exist in ec2sim; <datadir> should be new for each ec2sim (the agent re-registers
# with the container instance ARN saved there). The agent listens on the fixed ports 51678
# (introspection) and 127.0.0.1:51679 (task metadata), so one runs at a time; console output goes
# to <logfile>.console.
# The settings written ${VAR:-default} below take the caller's value when it is set. Off by default:
# what needs the real host (task cgroups, task IAM roles and their credential endpoint, ENI trunking, GPUs) or
# is absent here (the pause, Service Connect and managed-daemon image tarballs: their loaders only
# log that the file is missing).
official_agent_start() {
  local sim_url=$1 cluster=$2 datadir=$3 logfile=$4 bin pid
  bin="$OFFICIAL_AGENT_HOME/$OFFICIAL_AGENT_VERSION/agent"
  [ -x "$bin" ] || { official_agent_log "$bin is not built; run official_agent_build"; return 1; }
  mkdir -p "$datadir" "$(dirname "$logfile")"
  # AWS_CA_BUNDLE (set on some machines) stops the agent at once: its SDK cannot add a CA bundle to
  # the agent's own HTTP client ("unable to add custom RootCAs HTTPClient"). ec2sim is plain HTTP.
  env -u AWS_CA_BUNDLE -u AWS_PROFILE -u AWS_SESSION_TOKEN \
    AWS_ENDPOINT_URL="$sim_url" \
    AWS_EC2_METADATA_SERVICE_ENDPOINT="$sim_url" \
    AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-AKIDTEST}" \
    AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-secret}" \
    AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" \
    ECS_CLUSTER="$cluster" \
    ECS_BACKEND_HOST="$sim_url" \
    ECS_DATADIR="$datadir" \
    ECS_HOST_DATA_DIR="$datadir" \
    ECS_CHECKPOINT=true \
    ECS_AGENT_CONFIG_FILE_PATH="$datadir/ecs.config.json" \
    ECS_LOGFILE="$logfile" \
    ECS_LOGLEVEL="${ECS_LOGLEVEL:-info}" \
    ECS_AUDIT_LOGFILE_DISABLED=true \
    ECS_AVAILABLE_LOGGING_DRIVERS="${ECS_AVAILABLE_LOGGING_DRIVERS:-[\"json-file\",\"none\"]}" \
    ECS_ENABLE_TASK_IAM_ROLE="${ECS_ENABLE_TASK_IAM_ROLE:-false}" \
    ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST="${ECS_ENABLE_TASK_IAM_ROLE_NETWORK_HOST:-false}" \
    ECS_ENABLE_TASK_CPU_MEM_LIMIT="${ECS_ENABLE_TASK_CPU_MEM_LIMIT:-false}" \
    ECS_ENABLE_TASK_ENI="${ECS_ENABLE_TASK_ENI:-false}" \
    ECS_ENABLE_GPU_SUPPORT=false \
    ECS_EBSTA_SUPPORTED="${ECS_EBSTA_SUPPORTED:-false}" \
    ECS_UPDATES_ENABLED=false \
    ECS_DISABLE_METRICS="${ECS_DISABLE_METRICS:-false}" \
    DOCKER_HOST="${DOCKER_HOST:-unix:///var/run/docker.sock}" \
    "$bin" </dev/null >"$logfile.console" 2>&1 &
  pid=$!
  sleep 1
  kill -0 "$pid" 2>/dev/null || { official_agent_log "the agent exited at once; see $logfile.console"; tail -5 "$logfile.console" >&2; return 1; }
  echo "$pid"
}

# Stops an agent official_agent_start started (SIGTERM, then SIGKILL after 10 s).
official_agent_stop() {
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
