//! The engine harness body, shared by `examples/engine_harness.rs` and the crash tests (which
//! re-execute their own test binary as the harness process, so no separate build is needed).
//! See the example's docs for the directory layout and knobs.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ecs_hostd::config::{Config, PullBehavior};
use ecs_hostd::engine::docker::{DockerRuntime, Timeouts};
use ecs_hostd::engine::{Engine, Hooks, Parts, Settings};
use ecs_hostd::store::{self, Store, Table, Transaction};
use ecs_hostd::tasks::{CredentialsStore, ReportStatus, StateChangeSink, TaskChange, TaskControl};
use tokio_util::sync::CancellationToken;

/// State changes, keyed by a zero-padded sequence number.
const CHANGES: Table = Table("harness_changes");
const META: Table = Table("harness_meta");

struct DurableSink {
    store: Store,
    jsonl: PathBuf,
}

impl StateChangeSink for DurableSink {
    fn enqueue(&self, tx: &Transaction<'_>, change: &TaskChange) -> Result<(), store::Error> {
        let n: u64 = tx.get(META, "n")?.unwrap_or(0) + 1;
        tx.put(CHANGES, &format!("{n:012}"), change)?;
        tx.put(META, "n", &n)
    }

    fn notify(&self) {
        let Ok(all) = self.store.list::<TaskChange>(CHANGES) else {
            return;
        };
        let text: String = all
            .iter()
            .filter_map(|(_, c)| serde_json::to_string(c).ok())
            .map(|l| l + "\n")
            .collect();
        let tmp = self.jsonl.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &self.jsonl);
        }
    }

    fn stopped_reported(&self, task_arn: &str) -> bool {
        self.store
            .list::<TaskChange>(CHANGES)
            .map(|all| {
                all.iter()
                    .any(|(_, c)| c.task_arn == task_arn && c.status == ReportStatus::Stopped)
            })
            .unwrap_or(false)
    }
}

fn env_secs(key: &str) -> Option<Duration> {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
}

fn read_tasks(dir: &Path) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, String)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((e.file_name().to_string_lossy().into_owned(), text))
        })
        .collect();
    out.sort();
    out
}

/// Runs the harness in `HARNESS_DIR` until SIGTERM (or SIGKILL).
pub async fn harness_main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let dir = PathBuf::from(std::env::var("HARNESS_DIR").expect("HARNESS_DIR"));
    let store = Store::open(&dir.join("state.redb")).expect("store");
    let docker_host = std::env::var("DOCKER_HOST").ok();
    let docker = ecs_hostd::docker::connect(docker_host.as_deref()).expect("docker client");

    let mut config = Config::default();
    config.engine.engine_auth_type = std::env::var("ECS_ENGINE_AUTH_TYPE").ok();
    config.engine.engine_auth_data = std::env::var("ECS_ENGINE_AUTH_DATA").ok();
    let mut settings = Settings::from_config(&config, Some("us-east-1".into()), 2, 16384);
    settings.bind_ip = Some("127.0.0.1".into());
    settings.resync = Duration::from_secs(2);
    settings.engine.image_pull_behavior = match std::env::var("HARNESS_PULL_BEHAVIOR").as_deref() {
        Ok("default") => PullBehavior::Default,
        Ok("always") => PullBehavior::Always,
        Ok("once") => PullBehavior::Once,
        _ => PullBehavior::PreferCached,
    };
    if let Some(t) = env_secs("HARNESS_STOP_TIMEOUT_SECS") {
        settings.engine.container_stop_timeout = t;
    }
    if let Some(t) = env_secs("HARNESS_CLEANUP_WAIT_SECS") {
        settings.engine.task_cleanup_wait = t;
    }
    settings.engine.disk_cleanup_threshold_percent = 100.0;

    let sink = Arc::new(DurableSink {
        store: store.clone(),
        jsonl: dir.join("changes.jsonl"),
    });
    let engine = Engine::new(Parts {
        settings,
        store,
        sink,
        credentials: Arc::new(CredentialsStore::default()),
        runtime: Arc::new(DockerRuntime::new(docker, Timeouts::default())),
        ecr: Arc::new(ecs_hostd::engine::pull::SdkEcr),
        secrets: Arc::new(ecs_hostd::engine::secrets::SdkSecrets),
        objects: Arc::new(ecs_hostd::engine::envfiles::S3Objects::default()),
        hooks: Hooks {
            pause_at: std::env::var("HARNESS_PAUSE_AT").ok(),
            marker_dir: Some(dir.clone()),
        },
    })
    .expect("engine");

    let cancel = CancellationToken::new();
    let runner = {
        let e = engine.clone();
        let c = cancel.clone();
        tokio::spawn(async move { e.run(c).await })
    };
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    let mut seen: HashMap<String, String> = HashMap::new();
    let tasks_dir = dir.join("tasks");
    loop {
        for (name, text) in read_tasks(&tasks_dir) {
            if seen.get(&name) == Some(&text) {
                continue;
            }
            match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(task) => match engine.deliver(task).await {
                    Ok(()) => {
                        seen.insert(name, text);
                    }
                    Err(e) => {
                        tracing::error!(file = %name, error = %e, "Task refused.");
                        seen.insert(name, text);
                    }
                },
                // A file being written: try again next round.
                Err(_) => continue,
            }
        }
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    cancel.cancel();
    let _ = runner.await;
}
