//! The real metrics pipeline (collectors, durable spool, CloudWatch publisher) as a small
//! standalone process, without Docker or ECS registration. The outage test in
//! `tests/aws_metrics.rs` runs it against ec2sim and kills it with SIGKILL in the middle of a
//! CloudWatch outage; operators can use it to try a configuration.
//!
//! ```sh
//! AWS_ENDPOINT_URL=http://127.0.0.1:PORT AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:PORT \
//! AWS_ACCESS_KEY_ID=x AWS_SECRET_ACCESS_KEY=x \
//! cargo run --example metrics_agent -- --data-dir /tmp/m --interval-ms 1000 --namespace Test
//! ```
//!
//! Options: `--data-dir DIR` (the redb store), `--interval-ms N` (collection and flush interval;
//! a test-only override below the 10 s the configuration allows), `--namespace NS`,
//! `--region R` (default us-east-1), `--attempts N` (SDK attempts per delivery, default 1),
//! `--profile cwagent|legacy|both`. SIGTERM or SIGINT stops it after the final flush.
//!
//! The outage test includes this file as a module and runs [`run`] in a child process of the test
//! binary (a nested `cargo build` would wait on the lock `cargo test` holds).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ecs_hostd::config::{Config, MetricsProfile};
use ecs_hostd::imds::ImdsClient;
use ecs_hostd::metrics::cloudwatch::CloudWatchPublisher;
use ecs_hostd::metrics::dimensions::AutoScalingLookup;
use ecs_hostd::metrics::{Metrics, Settings, Sources, SystemClock};
use ecs_hostd::store::Store;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

struct Args {
    data_dir: PathBuf,
    interval: Duration,
    namespace: String,
    region: String,
    attempts: u32,
    profile: MetricsProfile,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Args, String> {
    let mut a = Args {
        data_dir: PathBuf::from("/tmp/ecs-hostd-metrics-agent"),
        interval: Duration::from_secs(1),
        namespace: "CWAgent".into(),
        region: "us-east-1".into(),
        attempts: 1,
        profile: MetricsProfile::CwAgent,
    };
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--data-dir" => a.data_dir = PathBuf::from(value()?),
            "--interval-ms" => {
                a.interval = Duration::from_millis(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--namespace" => a.namespace = value()?,
            "--region" => a.region = value()?,
            "--attempts" => a.attempts = value()?.parse().map_err(|e| format!("{e}"))?,
            "--profile" => {
                a.profile = match value()?.as_str() {
                    "cwagent" => MetricsProfile::CwAgent,
                    "legacy" => MetricsProfile::Legacy,
                    "both" => MetricsProfile::Both,
                    other => return Err(format!("unknown profile {other}")),
                }
            }
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(a)
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,aws=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(std::env::args().skip(1)).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("metrics_agent: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

/// Runs the pipeline until SIGTERM or SIGINT, then makes the final flush.
pub async fn run(args: impl IntoIterator<Item = String>) -> Result<(), String> {
    let a = parse(args)?;
    let mut config = Config::default();
    if let Ok(imds) = std::env::var("AWS_EC2_METADATA_SERVICE_ENDPOINT") {
        config.imds_endpoint = imds;
    }
    config.metrics.profile = a.profile;
    config.metrics.namespace = a.namespace;
    config.metrics.interval = a.interval;
    config.metrics.flush_interval = a.interval;
    config.metrics.identity_wait = Duration::from_secs(10);
    config.metrics.shutdown_flush = Duration::from_secs(3);
    let settings = Settings::from_config(&config.metrics, None);

    let store = Store::open(&a.data_dir.join("ecs-hostd.redb")).map_err(|e| e.to_string())?;
    let sdk = ecs_hostd::aws::sdk_config(&a.region).await?;
    let metrics = Metrics::new(
        settings,
        Sources {
            imds: Arc::new(ImdsClient::new(&config.imds_endpoint)),
            asg: Arc::new(AutoScalingLookup::new(&sdk)),
            publisher: Arc::new(CloudWatchPublisher::new(&sdk, a.attempts)),
            board: None,
            store,
            clock: Arc::new(SystemClock),
        },
    )
    .map_err(|e| e.to_string())?;
    eprintln!(
        "metrics_agent: started, spool depth {}, flush phase {:?}",
        metrics.spool_depth(),
        metrics.phase()
    );
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let (mut term, mut int) = (
        signal(SignalKind::terminate()).map_err(|e| e.to_string())?,
        signal(SignalKind::interrupt()).map_err(|e| e.to_string())?,
    );
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {},
            _ = int.recv() => {},
        }
        stop.cancel();
    });
    let result = metrics.run(cancel).await;
    let c = metrics.counters();
    eprintln!(
        "metrics_agent: stopped, spool depth {}, requests {}, datums sent {}",
        metrics.spool_depth(),
        c.requests.load(std::sync::atomic::Ordering::Relaxed),
        c.datums_sent.load(std::sync::atomic::Ordering::Relaxed)
    );
    result.map_err(|e| e.to_string())
}
