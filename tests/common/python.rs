//! Where ec2sim's Python is: `ECS_HOSTD_PYTHON` (set by scripts/world.sh and CI), else the newest
//! complete venv that scripts/world.sh made in the cache. Shared by every test harness that starts
//! ec2sim (`tests/common`, `tests/acs_support`, `tests/systemd/common.rs`, `tests/aws_metrics.rs`).

use std::path::PathBuf;

/// The Python interpreter of ec2sim's venv.
pub fn python() -> PathBuf {
    if let Ok(p) = std::env::var("ECS_HOSTD_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("ECS_HOSTD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/ecs-hostd")
        });
    let found = std::fs::read_dir(&cache).ok().and_then(|dir| {
        dir.filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.join(".complete").exists() && p.join("bin/python").exists())
            .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    });
    match found {
        Some(venv) => venv.join("bin/python"),
        None => panic!(
            "ec2sim's Python venv is missing (looked for ECS_HOSTD_PYTHON and {}/venv-*): run `bash scripts/test.sh`, which sets up the test world",
            cache.display()
        ),
    }
}

/// Runs boto3 `code` against the AWS endpoint `url` (us-east-1, the test user's keys): `A` holds
/// `args`, `client(name)` makes a client, `ts(x)` turns Unix seconds into a datetime; the code
/// sets `OUT`, which comes back as JSON.
#[allow(dead_code)] // not every harness that includes this file calls boto3
pub fn boto(url: &str, code: &str, args: &serde_json::Value) -> serde_json::Value {
    let prelude = format!(
        r#"
import boto3, json, sys, datetime
A = json.loads(sys.argv[1])
def client(name):
    return boto3.client(name, endpoint_url="{url}", region_name="us-east-1",
                        aws_access_key_id="AKIDTEST", aws_secret_access_key="secret")
def ts(x):
    return datetime.datetime.fromtimestamp(x, tz=datetime.timezone.utc)
OUT = None
"#
    );
    let program = format!("{prelude}\n{code}\nprint(json.dumps(OUT, default=str))");
    let out = std::process::Command::new(python())
        .args(["-c", &program, &args.to_string()])
        .output()
        .expect("run boto3");
    assert!(
        out.status.success(),
        "boto3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("boto3 output is JSON")
}
