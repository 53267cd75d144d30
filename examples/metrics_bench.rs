//! Benchmark of the metrics subsystem (prints figures; asserts nothing):
//!
//! - per collection cycle: wall and CPU time, heap allocations (counting global allocator) of
//!   reading /proc/meminfo + mountinfo + statvfs, building and validating the datums, and
//!   spooling them durably;
//! - PutMetricData requests and bytes per instance-hour for the default catalogue, with the real
//!   RPCv2 CBOR body size captured from aws-sdk-cloudwatch (the request is stopped before it
//!   leaves the process);
//! - the CloudWatch list-price cost of the default catalogue per instance and month;
//! - RSS with a full spool (20,000 datums), and the cost of draining it.
//!
//! `cargo run --release --example metrics_bench` (debug builds work too, slower).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecs_hostd::config::Config;
use ecs_hostd::metrics::Settings;
use ecs_hostd::metrics::cloudwatch::{CloudWatchPublisher, MetricsPublisher};
use ecs_hostd::metrics::collect::Reader;
use ecs_hostd::metrics::datum::{Datum, REQUEST_OVERHEAD};
use ecs_hostd::metrics::dimensions::Identity;
use ecs_hostd::metrics::pipeline::{Counters, Sender, TokioClock};
use ecs_hostd::metrics::series;
use ecs_hostd::metrics::spool::Spool;
use ecs_hostd::store::Store;
use tokio_util::sync::CancellationToken;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static ALLOC_BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        ALLOC_BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Process CPU time (user + system) from /proc/self/stat, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn identity() -> Identity {
    Identity {
        instance_id: "i-0123456789abcdef0".into(),
        image_id: "ami-0abcdef1234567890".into(),
        instance_type: "m5.large".into(),
        asg: Some("ecs-cluster-prod-asg".into()),
        hostname: "ip-10-0-1-23.ec2.internal".into(),
        cluster: Some("prod".into()),
    }
}

/// Captures the uncompressed body of a request, then stops it before it leaves the process.
#[derive(Debug)]
struct Capture(Arc<AtomicUsize>);

impl aws_sdk_cloudwatch::config::Intercept for Capture {
    fn name(&self) -> &'static str {
        "Capture"
    }
    fn read_before_transmit(
        &self,
        context: &aws_sdk_cloudwatch::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _: &aws_sdk_cloudwatch::config::RuntimeComponents,
        _: &mut aws_sdk_cloudwatch::config::ConfigBag,
    ) -> Result<(), aws_sdk_cloudwatch::error::BoxError> {
        let n = context.request().body().bytes().map_or(0, <[u8]>::len);
        self.0.store(n, Ordering::Relaxed);
        Err("captured; not sent".into())
    }
}

async fn real_body_size(namespace: &str, datums: &[Datum], compress: bool) -> usize {
    let creds = aws_credential_types::Credentials::new("AKID", "secret", None, None, "bench");
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url("http://127.0.0.1:9")
        .load()
        .await;
    let size = Arc::new(AtomicUsize::new(0));
    let conf = aws_sdk_cloudwatch::config::Builder::from(&sdk)
        .disable_request_compression(!compress)
        .interceptor(Capture(size.clone()))
        .build();
    let p = CloudWatchPublisher::from_client(aws_sdk_cloudwatch::Client::from_conf(conf));
    let _ = p.put(namespace, datums).await;
    size.load(Ordering::Relaxed)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--full-spool") {
        full_spool().await;
        return;
    }
    let config = Config::default();
    let settings = Settings::from_config(&config.metrics, Some("prod"));
    let id = identity();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bench.redb")).unwrap();
    let spool = Arc::new(Mutex::new(
        Spool::open(store.clone(), 1_000_000, 86_400_000).unwrap(),
    ));
    let mut reader = Reader::new(settings.read.clone());

    println!("# ecs-hostd metrics benchmark (default cwagent catalogue, this host's /proc)");
    let warm = reader.read().await;
    println!(
        "filesystems selected on this host: {:?}",
        warm.filesystems
            .iter()
            .map(|(f, _)| f.mount_point.as_str())
            .collect::<Vec<_>>()
    );

    // ---- per collection cycle ----
    const N: usize = 2_000;
    let mut ts = 1_800_000_000_000i64;
    let phases = [
        "read /proc + statvfs",
        "build + validate datums",
        "spool (durable commit)",
    ];
    let mut wall = [Duration::ZERO; 3];
    let mut cpu = [0.0f64; 3];
    let mut allocs = [0u64; 3];
    let mut bytes = [0u64; 3];
    let mut datums_per_pass = 0;
    let mut series_set = BTreeSet::new();
    for _ in 0..N {
        ts += 60_000;
        let (a0, b0, c0, w0) = (
            ALLOCS.load(Ordering::Relaxed),
            ALLOC_BYTES.load(Ordering::Relaxed),
            cpu_seconds(),
            Instant::now(),
        );
        let pass = reader.read().await;
        let (a1, b1, c1, w1) = (
            ALLOCS.load(Ordering::Relaxed),
            ALLOC_BYTES.load(Ordering::Relaxed),
            cpu_seconds(),
            Instant::now(),
        );
        let out = series::build(&pass, &[], ts, &id, &settings.catalogue);
        let valid: Vec<(String, Vec<Datum>)> = out
            .into_iter()
            .map(|(ns, v)| {
                (
                    ns,
                    v.into_iter()
                        .filter(|d| d.validate(ts, 86_400_000).is_ok())
                        .collect(),
                )
            })
            .collect();
        let (a2, b2, c2, w2) = (
            ALLOCS.load(Ordering::Relaxed),
            ALLOC_BYTES.load(Ordering::Relaxed),
            cpu_seconds(),
            Instant::now(),
        );
        datums_per_pass = valid.iter().map(|(_, v)| v.len()).sum();
        if series_set.is_empty() {
            for (ns, v) in &valid {
                for d in v {
                    series_set.insert((ns.clone(), d.name.clone(), d.dimensions.clone()));
                }
            }
        }
        {
            let mut s = spool.lock().unwrap();
            for (ns, v) in valid {
                s.push(&ns, ts, v).unwrap();
            }
        }
        let (a3, b3, c3, w3) = (
            ALLOCS.load(Ordering::Relaxed),
            ALLOC_BYTES.load(Ordering::Relaxed),
            cpu_seconds(),
            Instant::now(),
        );
        for (i, (a, b, c, w)) in [
            (a1 - a0, b1 - b0, c1 - c0, w1 - w0),
            (a2 - a1, b2 - b1, c2 - c1, w2 - w1),
            (a3 - a2, b3 - b2, c3 - c2, w3 - w2),
        ]
        .into_iter()
        .enumerate()
        {
            allocs[i] += a;
            bytes[i] += b;
            cpu[i] += c;
            wall[i] += w;
        }
    }
    println!("\n## Per collection cycle (mean of {N})");
    println!(
        "{:<26} {:>12} {:>12} {:>10} {:>12}",
        "phase", "wall µs", "CPU µs", "allocs", "alloc bytes"
    );
    for i in 0..3 {
        println!(
            "{:<26} {:>12.1} {:>12.1} {:>10.1} {:>12.0}",
            phases[i],
            wall[i].as_secs_f64() * 1e6 / N as f64,
            cpu[i] * 1e6 / N as f64,
            allocs[i] as f64 / N as f64,
            bytes[i] as f64 / N as f64
        );
    }
    let cycle_cpu: f64 = cpu.iter().sum::<f64>() / N as f64;
    println!(
        "total CPU per cycle: {:.1} µs → {:.5} % of one vCPU at a 60 s interval",
        cycle_cpu * 1e6,
        cycle_cpu / 60.0 * 100.0
    );

    // ---- requests and bytes per instance-hour ----
    let pass_datums: Vec<Datum> = {
        let pass = reader.read().await;
        series::build(&pass, &[], ts, &id, &settings.catalogue)
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect()
    };
    let estimate = REQUEST_OVERHEAD + pass_datums.iter().map(Datum::estimated_size).sum::<usize>();
    let real = real_body_size("CWAgent", &pass_datums, false).await;
    let per_hour_requests = 3600 / config.metrics.flush_interval.as_secs();
    println!("\n## PutMetricData for the default catalogue (60 s collection, 60 s flush)");
    println!(
        "datums per pass: {datums_per_pass}; series per instance: {}",
        series_set.len()
    );
    for (ns, name, dims) in &series_set {
        println!(
            "  {ns} {name} {{{}}}",
            dims.iter()
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>()
                .join(",")
        );
    }
    println!(
        "request body (CBOR, uncompressed; below the SDK's 10,240-byte gzip threshold): {real} bytes (estimate {estimate})"
    );
    println!(
        "per instance-hour: {per_hour_requests} requests, {} body bytes ({:.1} KiB)",
        per_hour_requests as usize * real,
        (per_hour_requests as usize * real) as f64 / 1024.0
    );
    let mut backlog = Vec::new();
    for i in 0..(1000 / pass_datums.len().max(1)) {
        for d in &pass_datums {
            let mut d = d.clone();
            d.timestamp_ms -= i as i64 * 60_000;
            backlog.push(d);
        }
    }
    let full_plain = real_body_size("CWAgent", &backlog, false).await;
    let full_gzip = real_body_size("CWAgent", &backlog, true).await;
    println!(
        "a full backlog request ({} datums): {} bytes uncompressed, {} bytes gzip",
        backlog.len(),
        full_plain,
        full_gzip
    );

    // ---- cost ----
    let series = series_set.len() as f64;
    let metric_month = series * 0.30;
    let requests_month = per_hour_requests as f64 * 24.0 * 30.0;
    let request_month = requests_month / 1000.0 * 0.01;
    println!("\n## CloudWatch list price (us-east-1, first tier), per instance and 30-day month");
    println!(
        "{series} series × $0.30 = ${metric_month:.2}; {requests_month} requests × $0.01/1000 = ${request_month:.3}; total ${:.2}",
        metric_month + request_month
    );
    println!(
        "(health metrics on: +4 series = +$1.20; each extra filesystem: +2 series = +$0.60; flush 300 s: requests ${:.3})",
        request_month / 5.0
    );

    // ---- full spool: in a fresh process, so RSS is not polluted by the runs above ----
    let exe = std::env::current_exe().unwrap();
    let out = std::process::Command::new(exe)
        .arg("--full-spool")
        .output()
        .expect("re-run for the full-spool measurement");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
}

/// Accepts everything and keeps nothing (the recording fake would dominate RSS).
struct Sink(AtomicU64);

#[async_trait::async_trait]
impl MetricsPublisher for Sink {
    async fn put(
        &self,
        _: &str,
        _: &[Datum],
    ) -> Result<(), ecs_hostd::metrics::cloudwatch::PublishError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

async fn full_spool() {
    let settings = Settings::from_config(&Config::default().metrics, Some("prod"));
    let id = identity();
    let baseline = status_kib("VmRSS:");
    let pass_datums: Vec<Datum> = {
        let mut reader = Reader::new(settings.read.clone());
        let pass = reader.read().await;
        series::build(&pass, &[], 0, &id, &settings.catalogue)
            .into_iter()
            .flat_map(|(_, v)| v)
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("full.redb");
    let start_ts = 1_800_000_000_000i64;
    let mut t = start_ts;
    {
        let store = Store::open(&path).unwrap();
        let mut s = Spool::open(store, 20_000, 400 * 86_400_000).unwrap();
        while s.depth() < 20_000 {
            t += 60_000;
            let v: Vec<Datum> = pass_datums
                .iter()
                .cloned()
                .map(|mut d| {
                    d.timestamp_ms = t;
                    d
                })
                .collect();
            s.push("CWAgent", t, v).unwrap();
        }
    }
    let after_fill = status_kib("VmRSS:");
    let file_kib = std::fs::metadata(&path).map_or(0, |m| m.len() / 1024);
    // A restart with a full spool: open the store and rebuild the index.
    let store = Store::open(&path).unwrap();
    let (a0, t_open) = (ALLOCS.load(Ordering::Relaxed), Instant::now());
    let full = Spool::open(store, 20_000, 400 * 86_400_000).unwrap();
    let open_ms = t_open.elapsed().as_secs_f64() * 1e3;
    let open_allocs = ALLOCS.load(Ordering::Relaxed) - a0;
    let after_open = status_kib("VmRSS:");
    println!("\n## Full spool (20,000 datums of the default catalogue), fresh process");
    println!(
        "store file {file_kib} KiB; RSS: {baseline} KiB at start, {after_fill} KiB after filling, {after_open} KiB after reopening (index rebuild {open_ms:.0} ms, {open_allocs} allocations)"
    );
    let depth = full.depth();
    let spool = Arc::new(Mutex::new(full));
    let sink = Arc::new(Sink(AtomicU64::new(0)));
    let counters = Arc::new(Counters::default());
    let clock = Arc::new(TokioClock::starting_at(t + 60_000));
    tokio::time::pause();
    let mut sender = Sender::new(sink.clone(), spool.clone(), counters, clock, None);
    let (c0, a0, w0) = (
        cpu_seconds(),
        ALLOCS.load(Ordering::Relaxed),
        Instant::now(),
    );
    let paused = tokio::time::Instant::now();
    sender.flush(&CancellationToken::new(), true).await.unwrap();
    println!(
        "drain of {depth} datums: {} requests, {:.0} ms wall ({:.0} s at the 1 req/s pace), {:.0} ms CPU, {} allocations; RSS after the drain {} KiB, peak (VmHWM) {} KiB",
        sink.0.load(Ordering::Relaxed),
        w0.elapsed().as_secs_f64() * 1e3,
        paused.elapsed().as_secs_f64(),
        (cpu_seconds() - c0) * 1e3,
        ALLOCS.load(Ordering::Relaxed) - a0,
        status_kib("VmRSS:"),
        status_kib("VmHWM:")
    );
}
