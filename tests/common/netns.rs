//! Running one test of this test binary inside a network namespace of its own, so that what it
//! does to iptables, sysctls, links and routes never touches the shared host's: the outer test
//! re-executes the binary under `unshare --net` for that one test, which then sees
//! [`inside`] true and does the real work. Needs root and util-linux, like the rest of the suite.
#![allow(dead_code)]

use std::process::Command;

const CHILD: &str = "ECS_HOSTD_NETNS_CHILD";

/// Whether this process is the namespaced re-run.
pub fn inside() -> bool {
    std::env::var_os(CHILD).is_some()
}

/// Re-runs test `name` of this binary under `unshare --net` and fails unless it ran and passed.
pub fn rerun_in_own_netns(name: &str) {
    rerun_in_own_netns_with(name, &[]);
}

/// [`rerun_in_own_netns`] with environment variables set for the re-run.
pub fn rerun_in_own_netns_with(name: &str, env: &[(&str, String)]) {
    let out = Command::new("unshare")
        .args(["--net", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .expect("unshare (util-linux) must be installed; the suite runs as root");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "the namespaced run failed:\n{text}");
    assert!(
        text.contains("1 passed"),
        "the namespaced run did not run the test:\n{text}"
    );
}

/// Runs `cmd` with `sh -c`, failing the test if it fails; its stdout.
pub fn sh(cmd: &str) -> String {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
