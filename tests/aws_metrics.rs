//! Host metrics against ec2sim (moto behind the RPCv2 CBOR translation), read back with boto3
//! exactly as a user would: names, units, values against /proc/meminfo and df at that moment,
//! dimension sets proven with ListMetrics (moto's statistics ignore dimensions); the real SDK
//! request body against the batcher's size estimate; and an outage with a kill -9 in the middle
//! (run through `examples/metrics_agent.rs`, the real pipeline and spool as a separate process).
//!
//! These tests FAIL when ec2sim or its Python environment is missing: `scripts/test.sh` provides
//! them (`ECS_HOSTD_PYTHON`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ecs_hostd::config::Config;
use ecs_hostd::health::Board;
use ecs_hostd::imds::ImdsClient;
use ecs_hostd::metrics::catalogue::Unit;
use ecs_hostd::metrics::cloudwatch::{CloudWatchPublisher, MetricsPublisher};
use ecs_hostd::metrics::datum::{Datum, REQUEST_OVERHEAD};
use ecs_hostd::metrics::dimensions::{self, AutoScalingLookup};
use ecs_hostd::metrics::{Metrics, Settings, Sources, SystemClock};
use ecs_hostd::store::Store;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[path = "common/python.rs"]
mod ec2sim_python;

fn python() -> String {
    let py = ec2sim_python::python().to_string_lossy().into_owned();
    let ok = Command::new(&py)
        .args(["-c", "import moto, boto3, cbor2"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "ec2sim's Python ({py}) with moto, boto3 and cbor2 is missing: run scripts/test.sh (or set ECS_HOSTD_PYTHON)"
    );
    py
}

/// One ec2sim process on a free port.
struct Sim {
    child: Child,
    port: u16,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Sim {
    fn start() -> Sim {
        let py = python();
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready.json");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ec2sim/ec2sim.py");
        let log = std::fs::File::create(dir.path().join("ec2sim.log")).unwrap();
        let child = Command::new(&py)
            .args([script, "--port", "0", "--ready-file"])
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start ec2sim");
        let started = Instant::now();
        let port = loop {
            if let Ok(text) = std::fs::read_to_string(&ready)
                && let Ok(v) = serde_json::from_str::<Value>(&text)
            {
                break v["port"].as_u64().unwrap() as u16;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "ec2sim did not become ready: {}",
                std::fs::read_to_string(dir.path().join("ec2sim.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        Sim {
            child,
            port,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn control(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/ec2sim{path}", self.url());
        let req = match method {
            "GET" => self.http.get(&url),
            "POST" => self.http.post(&url),
            "DELETE" => self.http.delete(&url),
            other => panic!("{other}"),
        };
        let req = match body {
            Some(b) => req
                .body(b.to_string())
                .header("content-type", "application/json"),
            None => req,
        };
        let resp = req.send().await.expect("ec2sim control API");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// Runs boto3 code (which sets `OUT`) against ec2sim; `A` holds `args`.
    fn boto(&self, code: &str, args: Value) -> Value {
        ec2sim_python::boto(&self.url(), code, &args)
    }

    async fn sdk(&self) -> aws_config::SdkConfig {
        let creds =
            aws_credential_types::Credentials::new("AKIDTEST", "secret", None, None, "test");
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(self.url())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(creds)
            .load()
            .await
    }

    /// Every series of a namespace: (metric name, {dimension name: value}).
    fn list_metrics(&self, namespace: &str) -> BTreeSet<(String, BTreeMap<String, String>)> {
        let v = self.boto(
            r#"
cw = client("cloudwatch")
OUT = []
for page in cw.get_paginator("list_metrics").paginate(Namespace=A["ns"]):
    for m in page["Metrics"]:
        OUT.append([m["MetricName"], {d["Name"]: d["Value"] for d in m.get("Dimensions", [])}])
"#,
            json!({"ns": namespace}),
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let dims = m[1]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                (m[0].as_str().unwrap().to_owned(), dims)
            })
            .collect()
    }

    /// Datapoints of one metric at a 1 s period: (unix seconds, average, sample count).
    fn stats(
        &self,
        namespace: &str,
        name: &str,
        unit: &str,
        from: f64,
        to: f64,
    ) -> Vec<(f64, f64, f64)> {
        let v = self.boto(
            r#"
cw = client("cloudwatch")
r = cw.get_metric_statistics(Namespace=A["ns"], MetricName=A["name"], Unit=A["unit"],
    StartTime=ts(A["from"]), EndTime=ts(A["to"]), Period=1, Statistics=["Average", "SampleCount"])
OUT = sorted([d["Timestamp"].timestamp(), d["Average"], d["SampleCount"]] for d in r["Datapoints"])
"#,
            json!({"ns": namespace, "name": name, "unit": unit, "from": from, "to": to}),
        );
        v.as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p[0].as_f64().unwrap(),
                    p[1].as_f64().unwrap(),
                    p[2].as_f64().unwrap(),
                )
            })
            .collect()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now_s() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// (MemAvailable %, classic used %) from /proc/meminfo, computed here independently.
fn meminfo_percents() -> (f64, f64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let field = |k: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(&format!("{k}:")))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let total = field("MemTotal");
    let used =
        total - field("MemFree") - field("Buffers") - field("Cached") - field("SReclaimable");
    (
        100.0 * field("MemAvailable") / total,
        100.0 * used.max(0.0) / total,
    )
}

fn swap_total() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("SwapTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// df's view of `/`: (source, fstype, used / (used + avail) in percent, unrounded).
fn df_root() -> (String, String, f64) {
    let out = Command::new("df")
        .args(["-P", "-T", "-k", "/"])
        .output()
        .expect("df");
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
    let used: f64 = f[3].parse().unwrap();
    let avail: f64 = f[4].parse().unwrap();
    (
        f[0].to_owned(),
        f[1].to_owned(),
        100.0 * used / (used + avail),
    )
}

fn dims(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The default cwagent catalogue plus health metrics and a ClusterName rollup, published by the
/// real subsystem (IMDS, Auto Scaling, CloudWatch clients) to ec2sim and read back with boto3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_metrics_reach_cloudwatch_with_names_units_values_and_dimension_sets() {
    let sim = Sim::start();
    let inst = sim
        .control("POST", "/instances", Some(json!({"asg": "metrics-asg"})))
        .await;
    let instance_id = inst["instance_id"].as_str().unwrap().to_owned();
    let imds_url = inst["imds"].as_str().unwrap().to_owned();
    // Make the instance a member of a real (moto) Auto Scaling group, as Auto Scaling would.
    sim.boto(
        r#"
a = client("autoscaling")
a.create_launch_configuration(LaunchConfigurationName="lc", ImageId="ami-760aaa0f", InstanceType="c5.xlarge")
a.create_auto_scaling_group(AutoScalingGroupName="metrics-asg", LaunchConfigurationName="lc",
    MinSize=0, MaxSize=2, DesiredCapacity=0, AvailabilityZones=["us-east-1a"])
a.attach_instances(InstanceIds=[A["id"]], AutoScalingGroupName="metrics-asg")
"#,
        json!({"id": instance_id}),
    );
    let sdk = sim.sdk().await;
    let imds = ImdsClient::new(&imds_url);
    let base = dimensions::read_base(&imds).await.unwrap();
    assert_eq!(base.instance_id, instance_id);

    let mut config = Config::default();
    config.metrics.interval = Duration::from_secs(2); // test-only: below the 10 s minimum
    config.metrics.flush_interval = Duration::from_secs(2);
    config.metrics.health_metrics = true;
    config.metrics.dimensions = vec!["InstanceId".into(), "ClusterName".into()];
    let settings = Settings::from_config(&config.metrics, Some("metrics-cluster"));
    assert!(settings.catalogue.high_resolution);
    let board = Board::new();
    board.set("docker", true, "Docker 26 (API 1.45)");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("ecs-hostd.redb")).unwrap();
    let metrics = Metrics::new(
        settings,
        Sources {
            imds: Arc::new(ImdsClient::new(&imds_url)),
            asg: Arc::new(AutoScalingLookup::new(&sdk)),
            publisher: Arc::new(CloudWatchPublisher::new(&sdk, 1)),
            board: Some(board),
            store,
            clock: Arc::new(SystemClock),
        },
    )
    .unwrap();

    let started = now_s();
    let (avail_before, used_before) = meminfo_percents();
    let cancel = CancellationToken::new();
    let task = tokio::spawn({
        let (m, c) = (metrics.clone(), cancel.clone());
        async move { m.run(c).await }
    });
    tokio::time::sleep(Duration::from_secs(9)).await;
    let (avail_after, used_after) = meminfo_percents();
    cancel.cancel();
    task.await.unwrap().unwrap();
    let ended = now_s();
    assert_eq!(
        metrics.spool_depth(),
        0,
        "everything delivered by the final flush"
    );

    // Dimension sets, exactly (ListMetrics honours dimensions).
    let (root_source, root_fstype, df_pct) = df_root();
    let root_device = root_source.trim_start_matches("/dev/").to_owned();
    let host = [
        ("AutoScalingGroupName", "metrics-asg"),
        ("ImageId", base.image_id.as_str()),
        ("InstanceId", instance_id.as_str()),
        ("InstanceType", base.instance_type.as_str()),
    ];
    let disk = |path: &str, device: &str, fstype: &str| {
        let mut d = dims(&host);
        d.insert("device".into(), device.into());
        d.insert("fstype".into(), fstype.into());
        d.insert("path".into(), path.into());
        d
    };
    let listed = sim.list_metrics("CWAgent");
    let only_id = dims(&[("InstanceId", instance_id.as_str())]);
    let cluster = dims(&[("ClusterName", "metrics-cluster")]);
    let mut expected: BTreeSet<(String, BTreeMap<String, String>)> = [
        ("mem_used_percent", dims(&host)),
        ("mem_used_percent", only_id.clone()),
        ("mem_used_percent", cluster.clone()),
        ("mem_available_percent", dims(&host)),
        ("disk_used_percent", only_id.clone()),
        ("disk_used_percent", cluster.clone()),
        ("ecs_hostd_docker_reachable", only_id.clone()),
        ("ecs_hostd_agent_restarts", only_id.clone()),
    ]
    .into_iter()
    .map(|(n, d)| (n.to_owned(), d))
    .collect();
    if swap_total() > 0 {
        expected.insert(("swap_used_percent".into(), dims(&host)));
    }
    // Every listed filesystem series must be a selected one; `/` must be among them.
    let disk_series: Vec<&BTreeMap<String, String>> = listed
        .iter()
        .filter(|(n, d)| n == "disk_used_percent" && d.contains_key("path"))
        .map(|(_, d)| d)
        .collect();
    assert!(
        disk_series.contains(&&disk("/", &root_device, &root_fstype)),
        "{disk_series:#?}"
    );
    for d in &disk_series {
        expected.insert(("disk_used_percent".into(), (*d).clone()));
        expected.insert(("disk_inodes_free".into(), (*d).clone()));
    }
    assert_eq!(listed, expected, "series (name + exact dimension set)");

    // Values and units, read back with GetMetricStatistics at a 1 s period.
    let (from, to) = (started - 5.0, ended + 5.0);
    let avail = sim.stats("CWAgent", "mem_available_percent", "Percent", from, to);
    assert!(avail.len() >= 3, "{avail:?}");
    let (lo, hi) = (
        avail_before.min(avail_after) - 2.0,
        avail_before.max(avail_after) + 2.0,
    );
    for (t, v, n) in &avail {
        assert!(
            (lo..=hi).contains(v),
            "mem_available_percent {v} outside [{lo}, {hi}]"
        );
        assert_eq!(*n, 1.0, "one datum per series and second");
        assert_eq!(*t as i64 % 2, 0, "timestamps on the 2 s grid: {t}");
        assert!(
            *t >= started - 1.0 && *t <= ended,
            "original collection time {t}"
        );
    }
    let used = sim.stats("CWAgent", "mem_used_percent", "Percent", from, to);
    let (lo, hi) = (
        used_before.min(used_after) - 2.0,
        used_before.max(used_after) + 2.0,
    );
    for (_, v, n) in &used {
        assert!(
            (lo..=hi).contains(v),
            "mem_used_percent {v} outside [{lo}, {hi}]"
        );
        assert_eq!(*n, 3.0, "host set + InstanceId rollup + ClusterName rollup");
    }
    assert!(
        sim.stats("CWAgent", "mem_available_percent", "Bytes", from, to)
            .is_empty(),
        "unit is Percent"
    );
    assert!(
        !sim.stats("CWAgent", "disk_inodes_free", "Count", from, to)
            .is_empty(),
        "unit is Count"
    );
    if disk_series.len() == 1 {
        for (_, v, _) in sim.stats("CWAgent", "disk_used_percent", "Percent", from, to) {
            assert!(
                (v - df_pct).abs() < 1.0,
                "disk_used_percent {v} vs df {df_pct}"
            );
        }
    }
    let docker = sim.stats("CWAgent", "ecs_hostd_docker_reachable", "None", from, to);
    assert!(docker.iter().all(|(_, v, _)| *v == 1.0) && !docker.is_empty());

    // The SDK spoke RPCv2 CBOR to ec2sim.
    let requests = sim
        .control(
            "GET",
            "/requests?service=cloudwatch&operation=PutMetricData",
            None,
        )
        .await;
    let requests = requests["requests"].as_array().unwrap();
    assert!(!requests.is_empty());
    assert!(
        requests.iter().all(|r| r["protocol"] == "cbor"),
        "{requests:?}"
    );
}

/// Records the size of every serialised PutMetricData body.
#[derive(Debug, Default)]
struct BodySize(Arc<AtomicUsize>);

impl aws_sdk_cloudwatch::config::Intercept for BodySize {
    fn name(&self) -> &'static str {
        "BodySize"
    }

    fn read_before_transmit(
        &self,
        context: &aws_sdk_cloudwatch::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_cloudwatch::config::RuntimeComponents,
        _: &mut aws_sdk_cloudwatch::config::ConfigBag,
    ) -> Result<(), aws_sdk_cloudwatch::error::BoxError> {
        let n = context.request().body().bytes().map_or(0, <[u8]>::len);
        self.0.store(n, Ordering::Relaxed);
        Ok(())
    }
}

/// The batcher's size estimate is an upper bound of the body aws-sdk-cloudwatch really sends
/// (uncompressed), for small datums and for datums at the dimension limits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_estimate_bounds_the_real_cbor_body() {
    let sim = Sim::start();
    let sdk = sim.sdk().await;
    let size = Arc::new(AtomicUsize::new(0));
    let conf = aws_sdk_cloudwatch::config::Builder::from(&sdk)
        .disable_request_compression(true)
        .interceptor(BodySize(size.clone()))
        .build();
    let publisher = CloudWatchPublisher::from_client(aws_sdk_cloudwatch::Client::from_conf(conf));
    let now = (now_s() * 1000.0) as i64;
    let small: Vec<Datum> = (0..50)
        .map(|i| {
            Datum::new(
                "mem_used_percent",
                Unit::Percent,
                42.5 + i as f64,
                now - i * 1000,
                vec![
                    ("ImageId".into(), "ami-760aaa0f".into()),
                    ("InstanceId".into(), "i-0123456789abcdef0".into()),
                    ("InstanceType".into(), "m5.large".into()),
                ],
                true,
            )
        })
        .collect();
    let large: Vec<Datum> = (0..10)
        .map(|i| {
            Datum::new(
                &"n".repeat(255),
                Unit::Bytes,
                1e12,
                now - i * 1000,
                (0..30)
                    .map(|d| (format!("Dimension{d:02}"), "v".repeat(1024)))
                    .collect(),
                false,
            )
        })
        .collect();
    for batch in [small, large] {
        publisher
            .put("SizeTest", &batch)
            .await
            .expect("moto accepts the batch");
        let real = size.load(Ordering::Relaxed);
        let estimate = REQUEST_OVERHEAD + batch.iter().map(Datum::estimated_size).sum::<usize>();
        assert!(real > 0);
        assert!(real <= estimate, "real body {real} > estimate {estimate}");
        // Not wildly pessimistic either: the cap should not waste half of the 1 MB.
        assert!(estimate < real * 2, "estimate {estimate} vs real {real}");
    }
}

#[path = "../examples/metrics_agent.rs"]
#[allow(dead_code)]
mod metrics_agent;

/// The agent process of the outage test: this test binary re-executed with
/// `ECS_HOSTD_METRICS_AGENT_ARGS` set runs `examples/metrics_agent.rs`; without it, nothing.
#[test]
fn metrics_agent_child() {
    let Ok(args) = std::env::var("ECS_HOSTD_METRICS_AGENT_ARGS") else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter("info,aws=warn")
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let result = rt.block_on(metrics_agent::run(
        args.split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    ));
    if let Err(e) = &result {
        eprintln!("metrics_agent: {e}");
    }
    std::process::exit(i32::from(result.is_err()));
}

fn start_agent(sim: &Sim, data: &Path, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let args = format!(
        "--data-dir {} --interval-ms 1000 --namespace OutageTest --attempts 1",
        data.display()
    );
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "metrics_agent_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("ECS_HOSTD_METRICS_AGENT_ARGS", args)
        .env("AWS_ENDPOINT_URL", sim.url())
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", sim.url())
        .env("AWS_ACCESS_KEY_ID", "AKIDTEST")
        .env("AWS_SECRET_ACCESS_KEY", "secret")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the metrics agent")
}

/// CloudWatch refuses for several intervals; the agent is killed with SIGKILL during the outage
/// and started again on the same data directory; after recovery every datapoint collected while
/// the agent was alive arrives exactly once, with its original timestamp. The agent is
/// `examples/metrics_agent.rs` (the real pipeline and spool, 1 s interval; the full daemon needs
/// Docker and ECS registration), run in a child process so SIGKILL is real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_with_kill9_loses_and_duplicates_nothing() {
    let sim = Sim::start();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("agent.log");
    let data = dir.path().join("data");

    let t_start = now_s();
    let mut agent = start_agent(&sim, &data, &log);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let fault_on = now_s();
    sim.control(
        "POST",
        "/faults",
        Some(json!({"service": "cloudwatch", "mode": "unavailable"})),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    agent.kill().unwrap(); // SIGKILL
    agent.wait().unwrap();
    let t_kill = now_s();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let t_restart = now_s();
    let mut agent = start_agent(&sim, &data, &log);
    tokio::time::sleep(Duration::from_secs(4)).await;
    sim.control(
        "POST",
        "/faults",
        Some(json!({"service": "cloudwatch", "mode": null})),
    )
    .await;
    let fault_off = now_s();
    // Backoff after 4 s of outage is at most 4 s; then the backlog drains in one request.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pid = agent.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = agent.wait().unwrap();
    let t_stop = now_s();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "agent exit {status:?}\n{log_text}");
    assert!(
        log_text.contains("stopped, spool depth 0"),
        "the spool is empty after recovery:\n{log_text}"
    );

    // The outage was real: PutMetricData calls were refused while the fault was on.
    let recorded = sim
        .control(
            "GET",
            "/requests?service=cloudwatch&operation=PutMetricData",
            None,
        )
        .await;
    let refused = recorded["requests"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| !r["fault"].is_null())
        .count();
    assert!(refused >= 3, "{refused} refused requests");

    let points = sim.stats(
        "OutageTest",
        "mem_available_percent",
        "Percent",
        t_start - 5.0,
        t_stop + 5.0,
    );
    let stamps: Vec<i64> = points.iter().map(|(t, _, _)| *t as i64).collect();
    for (t, _, n) in &points {
        assert_eq!(*n, 1.0, "datapoint at {t} arrived {n} times\n{log_text}");
        assert_eq!(t.fract(), 0.0, "aligned original timestamp {t}");
    }
    // Alive windows: each second from shortly after a start to shortly before a stop is there.
    let first_run: Vec<i64> = stamps
        .iter()
        .copied()
        .filter(|t| (*t as f64) < t_kill)
        .collect();
    let second_run: Vec<i64> = stamps
        .iter()
        .copied()
        .filter(|t| (*t as f64) >= t_restart)
        .collect();
    assert_eq!(
        first_run.len() + second_run.len(),
        stamps.len(),
        "no datapoint while dead"
    );
    for (run, start, stop) in [
        (&first_run, t_start, t_kill),
        (&second_run, t_restart, t_stop),
    ] {
        assert!(!run.is_empty(), "{stamps:?}");
        let contiguous = run.windows(2).all(|w| w[1] - w[0] == 1);
        assert!(contiguous, "a gap inside an alive window: {run:?}");
        assert!(
            (run[0] as f64) <= start + 3.5,
            "first {} vs start {start}",
            run[0]
        );
        assert!(
            (*run.last().unwrap() as f64) >= stop - 2.5,
            "last {} vs stop {stop}",
            run.last().unwrap()
        );
    }
    // Datapoints collected during the outage (before the kill and after the restart) arrived,
    // stamped with their collection time, not their delivery time.
    let in_outage = stamps
        .iter()
        .filter(|t| (**t as f64) > fault_on && (**t as f64) < fault_off)
        .count();
    assert!(
        in_outage >= 5 + 2,
        "{in_outage} datapoints from the outage: {stamps:?}"
    );
}
