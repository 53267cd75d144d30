//! The shipped unit file: `systemd-analyze verify` is clean, and the choices design.md
//! (resolution 4) and packaging-and-fleet.md §3 require are in it. Needs `systemd-analyze`
//! (Debian's `systemd` package; scripts/world.sh installs it) and fails without it.

use std::process::Command;

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/ecs-hostd.service");
const AGENT: &str = env!("CARGO_BIN_EXE_ecs-hostd");

fn unit_text() -> String {
    std::fs::read_to_string(UNIT).expect("systemd/ecs-hostd.service")
}

/// `key=value` lines of the unit, comments dropped.
fn settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn values(text: &str, key: &str) -> Vec<String> {
    settings(text)
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn systemd_analyze_verify_is_clean() {
    // The unit points at /usr/bin/ecs-hostd; verify a copy that points at the binary cargo built,
    // so "not executable" cannot hide any other finding.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ecs-hostd.service");
    let text = unit_text().replace("/usr/bin/ecs-hostd", AGENT);
    std::fs::write(&copy, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze is installed (apt-get install systemd; scripts/world.sh does it)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stderr.trim().is_empty() && stdout.trim().is_empty(),
        "systemd-analyze verify: {}\n{stdout}{stderr}",
        out.status
    );

    // And the shipped file itself only lacks the binary at its installed path.
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(UNIT)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            line.contains("/usr/bin/ecs-hostd"),
            "unexpected finding: {line}"
        );
    }
}

#[test]
fn the_unit_keeps_the_service_contract() {
    let text = unit_text();
    let one = |k: &str| {
        let v = values(&text, k);
        assert_eq!(v.len(), 1, "{k} set once: {v:?}");
        v[0].clone()
    };
    assert_eq!(one("Type"), "notify");
    assert_eq!(one("NotifyAccess"), "main");
    assert_eq!(one("ExecStart"), "/usr/bin/ecs-hostd run");
    assert_eq!(one("Restart"), "always");
    assert_eq!(one("RestartPreventExitStatus"), "5");
    assert_eq!(one("TimeoutStartSec"), "infinity");
    assert_eq!(one("StartLimitIntervalSec"), "0");
    assert!(!one("WatchdogSec").is_empty());
    assert!(!one("RestartSec").is_empty());
    assert_eq!(one("Conflicts"), "ecs.service");
    let wants = values(&text, "Wants").join(" ");
    let after = values(&text, "After").join(" ");
    assert!(wants.split_whitespace().any(|u| u == "docker.service"));
    assert!(after.split_whitespace().any(|u| u == "docker.service"));
    // User-data writes ecs.config before us; nothing may order cloud-final after us (deadlock).
    assert!(after.split_whitespace().any(|u| u == "cloud-final.service"));
    for banned in [
        "Requires",
        "BindsTo",
        "PartOf",
        "Before",
        "EnvironmentFile",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "ProtectControlGroups",
        "PrivateDevices",
        "DynamicUser",
        "CapabilityBoundingSet",
        "ExecStartPre",
        "DevicePolicy",
        "DeviceAllow",
    ] {
        assert!(
            values(&text, banned).is_empty(),
            "{banned}= must not be in the unit (design.md resolution 4, packaging §3.2)"
        );
    }
    assert_eq!(values(&text, "WantedBy"), vec!["multi-user.target"]);
}
