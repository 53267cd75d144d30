//! A private Docker engine for the tests that stop, kill or restart dockerd, or that let the
//! engine delete images it did not pull (spec/test-world.md §5: "tests that kill, hang or
//! restart dockerd need an engine of their own").
//!
//! Owns one `dockerd` with its own socket, `--data-root`, `--exec-root`, `--pidfile`, config file
//! and cgroup parent under a temporary directory, running inside network and mount namespaces of
//! its own (held by an `unshare ... sleep` process), so it never sees the host's `docker0`,
//! iptables or mounts; it starts its own containerd. Tests stop and start it by signalling the
//! pid of *this* dockerd only.
//!
//! Never signals, restarts or cleans the shared engine on `/var/run/docker.sock`: the tests check
//! with [`shared_engine_answers`] that it answers before and after. On drop (pass or fail) it
//! kills every process of its own: those in its mount namespace (dockerd, containerd, shims) and
//! those in its cgroup parent (container processes).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long dockerd may take to answer after start.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long a signalled dockerd may take to exit (with live-restore off it first stops every
/// container: 10 s grace each, in parallel).
const STOP_DEADLINE: Duration = Duration::from_secs(40);

/// Whether the shared engine (`/var/run/docker.sock`) answers `docker version`.
pub fn shared_engine_answers() -> bool {
    Command::new("docker")
        .args([
            "-H",
            "unix:///var/run/docker.sock",
            "version",
            "-f",
            "{{.Server.Version}}",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ns_link(pid: u32, ns: &str) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).ok()
}

fn kill(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

fn alive(pid: u32) -> bool {
    // A zombie (state `Z` after the command name in /proc/<pid>/stat) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z'))
}

/// One private engine.
pub struct PrivateDocker {
    dir: tempfile::TempDir,
    /// `unix://<dir>/docker.sock`, for `DOCKER_HOST` or `docker -H`.
    pub host: String,
    /// Whether it runs with `--live-restore`.
    pub live_restore: bool,
    holder: Child,
    dockerd: Option<Child>,
    cgroup_parent: String,
}

impl PrivateDocker {
    /// Prepares the namespaces and starts dockerd. Fails (not skips) when dockerd is missing.
    pub fn start(live_restore: bool) -> PrivateDocker {
        Self::start_with(live_restore, true)
    }

    /// Starts dockerd in a mount namespace of its own but in the caller's network namespace:
    /// for a test that already runs in a private network namespace (its own `unshare --net`) and
    /// needs the agent, dockerd and the containers' bridge in one network stack.
    pub fn start_in_this_netns() -> PrivateDocker {
        Self::start_with(false, false)
    }

    fn start_with(live_restore: bool, own_netns: bool) -> PrivateDocker {
        assert!(
            Path::new("/usr/sbin/dockerd").exists() || which("dockerd"),
            "dockerd is missing: apt-get install -y docker.io (scripts/world.sh installs it)"
        );
        assert!(
            shared_engine_answers(),
            "the shared Docker engine does not answer before the test: run scripts/world.sh world_setup"
        );
        let dir = tempfile::Builder::new()
            .prefix("ehd-dockerd-")
            .tempdir()
            .unwrap();
        let id = dir
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('.', "");
        std::fs::write(dir.path().join("daemon.json"), "{}").unwrap();
        let holder = Command::new("unshare")
            .args(if own_netns { &["--net"][..] } else { &[][..] })
            .args(["--mount", "--propagation", "private", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)");
        let mut pd = PrivateDocker {
            host: format!("unix://{}/docker.sock", dir.path().display()),
            dir,
            live_restore,
            holder,
            dockerd: None,
            cgroup_parent: format!("/{id}"),
        };
        // Only once the holder has its own namespaces (and has exec'ed sleep) may dockerd join
        // them: joining too early would put dockerd in the host's network namespace.
        let start = Instant::now();
        loop {
            let pid = pd.holder.id();
            let own = (!own_netns
                || ns_link(pid, "net")
                    .is_some_and(|n| Some(n) != ns_link(std::process::id(), "net")))
                && ns_link(pid, "mnt")
                    .is_some_and(|m| Some(m) != ns_link(std::process::id(), "mnt"))
                && std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "sleep");
            if own {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "unshare never entered its own namespaces"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        pd.start_daemon();
        pd
    }

    /// The temporary directory (data root is `<dir>/data`).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The data root this engine was given.
    pub fn data_root(&self) -> PathBuf {
        self.path().join("data")
    }

    /// The dockerd log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("dockerd.log")).unwrap_or_default()
    }

    /// `docker -H <private socket>`.
    pub fn cli(&self) -> Command {
        let mut c = Command::new("docker");
        c.args(["-H", &self.host]);
        c
    }

    /// Runs the CLI and returns trimmed stdout, failing the test on error.
    pub fn run(&self, args: &[&str]) -> String {
        let o = self.cli().args(args).output().unwrap();
        assert!(
            o.status.success(),
            "docker {args:?} on the private engine: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_owned()
    }

    /// A bollard client for it.
    pub fn client(&self) -> bollard::Docker {
        ecs_hostd::docker::connect(Some(&self.host)).expect("docker client")
    }

    /// Whether it answers now.
    pub fn answers(&self) -> bool {
        self.cli()
            .args(["version", "-f", "{{.Server.Version}}"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// The pid of the running dockerd.
    pub fn pid(&self) -> u32 {
        self.dockerd.as_ref().expect("dockerd is not running").id()
    }

    /// Starts dockerd (again) inside the namespaces and waits until it answers.
    pub fn start_daemon(&mut self) {
        assert!(self.dockerd.is_none(), "dockerd already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("dockerd.log"))
            .unwrap();
        let p = self.path();
        let mut cmd = Command::new("nsenter");
        cmd.args([
            "-t",
            &self.holder.id().to_string(),
            "--net",
            "--mount",
            "dockerd",
        ])
        .arg(format!("--host={}", self.host))
        .arg(format!("--data-root={}", p.join("data").display()))
        .arg(format!("--exec-root={}", p.join("exec").display()))
        .arg(format!("--pidfile={}", p.join("docker.pid").display()))
        .arg(format!("--config-file={}", p.join("daemon.json").display()))
        .arg(format!("--cgroup-parent={}", self.cgroup_parent))
        // Its own network namespace already isolates it; no NAT rules either way.
        .args(["--iptables=false", "--ip-masq=false"])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        if self.live_restore {
            cmd.arg("--live-restore");
        }
        // nsenter execs dockerd in place: the child's pid is dockerd's.
        self.dockerd = Some(cmd.spawn().expect("nsenter dockerd"));
        let start = Instant::now();
        while !self.answers() {
            if let Some(st) = self.dockerd.as_mut().unwrap().try_wait().unwrap() {
                panic!("private dockerd exited with {st}:\n{}", self.log());
            }
            assert!(
                start.elapsed() < START_DEADLINE,
                "private dockerd did not answer within {START_DEADLINE:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends `sig` (`TERM`, `KILL`) to this dockerd's pid only and waits until it has exited.
    pub fn stop_daemon(&mut self, sig: &str) {
        let mut child = self.dockerd.take().expect("dockerd is not running");
        let pid = child.id();
        let from_file: u32 = std::fs::read_to_string(self.path().join("docker.pid"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(pid);
        assert_eq!(from_file, pid, "pidfile and child disagree");
        kill(pid, sig);
        let start = Instant::now();
        while child.try_wait().unwrap().is_none() {
            assert!(
                start.elapsed() < STOP_DEADLINE,
                "private dockerd did not exit after SIG{sig}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(!self.answers());
    }

    /// Copies `image` from the shared engine into this one.
    pub fn load_image(&self, image: &str) {
        let mut save = Command::new("docker")
            .args(["save", image])
            .stdout(Stdio::piped())
            .spawn()
            .expect("docker save");
        let o = self
            .cli()
            .arg("load")
            .stdin(save.stdout.take().unwrap())
            .output()
            .unwrap();
        assert!(save.wait().unwrap().success(), "docker save {image}");
        assert!(
            o.status.success(),
            "docker load: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Pids of every process this engine started: in the holder's mount namespace (dockerd,
    /// containerd, shims, the holder) or in its cgroup parent (containers).
    fn own_processes(&self) -> Vec<u32> {
        let Some(mnt) = ns_link(self.holder.id(), "mnt") else {
            return Vec::new();
        };
        let marker = format!(":{}/", self.cgroup_parent);
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if pid == self.holder.id() {
                continue;
            }
            let same_mnt = ns_link(pid, "mnt").is_some_and(|m| m == mnt);
            let in_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.contains(&marker));
            if same_mnt || in_cgroup {
                out.push(pid);
            }
        }
        out
    }
}

fn which(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Drop for PrivateDocker {
    fn drop(&mut self) {
        if self.dockerd.is_some() && self.answers() {
            // Everything on this engine is the test's own.
            let ids = self.cli().args(["ps", "-aq"]).output();
            if let Ok(o) = ids {
                let ids: Vec<String> = String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                if !ids.is_empty() {
                    let _ = self.cli().args(["rm", "-f", "-v"]).args(&ids).output();
                }
            }
        }
        if let Some(mut c) = self.dockerd.take() {
            kill(c.id(), "TERM");
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() && start.elapsed() < STOP_DEADLINE {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        for _ in 0..50 {
            let left = self.own_processes();
            if left.is_empty() {
                break;
            }
            for pid in left {
                kill(pid, "KILL");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // Empty cgroup directories of the cgroup parent (cgroup v1: one per controller).
        if let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in ctrls.flatten() {
                let d = c.path().join(self.cgroup_parent.trim_start_matches('/'));
                if d.is_dir() {
                    for sub in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                        if sub.path().is_dir() {
                            let _ = std::fs::remove_dir(sub.path());
                        }
                    }
                    let _ = std::fs::remove_dir(&d);
                }
            }
        }
    }
}

/// Whether process `pid` is alive (not reaped and not a zombie).
pub fn process_alive(pid: u32) -> bool {
    alive(pid)
}
