//! The packages and the fleet recipes, exercised for real:
//!
//! - `scripts/package.sh` builds the .deb and both .rpm files (from the debug binary `cargo test`
//!   built: `--profile dev`, same files and scripts as a release package);
//! - the .deb installs, upgrades, is removed and purged in a fresh Debian container (no systemd as
//!   PID 1, like an image build or a chroot), following the lifecycle policy of packaging spec
//!   §7.1 (inert install, admin's enable/disable kept, state kept on remove, removed on purge);
//! - booted with systemd as PID 1 (test-world.md §6), the same image shows the policy live: a
//!   fresh install starts nothing, an upgrade restarts a running agent without blocking dpkg (the
//!   agent is still activating: a blocking restart would hang), a stopped or disabled agent stays
//!   so, a removal stops and disables it;
//! - the .rpm's file list and scriptlets are checked with `rpm -qlp` / `rpm -qp --scripts`, and the
//!   scriptlets run without systemd;
//! - user-data, the AMI provisioning script, the SSM upgrade command and the Distributor install
//!   script run in the container against the package.
//!
//! World: Docker and the image `ecs-hostd-test/debian-minbase:<hash>` (scripts/world.sh
//! `world_debian_image`), `rpm`. Missing pieces fail the tests with the command that provides them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

const WORLD_HINT: &str = "run `bash scripts/test.sh` (or `source scripts/world.sh; world_setup`), which builds the Debian test image and installs rpm";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}; {WORLD_HINT}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The packages built once per test process: revision 1 (deb + rpms) and revision 2 (deb).
struct Packages {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    deb1: String,
    deb2: String,
    rpm: String,
    rpm_al2023: String,
}

fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Packages> = OnceLock::new();
    PACKAGES.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        // The binary `cargo test` built for this test run.
        let binary = PathBuf::from(env!("CARGO_BIN_EXE_ecs-hostd"));
        assert!(binary.ends_with("debug/ecs-hostd"), "{binary:?}");
        for (rev, only) in [("1", None), ("2", Some("deb"))] {
            let mut cmd = Command::new("bash");
            cmd.arg(root().join("scripts/package.sh")).args([
                "--profile",
                "dev",
                "--no-build",
                "--fast",
                "--revision",
                rev,
                "--out",
            ]);
            cmd.arg(dir.path());
            if let Some(o) = only {
                cmd.args(["--only", o]);
            }
            let out = run(&mut cmd);
            assert!(out.status.success(), "package.sh failed:\n{}", text(&out));
        }
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let find = |pred: &dyn Fn(&str) -> bool| {
            names
                .iter()
                .find(|n| pred(n))
                .unwrap_or_else(|| panic!("package missing in {names:?}"))
                .clone()
        };
        let version = env!("CARGO_PKG_VERSION");
        Packages {
            deb1: find(&|n| {
                n.starts_with(&format!("ecs-hostd_{version}-1_")) && n.ends_with(".deb")
            }),
            deb2: find(&|n| {
                n.starts_with(&format!("ecs-hostd_{version}-2_")) && n.ends_with(".deb")
            }),
            rpm: find(&|n| {
                n.starts_with(&format!("ecs-hostd-{version}-1."))
                    && n.ends_with(".rpm")
                    && !n.contains("amzn2023")
            }),
            rpm_al2023: find(&|n| n.contains("-1.amzn2023.") && n.ends_with(".rpm")),
            dir: dir.path().to_owned(),
            _dir: dir,
        }
    })
}

/// The Debian test image: `ECS_HOSTD_DEBIAN_IMAGE`, else the newest one the world built.
fn debian_image() -> String {
    if let Ok(i) = std::env::var("ECS_HOSTD_DEBIAN_IMAGE") {
        return i;
    }
    let out = run(Command::new("docker").args([
        "images",
        "ecs-hostd-test/debian-minbase",
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]));
    assert!(
        out.status.success(),
        "docker images: {}; {WORLD_HINT}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no ecs-hostd-test/debian-minbase image; {WORLD_HINT}"))
}

/// A throwaway Debian container with the packages mounted at /pkg; removed on drop.
struct Debian {
    name: String,
}

impl Debian {
    fn start() -> Debian {
        let p = packages();
        let name = format!(
            "ecs-hostd-pkg-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let out = run(Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "--network",
                "none",
                "--label",
                "ecs-hostd.test=package",
                "--name",
                &name,
                "-v",
            ])
            .arg(format!("{}:/pkg:ro", p.dir.display()))
            .arg("-v")
            .arg(format!("{}:/src:ro", root().join("packaging").display()))
            .args([&debian_image(), "sleep", "3600"]));
        assert!(
            out.status.success(),
            "docker run: {}; {WORLD_HINT}",
            text(&out)
        );
        Debian { name }
    }

    /// Runs a shell command as root; returns (exit code, output).
    fn sh(&self, script: &str) -> (i32, String) {
        let out = run(Command::new("docker").args(["exec", &self.name, "bash", "-c", script]));
        (out.status.code().unwrap_or(-1), text(&out))
    }

    /// Runs a command that must succeed; returns its output.
    fn ok(&self, script: &str) -> String {
        let (code, out) = self.sh(script);
        assert_eq!(code, 0, "`{script}` failed:\n{out}");
        out
    }

    fn exists(&self, path: &str) -> bool {
        self.sh(&format!("test -e '{path}'")).0 == 0
    }

    /// Replaces systemctl with a stub that logs its arguments to /tmp/systemctl.log (for scripts
    /// that start the unit, which needs systemd as PID 1).
    fn stub_systemctl(&self) {
        self.ok("printf '#!/bin/sh\\necho \"$*\" >> /tmp/systemctl.log\\n' > /usr/local/sbin/systemctl && chmod 755 /usr/local/sbin/systemctl");
    }
}

impl Debian {
    /// The same image booted with systemd as PID 1 (test-world.md §6), without network.
    fn boot() -> Debian {
        let p = packages();
        let name = format!(
            "ecs-hostd-pkg-sd-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..10]
        );
        let out = run(Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "--network",
                "none",
                "--label",
                "ecs-hostd.test=package",
                "--name",
                &name,
            ])
            .args([
                "--cap-add",
                "ALL",
                "--cap-drop",
                "SYS_RESOURCE",
                "--security-opt",
                "seccomp=unconfined",
                "--security-opt",
                "apparmor=unconfined",
                "--device-cgroup-rule",
                "a *:* rwm",
                "-v",
                "/sys/fs/cgroup:/sys/fs/cgroup",
                "--tmpfs",
                "/run",
                "--tmpfs",
                "/run/lock",
                "-e",
                "container=docker",
                "-v",
            ])
            .arg(format!("{}:/pkg:ro", p.dir.display()))
            .args([&debian_image(), "/lib/systemd/systemd"]));
        assert!(
            out.status.success(),
            "docker run: {}; {WORLD_HINT}",
            text(&out)
        );
        let d = Debian { name };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let state = d.sh("systemctl is-system-running").1;
            if state.contains("running") || state.contains("degraded") {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "systemd did not boot: {state}"
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }

    /// The unit's main PID (0 when not running).
    fn main_pid(&self) -> u32 {
        self.ok("systemctl show -p MainPID --value ecs-hostd.service")
            .trim()
            .parse()
            .unwrap()
    }

    /// Waits until the main PID is not 0 and not `old`.
    fn wait_pid_other_than(&self, old: u32) -> u32 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let pid = self.main_pid();
            if pid != 0 && pid != old {
                return pid;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "ecs-hostd did not (re)start:\n{}",
                self.sh("systemctl status ecs-hostd --no-pager").1
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
}

impl Drop for Debian {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.name])
            .output();
    }
}

const UNIT: &str = "/usr/lib/systemd/system/ecs-hostd.service";
const WANTS: &str = "/etc/systemd/system/multi-user.target.wants/ecs-hostd.service";

#[test]
fn the_deb_installs_inert_upgrades_keeping_local_state_and_removes_and_purges_cleanly() {
    let p = packages();
    let d = Debian::start();
    // An admin's ecs.config from user-data: never ours to touch.
    d.ok("install -d /etc/ecs && echo ECS_CLUSTER=prod > /etc/ecs/ecs.config");

    // Install: files in place, unit present but neither enabled nor started.
    let out = d.ok(&format!("dpkg -i /pkg/{}", p.deb1));
    assert!(!out.to_lowercase().contains("error"), "{out}");
    for f in [
        "/usr/bin/ecs-hostd",
        UNIT,
        "/usr/share/doc/ecs-hostd/ecs.config.example",
        "/usr/share/doc/ecs-hostd/iam-policy.json",
        "/usr/share/doc/ecs-hostd/README.md",
    ] {
        assert!(d.exists(f), "{f} missing");
    }
    assert!(
        d.ok("/usr/bin/ecs-hostd --version")
            .contains(env!("CARGO_PKG_VERSION"))
    );
    assert!(d.exists("/etc/ecs-hostd"), "configuration directory");
    assert!(!d.exists("/etc/ecs-hostd/config.toml"), "no config shipped");
    assert!(!d.exists(WANTS), "a fresh install must not enable the unit");
    assert_eq!(
        d.sh("systemctl is-enabled ecs-hostd.service").1.trim(),
        "disabled"
    );
    assert_eq!(
        d.ok("dpkg-query -W -f='${Conffiles}' ecs-hostd").trim(),
        "",
        "nothing under /etc is a conffile"
    );
    assert!(d.sh("pgrep -x ecs-hostd").0 != 0, "never started");
    d.ok(&format!("systemd-analyze verify {UNIT}"));

    // The admin configures, the agent has registered, the AMI recipe enabled the unit.
    d.ok("printf '[lifecycle]\\nhook = \"drain\"\\n' > /etc/ecs-hostd/config.toml");
    d.ok("install -d -m 0700 /var/lib/ecs-hostd && echo registered > /var/lib/ecs-hostd/ecs-hostd.redb");
    d.ok("systemctl enable ecs-hostd.service");
    assert!(d.exists(WANTS));

    // Upgrade: new version, configuration, state and enablement kept.
    d.ok(&format!("dpkg -i /pkg/{}", p.deb2));
    assert_eq!(
        d.ok("dpkg-query -W -f='${Version}' ecs-hostd").trim(),
        format!("{}-2", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        d.ok("cat /etc/ecs-hostd/config.toml"),
        "[lifecycle]\nhook = \"drain\"\n"
    );
    assert_eq!(
        d.ok("cat /var/lib/ecs-hostd/ecs-hostd.redb").trim(),
        "registered"
    );
    assert!(
        d.exists(WANTS),
        "an enabled unit stays enabled across upgrades"
    );

    // An admin's disable is kept too (reinstalling runs the upgrade path).
    d.ok("systemctl disable ecs-hostd.service");
    d.ok(&format!("dpkg -i /pkg/{}", p.deb2));
    assert!(
        !d.exists(WANTS),
        "a disabled unit stays disabled across upgrades"
    );
    d.ok("systemctl enable ecs-hostd.service");

    // Remove: binary and unit gone, unit disabled, state and configuration kept.
    d.ok("dpkg -r ecs-hostd");
    assert!(!d.exists("/usr/bin/ecs-hostd") && !d.exists(UNIT));
    assert!(!d.exists(WANTS), "remove disables the unit");
    assert_eq!(
        d.ok("cat /var/lib/ecs-hostd/ecs-hostd.redb").trim(),
        "registered"
    );
    assert!(d.exists("/etc/ecs-hostd/config.toml"));

    // Purge: state and configuration gone; the shared ecs.config stays.
    d.ok("dpkg -P ecs-hostd");
    assert!(!d.exists("/var/lib/ecs-hostd"), "purge removes the state");
    assert!(
        !d.exists("/etc/ecs-hostd"),
        "purge removes the configuration"
    );
    assert_eq!(d.ok("cat /etc/ecs/ecs.config").trim(), "ECS_CLUSTER=prod");
    assert_eq!(d.ok("dpkg --audit").trim(), "");
    assert!(
        d.sh("dpkg-query -W ecs-hostd").0 != 0
            || d.ok("dpkg-query -W -f='${Status}' ecs-hostd")
                .contains("not-installed")
    );
}

#[test]
fn the_deb_maintainer_scripts_follow_the_lifecycle_policy() {
    let p = packages();
    let dir = tempfile::tempdir().unwrap();
    let out = run(Command::new("dpkg-deb")
        .arg("-e")
        .arg(p.dir.join(&p.deb1))
        .arg(dir.path().join("c")));
    assert!(out.status.success(), "{}", text(&out));
    let read = |n: &str| std::fs::read_to_string(dir.path().join("c").join(n)).unwrap();
    let (postinst, prerm, postrm) = (read("postinst"), read("prerm"), read("postrm"));
    let control = read("control");
    assert!(
        control.contains("Depends:")
            && control.contains("systemd")
            && control.contains("docker.io | docker-ce | moby-engine"),
        "{control}"
    );
    for (name, s) in [
        ("postinst", &postinst),
        ("prerm", &prerm),
        ("postrm", &postrm),
    ] {
        assert!(
            !s.contains("#DEBHELPER#"),
            "{name}: the token must be replaced"
        );
        for forbidden in [
            "systemctl start",
            "systemctl enable",
            "deb-systemd-invoke start",
            "enable --now",
            "deb-systemd-helper enable ecs-hostd.service >/dev/null || true\n\tfi\n\tdeb-systemd-helper enable",
        ] {
            assert!(
                !s.contains(forbidden),
                "{name} must never start or enable the unit ({forbidden}):\n{s}"
            );
        }
        // Every call that needs a running systemd is guarded.
        for line in s.lines().filter(|l| {
            !l.trim_start().starts_with('#')
                && (l.contains("deb-systemd-invoke")
                    || l.contains("daemon-reload")
                    || l.contains("try-restart"))
        }) {
            let before = &s[..s.find(line).unwrap()];
            assert!(
                before.contains("[ -d /run/systemd/system ]"),
                "{name}: unguarded `{line}`"
            );
        }
    }
    // Upgrade: try-restart (only a running agent restarts); enable only if it was enabled.
    assert!(
        postinst.contains("systemctl --no-block try-restart ecs-hostd.service"),
        "{postinst}"
    );
    assert!(
        postinst.contains("was-enabled ecs-hostd.service"),
        "{postinst}"
    );
    assert!(
        prerm.contains("stop ecs-hostd.service") && prerm.contains("disable ecs-hostd.service"),
        "{prerm}"
    );
    assert!(
        postrm.contains("rm -rf /var/lib/ecs-hostd /etc/ecs-hostd"),
        "{postrm}"
    );
    assert!(
        postrm.find("rm -rf").unwrap() > postrm.find("purge").unwrap(),
        "only on purge"
    );
}

fn rpm_query(args: &[&str], file: &Path) -> String {
    let out = run(Command::new("rpm").args(args).arg(file));
    assert!(
        out.status.success(),
        "rpm {args:?}: {}; {WORLD_HINT}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Splits `rpm -qp --scripts` output into (scriptlet name, body).
fn scriptlets(out: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = Vec::new();
    for line in out.lines() {
        if let Some(rest) = line
            .strip_suffix(':')
            .filter(|l| l.ends_with(" scriptlet") || l.contains(" scriptlet (using "))
        {
            v.push((
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                String::new(),
            ));
        } else if let Some((_, body)) = v.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    v
}

#[test]
fn the_rpms_carry_the_files_and_scriptlets_that_run_without_systemd() {
    let p = packages();
    for file in [&p.rpm, &p.rpm_al2023] {
        let path = p.dir.join(file);
        let files = rpm_query(&["-qlp"], &path);
        for f in [
            "/usr/bin/ecs-hostd",
            UNIT,
            "/usr/share/doc/ecs-hostd/ecs.config.example",
            "/usr/share/doc/ecs-hostd/iam-policy.json",
        ] {
            assert!(files.lines().any(|l| l == f), "{file}: {f} not in\n{files}");
        }
        assert!(
            !files.lines().any(|l| l.starts_with("/etc/")),
            "{file}: nothing under /etc:\n{files}"
        );
        let requires = rpm_query(&["-qp", "--requires"], &path);
        assert!(
            requires.lines().any(|l| l.trim() == "systemd"),
            "{requires}"
        );
        assert_eq!(
            requires.lines().any(|l| l.trim() == "docker"),
            file.contains("amzn2023"),
            "only the AL2023 rpm requires docker:\n{requires}"
        );
        let info = rpm_query(&["-qp", "--qf", "%{NAME} %{VERSION} %{RELEASE}"], &path);
        assert!(
            info.starts_with(&format!("ecs-hostd {} 1", env!("CARGO_PKG_VERSION"))),
            "{info}"
        );
    }

    let all = rpm_query(&["-qp", "--scripts"], &p.dir.join(&p.rpm));
    let s = scriptlets(&all);
    let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        ["postinstall", "preuninstall", "postuninstall"],
        "{all}"
    );
    let body = |n: &str| s.iter().find(|(k, _)| k == n).unwrap().1.clone();
    assert!(
        !body("postinstall").contains("enable") && !body("postinstall").contains("start"),
        "inert install:\n{all}"
    );
    assert!(
        body("preuninstall").contains("disable --now ecs-hostd.service"),
        "{all}"
    );
    assert!(
        body("postuninstall").contains("--no-block try-restart ecs-hostd.service"),
        "{all}"
    );
    assert!(
        body("postuninstall").contains("-ge 1"),
        "try-restart only on upgrade:\n{all}"
    );

    // Each scriptlet, with each argument rpm passes, succeeds without systemd as PID 1 and
    // touches no unit state there.
    let d = Debian::start();
    for (name, script) in &s {
        d.ok(&format!(
            "cat > /tmp/{name} <<'SCRIPTLET'\n{script}SCRIPTLET"
        ));
        for arg in ["0", "1", "2"] {
            let (code, out) = d.sh(&format!("sh -e /tmp/{name} {arg}"));
            assert_eq!(code, 0, "{name} {arg} failed without systemd:\n{out}");
        }
    }
    assert!(
        d.exists("/etc/ecs-hostd"),
        "postinstall created the configuration directory"
    );
}

#[test]
fn user_data_writes_the_configuration_then_starts_the_unit_without_blocking() {
    let p = packages();
    let d = Debian::start();
    d.stub_systemctl();
    // The package is installed by user-data itself (no custom AMI), from a local file.
    d.ok(&format!(
        "sed -e 's|^CLUSTER=.*|CLUSTER=\"fleet-test\"|' -e 's|^LIFECYCLE_HOOK=.*|LIFECYCLE_HOOK=\"ecs-hostd-drain\"|' -e 's|^PACKAGE=.*|PACKAGE=\"/pkg/{}\"|' /src/user-data.sh > /tmp/user-data.sh",
        p.deb1
    ));
    let sha = d.ok(&format!("sha256sum /pkg/{} | cut -d' ' -f1", p.deb1));
    d.ok(&format!(
        "sed -i 's|^PACKAGE_SHA256=.*|PACKAGE_SHA256=\"{}\"|' /tmp/user-data.sh",
        sha.trim()
    ));
    d.ok("bash /tmp/user-data.sh");
    assert!(d.exists("/usr/bin/ecs-hostd"), "installed by user-data");
    assert_eq!(
        d.ok("cat /tmp/systemctl.log"),
        "enable --now --no-block ecs-hostd.service\n",
        "exactly one, non-blocking start"
    );
    let config = d.ok("cat /etc/ecs/ecs.config");
    assert_eq!(
        config,
        "ECS_CLUSTER=fleet-test\nECS_WARM_POOLS_CHECK=false\nECS_ENABLE_SPOT_INSTANCE_DRAINING=true\nECS_HOSTD_LIFECYCLE_HOOK=ecs-hostd-drain\n"
    );

    // The agent accepts what user-data wrote, strictly (as `ecs-hostd check` would).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ecs.config");
    std::fs::write(&path, &config).unwrap();
    let empty = dir.path().join("config.toml");
    std::fs::write(&empty, "").unwrap();
    let loaded = ecs_hostd::config::Config::load(&ecs_hostd::config::LoadOptions {
        ecs_config: Some(path),
        toml_config: Some(empty),
        strict: true,
        ..Default::default()
    })
    .expect("user-data's ecs.config is valid");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.cluster, "fleet-test");
    assert!(c.lifecycle.spot_instance_draining && !c.lifecycle.warm_pools_check);
    assert_eq!(
        c.lifecycle.lifecycle_hook.as_deref(),
        Some("ecs-hostd-drain")
    );

    // A wrong checksum stops the script before anything is installed or started.
    let d = Debian::start();
    d.stub_systemctl();
    d.ok(&format!("sed -e 's|^PACKAGE=.*|PACKAGE=\"/pkg/{}\"|' -e 's|^PACKAGE_SHA256=.*|PACKAGE_SHA256=\"{}\"|' /src/user-data.sh > /tmp/user-data.sh", p.deb1, "0".repeat(64)));
    assert_ne!(d.sh("bash /tmp/user-data.sh").0, 0);
    assert!(!d.exists("/usr/bin/ecs-hostd") && !d.exists("/tmp/systemctl.log"));

    // The cloud-config variant follows the same rules.
    let cc = std::fs::read_to_string(root().join("packaging/user-data.cloud-config.yaml")).unwrap();
    assert!(cc.starts_with("#cloud-config"));
    assert!(cc.contains("[systemctl, enable, --now, --no-block, ecs-hostd.service]"));
    assert_eq!(cc.matches("systemctl").count(), 1, "{cc}");
}

#[test]
fn the_ami_recipe_enables_both_units_never_starts_the_agent_and_leaves_no_instance_state() {
    let p = packages();
    let d = Debian::start();
    // What a build instance may carry: a machine id, state from an earlier agent run.
    d.ok("echo 0123456789abcdef0123456789abcdef > /etc/machine-id && install -d /var/lib/ecs-hostd && echo old > /var/lib/ecs-hostd/ecs-hostd.redb");
    d.ok(&format!("cp /pkg/{} /tmp/ecs-hostd.deb", p.deb1));
    let out = d.ok("bash /src/ami/provision.sh /tmp/ecs-hostd.deb");
    assert!(out.contains("installed and enabled; not started"), "{out}");
    assert_eq!(
        d.ok("systemctl is-enabled ecs-hostd.service").trim(),
        "enabled"
    );
    assert_eq!(
        d.ok("systemctl is-enabled docker.service").trim(),
        "enabled"
    );
    assert!(
        d.sh("pgrep -x ecs-hostd").0 != 0,
        "the agent was started during the build"
    );
    assert_eq!(
        d.ok("ls -A /var/lib/ecs-hostd").trim(),
        "",
        "state baked into the image"
    );
    assert_eq!(d.ok("stat -c %s /etc/machine-id").trim(), "0");
    assert!(!d.exists("/etc/ecs/ecs.config"), "no cluster in the image");
    assert!(!d.exists("/tmp/ecs-hostd.deb"));

    // The Packer template and the Image Builder component use the same script and rules.
    let packer =
        std::fs::read_to_string(root().join("packaging/ami/ecs-hostd-al2023.pkr.hcl")).unwrap();
    assert!(
        packer.contains("http_tokens                 = \"required\""),
        "IMDSv2 on the build instance"
    );
    assert!(packer.contains("provision.sh") && packer.contains("ecs-hostd_version"));
    let component =
        std::fs::read_to_string(root().join("packaging/ami/image-builder-component.yaml")).unwrap();
    for phase in ["name: build", "name: validate", "name: test"] {
        assert!(component.contains(phase), "{phase}");
    }
    assert!(
        component.contains("provision.sh")
            && component.contains("! systemctl is-active --quiet ecs-hostd.service")
    );
    for recipe in [
        &packer,
        &component,
        &std::fs::read_to_string(root().join("packaging/ami/provision.sh")).unwrap(),
    ] {
        let build_part = recipe.split("name: test").next().unwrap();
        assert!(
            !build_part.contains("start ecs-hostd")
                && !build_part.contains("--now ecs-hostd")
                && !build_part.contains("enable --now"),
            "a build step starts the agent"
        );
    }
}

/// The SSM command document's script with its parameters filled in, as SSM runs it.
fn ssm_script(params: &[(&str, &str)]) -> String {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("packaging/ssm/ecs-hostd-upgrade.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(doc["schemaVersion"], "2.2");
    let lines: Vec<&str> = doc["mainSteps"][0]["inputs"]["runCommand"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    let mut script = lines.join("\n");
    for (k, v) in params {
        assert!(doc["parameters"].get(*k).is_some(), "parameter {k}");
        script = script.replace(&format!("{{{{ {k} }}}}"), v);
    }
    assert!(!script.contains("{{"), "unfilled parameter in\n{script}");
    script
}

#[test]
fn the_ssm_upgrade_command_upgrades_in_place_and_fails_loudly() {
    let p = packages();
    let d = Debian::start();
    d.ok(&format!("dpkg -i /pkg/{}", p.deb1));
    let sha = |deb: &str| {
        d.ok(&format!("sha256sum /pkg/{deb} | cut -d' ' -f1"))
            .trim()
            .to_owned()
    };
    let v2 = format!("{}-2", env!("CARGO_PKG_VERSION"));
    let url2 = format!("/pkg/{}", p.deb2);
    let sha2 = sha(&p.deb2);

    // Wrong checksum: fails, nothing changes.
    let bad = ssm_script(&[
        ("PackageUrl", &url2),
        ("PackageSha256", &"0".repeat(64)),
        ("ExpectedVersion", &v2),
    ]);
    d.ok(&format!("cat > /tmp/bad.sh <<'SSM'\n{bad}\nSSM"));
    assert_ne!(d.sh("bash /tmp/bad.sh").0, 0);
    assert!(
        d.ok("dpkg-query -W -f='${Version}' ecs-hostd")
            .ends_with("-1")
    );

    // The real thing.
    let good = ssm_script(&[
        ("PackageUrl", &url2),
        ("PackageSha256", &sha2),
        ("ExpectedVersion", &v2),
    ]);
    d.ok(&format!("cat > /tmp/good.sh <<'SSM'\n{good}\nSSM"));
    let out = d.ok("bash /tmp/good.sh");
    assert!(out.contains("was not running; left as it was"), "{out}");
    assert_eq!(d.ok("dpkg-query -W -f='${Version}' ecs-hostd").trim(), v2);

    // A package that does not give the expected version is a failed instance (MaxErrors).
    let wrong = ssm_script(&[
        ("PackageUrl", &format!("/pkg/{}", p.deb1)),
        ("PackageSha256", &sha(&p.deb1)),
        ("ExpectedVersion", &v2),
    ]);
    d.ok(&format!("cat > /tmp/wrong.sh <<'SSM'\n{wrong}\nSSM"));
    let (code, out) = d.sh("bash /tmp/wrong.sh");
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("expected"), "{out}");

    // The rollout runs that document with rate and error controls.
    let rollout: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("packaging/ssm/ecs-hostd-rollout.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(rollout["schemaVersion"], "0.3");
    let step = &rollout["mainSteps"][0];
    assert_eq!(step["action"], "aws:runCommand");
    assert_eq!(step["inputs"]["MaxConcurrency"], "{{ MaxConcurrency }}");
    assert_eq!(step["inputs"]["MaxErrors"], "{{ MaxErrors }}");
    assert_eq!(rollout["parameters"]["MaxConcurrency"]["default"], "10%");
    assert_eq!(rollout["parameters"]["MaxErrors"]["default"], "1");
    assert_eq!(step["inputs"]["DocumentName"], "{{ UpgradeDocumentName }}");
    let assoc: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("packaging/ssm/association.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(assoc["Name"], "AWS-ConfigureAWSPackage");
    assert_eq!(
        assoc["Parameters"]["installationType"][0],
        "In-place update"
    );
    assert_eq!(assoc["MaxConcurrency"], "10%");
    assert_eq!(assoc["MaxErrors"], "1");
}

#[test]
fn the_distributor_scripts_install_enable_update_and_uninstall() {
    let p = packages();
    let d = Debian::start();
    d.stub_systemctl();
    d.ok(&format!(
        "install -d /tmp/dist && cp /src/ssm/distributor/*.sh /tmp/dist/ && cp /pkg/{} /tmp/dist/",
        p.deb1
    ));
    d.ok("bash /tmp/dist/install.sh");
    assert!(d.exists("/usr/bin/ecs-hostd"));
    assert_eq!(
        d.ok("cat /tmp/systemctl.log"),
        "enable --now --no-block ecs-hostd.service\n"
    );
    d.ok(&format!(
        "rm /tmp/dist/*.deb && cp /pkg/{} /tmp/dist/ && bash /tmp/dist/update.sh",
        p.deb2
    ));
    assert!(
        d.ok("dpkg-query -W -f='${Version}' ecs-hostd")
            .ends_with("-2")
    );
    assert_eq!(
        d.ok("cat /tmp/systemctl.log").lines().count(),
        1,
        "update starts nothing itself"
    );
    d.ok("echo kept > /tmp/marker && install -d /var/lib/ecs-hostd && echo state > /var/lib/ecs-hostd/ecs-hostd.redb");
    d.ok("bash /tmp/dist/uninstall.sh");
    assert!(!d.exists("/usr/bin/ecs-hostd"));
    assert!(
        d.exists("/var/lib/ecs-hostd/ecs-hostd.redb"),
        "uninstall keeps the state"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("packaging/ssm/distributor/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["schemaVersion"], "2.0");
    for (_, platform) in manifest["packages"].as_object().unwrap() {
        for (_, version) in platform.as_object().unwrap() {
            for (_, arch) in version.as_object().unwrap() {
                let file = arch["file"].as_str().unwrap();
                assert!(
                    manifest["files"].get(file).is_some(),
                    "{file} listed in files"
                );
            }
        }
    }
}

#[test]
fn with_systemd_running_install_is_inert_upgrade_restarts_without_blocking_and_remove_stops() {
    let p = packages();
    let d = Debian::boot();
    let active = |d: &Debian| {
        d.sh("systemctl is-active ecs-hostd.service")
            .1
            .trim()
            .to_owned()
    };

    d.ok(&format!("dpkg -i /pkg/{}", p.deb1));
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert_eq!(
        active(&d),
        "inactive",
        "a fresh install never starts the agent"
    );
    assert_eq!(
        d.sh("systemctl is-enabled ecs-hostd.service").1.trim(),
        "disabled"
    );

    // What user-data does. The agent keeps activating: no IMDS here, so it never registers
    // (READY=1 never comes), which is exactly when a blocking restart would hang dpkg.
    d.ok("systemctl enable --now --no-block ecs-hostd.service");
    let first = d.wait_pid_other_than(0);
    assert_eq!(active(&d), "activating");

    // Upgrade while running: dpkg returns promptly and the agent runs the new binary.
    let started = std::time::Instant::now();
    let (code, out) = d.sh(&format!("timeout 60 dpkg -i /pkg/{}", p.deb2));
    assert_eq!(code, 0, "upgrade failed or hung:\n{out}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let second = d.wait_pid_other_than(first);
    println!(
        "figure: dpkg upgrade with the agent running took {:?}; PID {first} -> {second}",
        started.elapsed()
    );

    // Upgrade while stopped: stays stopped.
    d.ok("systemctl stop ecs-hostd.service");
    d.ok(&format!("timeout 60 dpkg -i /pkg/{}", p.deb1));
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(
        active(&d),
        "inactive",
        "a stopped agent stays stopped across upgrades"
    );

    // Admin-disabled: stays disabled.
    d.ok("systemctl disable ecs-hostd.service");
    d.ok(&format!("timeout 60 dpkg -i /pkg/{}", p.deb2));
    assert_eq!(
        d.sh("systemctl is-enabled ecs-hostd.service").1.trim(),
        "disabled"
    );

    // Remove while running: stopped and disabled, nothing left running.
    d.ok("systemctl enable --now --no-block ecs-hostd.service");
    d.wait_pid_other_than(0);
    d.ok("timeout 60 dpkg -r ecs-hostd");
    assert_eq!(active(&d), "inactive");
    assert!(!d.exists(WANTS), "remove disables the unit");
    assert!(d.sh("pgrep -x ecs-hostd").0 != 0);
}
