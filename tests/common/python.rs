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
