//! Runs the real task engine (real store, real Docker) outside ACS, so tests can kill -9 it at
//! any point and restart it: the crash-safety tests and the benchmark drive it.
//!
//! Everything lives in `HARNESS_DIR`:
//! - `tasks/*.json`: one ACS task object per file; a file whose content changes is delivered
//!   again (e.g. with `"desiredStatus": "STOPPED"`);
//! - `state.redb`: the engine's store; the sink writes every state change into the table
//!   `harness_changes` *inside the engine's transaction* (exactly what the real reporter's
//!   queue does), so after a kill -9 the table holds each change exactly once;
//! - `changes.jsonl`: a best-effort export of that table after each commit, for live watching;
//! - `<phase>` marker files when `HARNESS_PAUSE_AT=<phase>` pauses the engine there
//!   (`pull.before`, `pull.after`, `create.after`, `start.after`, `stop.before`).
//!
//! Other knobs: `HARNESS_PULL_BEHAVIOR` (default `prefer-cached`), `HARNESS_STOP_TIMEOUT_SECS`,
//! `HARNESS_CLEANUP_WAIT_SECS`, `DOCKER_HOST`, `ECS_ENGINE_AUTH_TYPE`/`ECS_ENGINE_AUTH_DATA`.

#[path = "../tests/common/harness_main.rs"]
mod harness_main;

#[tokio::main]
async fn main() {
    harness_main::harness_main().await;
}
