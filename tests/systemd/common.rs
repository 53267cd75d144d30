//! Shared helpers of the systemd tests: ec2sim on the host, a Unix-socket bridge to it, and the
//! booted-systemd "instance" (a Docker container whose PID 1 is a real systemd 252).
//!
//! Networking (test-world.md §5.5, §7): the instance runs with `--network none`, so its inner
//! dockerd creates `docker0` and iptables rules in the container's own network namespace and can
//! never touch the shared engine's bridge. ec2sim binds 127.0.0.1 on the host; the test bridges a
//! Unix socket in a bind-mounted directory to it, and inside the instance a systemd socket unit
//! on 127.0.0.1:<the same port> hands connections to `systemd-socket-proxyd`, which forwards them
//! to that Unix socket. URLs are therefore identical inside and outside.
//!
//! Every failure panics with what is missing: these tests fail, never skip, without their world.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The agent binary cargo built for this test run.
pub const AGENT: &str = env!("CARGO_BIN_EXE_ecs-hostd");
/// The repository root.
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Runs a command, panicking with its output if it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `f` every 250 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[path = "../common/python.rs"]
mod ec2sim_python;

/// The Python of the ec2sim venv (one lookup for every harness: `tests/common/python.rs`).
pub fn python() -> String {
    ec2sim_python::python().to_string_lossy().into_owned()
}

/// ec2sim on 127.0.0.1, killed on drop.
pub struct Ec2Sim {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its log.
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Ec2Sim {
    /// Starts ec2sim and waits for its ready file.
    pub fn start() -> Ec2Sim {
        let dir = tempfile::tempdir().unwrap();
        let ready = dir.path().join("ready.json");
        let log = dir.path().join("ec2sim.log");
        let child = Command::new(python())
            .arg(format!("{ROOT}/tests/ec2sim/ec2sim.py"))
            .args(["--port", "0", "--ready-file"])
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("ec2sim starts");
        let mut sim = Ec2Sim {
            child,
            port: 0,
            log,
            _dir: dir,
        };
        let text = wait_for("ec2sim's ready file", Duration::from_secs(60), || {
            std::fs::read_to_string(&ready)
                .ok()
                .filter(|t| !t.is_empty())
        });
        let v: serde_json::Value = serde_json::from_str(&text).expect("ready file is JSON");
        sim.port = v["port"].as_u64().expect("port") as u16;
        sim
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// One HTTP/1.0 request to ec2sim; returns (status, body).
    pub fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).expect("ec2sim answers");
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    /// An ECS JSON call, as the SDK sends it (moto checks no signature; the region comes from
    /// the credential scope).
    pub fn ecs(&self, operation: &str, body: serde_json::Value) -> serde_json::Value {
        let target = format!("AmazonEC2ContainerServiceV20141113.{operation}");
        let (status, text) = self.http(
            "POST",
            "/",
            &[
                ("Content-Type", "application/x-amz-json-1.1"),
                ("X-Amz-Target", &target),
                (
                    "Authorization",
                    "AWS4-HMAC-SHA256 Credential=AKIDTEST/20250101/us-east-1/ecs/aws4_request, SignedHeaders=host, Signature=00",
                ),
            ],
            &body.to_string(),
        );
        assert_eq!(status, 200, "{operation}: {text}");
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null)
    }

    /// Creates an ECS cluster.
    pub fn create_cluster(&self, name: &str) {
        self.ecs("CreateCluster", serde_json::json!({ "clusterName": name }));
    }

    /// The log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ec2Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Forwards connections on a Unix socket at `path` to 127.0.0.1:`port`, on background threads
/// that live as long as the test process.
pub fn bridge_unix_to_tcp(path: &Path, port: u16) {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).expect("bridge socket");
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(unix) = conn else { return };
            std::thread::spawn(move || {
                let Ok(tcp) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                    return;
                };
                let (mut u2, mut t2) = match (unix.try_clone(), tcp.try_clone()) {
                    (Ok(u), Ok(t)) => (u, t),
                    _ => return,
                };
                let (mut unix, mut tcp) = (unix, tcp);
                let up = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut t2);
                    let _ = t2.shutdown(std::net::Shutdown::Write);
                });
                let _ = std::io::copy(&mut tcp, &mut unix);
                let _ = unix.shutdown(std::net::Shutdown::Write);
                let _ = up.join();
            });
        }
    });
    // Proves the bridge answers before anything relies on it.
    UnixStream::connect(path).expect("bridge accepts");
}

/// The systemd image, built once per machine by tests/systemd/build-image.sh (reused when its
/// inputs did not change).
pub fn image() -> String {
    let out = run(Command::new("bash").arg(format!("{ROOT}/tests/systemd/build-image.sh")));
    assert!(
        out.status.success(),
        "building the systemd test image failed (needs Docker and Debian's archive):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Settings for one instance.
pub struct InstanceOptions {
    /// Lines of /etc/ecs/ecs.config.
    pub ecs_config: Vec<String>,
    /// Extra `[Service]` lines of the agent's test drop-in.
    pub service_lines: Vec<String>,
}

/// A booted systemd in a container, removed on drop (its journal is printed if the test failed).
pub struct Instance {
    /// Container name.
    pub name: String,
    scratch: tempfile::TempDir,
}

impl Instance {
    /// Boots a fresh instance; with `sim`, bridges ec2sim into it.
    pub fn boot(test: &str, sim: Option<&Ec2Sim>) -> Instance {
        LIVE_INSTANCES.fetch_add(1, Ordering::SeqCst);
        let image = image();
        let name = format!("ecs-hostd-systemd-{test}-{}", std::process::id());
        let _ = run(Command::new("docker").args(["rm", "-f", &name]));
        let scratch = tempfile::Builder::new()
            .prefix("ecs-hostd-systemd-")
            .tempdir_in(std::env::var("ECS_HOSTD_SCRATCH").unwrap_or_else(|_| "/var/tmp".into()))
            .expect("scratch dir");
        let docker_dir = scratch.path().join("docker");
        let sim_dir = scratch.path().join("ec2sim");
        std::fs::create_dir_all(&docker_dir).unwrap();
        std::fs::create_dir_all(&sim_dir).unwrap();
        if let Some(sim) = sim {
            bridge_unix_to_tcp(&sim_dir.join("ec2sim.sock"), sim.port);
        }
        ok(Command::new("docker").args([
            "run",
            "-d",
            "--name",
            &name,
            "--hostname",
            test,
            "--label",
            "ecs-hostd.test=systemd",
            "--network",
            "none",
            "--stop-signal",
            "SIGRTMIN+3",
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
            "-v",
            &format!("{}:/var/lib/docker", docker_dir.display()),
            "-v",
            &format!("{}:/ec2sim", sim_dir.display()),
            "-e",
            "container=docker",
            &image,
            "/lib/systemd/systemd",
        ]));
        let inst = Instance { name, scratch };
        inst.wait_booted();
        inst
    }

    /// Waits until systemd finished booting (`running`, or `degraded` with a failed unit).
    pub fn wait_booted(&self) {
        wait_for("systemd to boot", Duration::from_secs(90), || {
            let out = self.exec(&["systemctl", "is-system-running"]);
            let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            (s == "running" || s == "degraded").then_some(())
        });
    }

    /// `docker exec` without checking the result.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("docker")
            .arg("exec")
            .arg(&self.name)
            .args(args))
    }

    /// A shell command inside that must succeed; returns stdout.
    pub fn sh(&self, script: &str) -> String {
        ok(Command::new("docker")
            .args(["exec", &self.name, "sh", "-c"])
            .arg(script))
    }

    /// A shell command inside; returns (success, stdout).
    pub fn try_sh(&self, script: &str) -> (bool, String) {
        let out = run(Command::new("docker")
            .args(["exec", &self.name, "sh", "-c"])
            .arg(script));
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    }

    /// Writes a file inside (parents created).
    pub fn write(&self, path: &str, content: &str) {
        let local = self.scratch.path().join("upload");
        std::fs::write(&local, content).unwrap();
        self.sh(&format!("mkdir -p \"$(dirname {path})\""));
        ok(Command::new("docker")
            .arg("cp")
            .arg(&local)
            .arg(format!("{}:{path}", self.name)));
    }

    /// One property of a unit (`systemctl show -p P --value U`).
    pub fn prop(&self, unit: &str, prop: &str) -> String {
        let out = self.exec(&["systemctl", "show", "-p", prop, "--value", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `systemctl is-enabled`.
    pub fn is_enabled(&self, unit: &str) -> String {
        let out = self.exec(&["systemctl", "is-enabled", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The journal of a unit, plain messages with unix timestamps.
    pub fn journal(&self, unit: &str) -> String {
        let out = self.exec(&["journalctl", "-u", unit, "-o", "short-unix", "--no-pager"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Installs the agent binary and unit (as a package would), the ec2sim bridge units, the
    /// agent's ecs.config and a test drop-in, then enables and starts the agent without waiting.
    pub fn install_agent(&self, sim: Option<&Ec2Sim>, opts: &InstanceOptions) {
        ok(Command::new("docker")
            .arg("cp")
            .arg(AGENT)
            .arg(format!("{}:/usr/bin/ecs-hostd", self.name)));
        ok(Command::new("docker")
            .arg("cp")
            .arg(format!("{ROOT}/systemd/ecs-hostd.service"))
            .arg(format!(
                "{}:/lib/systemd/system/ecs-hostd.service",
                self.name
            )));
        let mut env = Vec::new();
        if let Some(sim) = sim {
            self.write(
                "/etc/systemd/system/ec2sim-bridge.socket",
                &format!(
                    "[Unit]\nDescription=ec2sim on 127.0.0.1:{port} (test bridge)\n\n[Socket]\nListenStream=127.0.0.1:{port}\n\n[Install]\nWantedBy=sockets.target\n",
                    port = sim.port
                ),
            );
            self.write(
                "/etc/systemd/system/ec2sim-bridge.service",
                "[Unit]\nDescription=ec2sim bridge\nRequires=ec2sim-bridge.socket\nAfter=ec2sim-bridge.socket\n\n[Service]\nExecStart=/lib/systemd/systemd-socket-proxyd /ec2sim/ec2sim.sock\n",
            );
            self.sh("systemctl daemon-reload && systemctl enable --now ec2sim-bridge.socket");
            env.push(format!("AWS_ENDPOINT_URL={}", sim.url()));
            env.push(format!("AWS_EC2_METADATA_SERVICE_ENDPOINT={}", sim.url()));
        }
        self.write("/etc/ecs/ecs.config", &(opts.ecs_config.join("\n") + "\n"));
        let mut dropin = String::from("[Unit]\nAfter=ec2sim-bridge.socket\n\n[Service]\n");
        for e in env {
            dropin.push_str(&format!("Environment={e}\n"));
        }
        for l in &opts.service_lines {
            dropin.push_str(l);
            dropin.push('\n');
        }
        self.write("/etc/systemd/system/ecs-hostd.service.d/test.conf", &dropin);
        self.sh("systemctl daemon-reload && systemctl enable --now --no-block ecs-hostd.service");
    }

    /// Waits until the agent is `active` (for `Type=notify`: it sent READY=1).
    pub fn wait_agent_ready(&self, timeout: Duration) {
        wait_for("ecs-hostd to be active (READY=1)", timeout, || {
            (self.prop("ecs-hostd", "ActiveState") == "active").then_some(())
        });
    }

    /// What `ecs-hostd status` prints inside.
    pub fn status(&self) -> String {
        let out = self.exec(&["ecs-hostd", "status"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The registered container-instance ARN, from `ecs-hostd status`.
    pub fn arn(&self) -> String {
        wait_for(
            "an ARN in `ecs-hostd status`",
            Duration::from_secs(30),
            || {
                self.status()
                    .lines()
                    .find_map(|l| l.strip_prefix("instance:"))
                    .map(|a| a.trim().to_owned())
                    .filter(|a| a.starts_with("arn:"))
            },
        )
    }

    /// The agent's `/metrics`, fetched inside with bash's /dev/tcp (the image has no curl).
    pub fn metrics(&self) -> String {
        let out = self.exec(&[
            "bash",
            "-c",
            "exec 3<>/dev/tcp/127.0.0.1/51678 && printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3 && timeout 5 cat <&3",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One counter or gauge from `/metrics`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|rest| rest.strip_prefix(' '))
                .and_then(|v| v.trim().parse().ok())
        })
    }

    /// Whether the inner Docker answers (`docker info` inside, bounded).
    pub fn docker_answers(&self) -> bool {
        self.try_sh("timeout 5 docker info >/dev/null 2>&1").0
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for unit in ["ecs-hostd", "docker"] {
                let j = self.journal(unit);
                let tail: Vec<&str> = j.lines().rev().take(60).collect();
                eprintln!(
                    "---- journal of {unit} in {} (last 60 lines) ----",
                    self.name
                );
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let _ = run(Command::new("docker").args(["rm", "-f", "-v", &self.name]));
        // Files the inner engine left (root-owned layers) go with the scratch dir.
        let _ = std::fs::remove_dir_all(self.scratch.path());
        if LIVE_INSTANCES.fetch_sub(1, Ordering::SeqCst) == 1 {
            release_orphan_cgroup_hierarchies();
        }
    }
}

/// Instances of this test process not yet dropped (booting ones included).
static LIVE_INSTANCES: AtomicUsize = AtomicUsize::new(0);

/// The v1 cgroup hierarchies the kernel keeps (`/proc/cgroups`) that the host itself does not
/// mount (`/proc/self/mountinfo`): their ids and controllers joined by commas (`net_cls,net_prio`).
pub fn orphan_cgroup_hierarchies() -> Vec<(u32, String)> {
    let cgroups = std::fs::read_to_string("/proc/cgroups").expect("/proc/cgroups");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mounted: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| {
            let (_, after) = l.split_once(" - ")?;
            let mut f = after.split_whitespace();
            (f.next()? == "cgroup").then(|| f.nth(1))?
        })
        .flat_map(|opts| opts.split(','))
        .collect();
    let mut by_hierarchy: std::collections::BTreeMap<u32, Vec<&str>> = Default::default();
    for l in cgroups.lines().filter(|l| !l.starts_with('#')) {
        let mut f = l.split_whitespace();
        let (Some(name), Some(Ok(hierarchy))) = (f.next(), f.next().map(str::parse::<u32>)) else {
            continue;
        };
        if hierarchy != 0 && !mounted.contains(&name) {
            by_hierarchy.entry(hierarchy).or_default().push(name);
        }
    }
    by_hierarchy
        .into_iter()
        .map(|(h, c)| (h, c.join(",")))
        .collect()
}

/// An instance's systemd mounts the v1 controllers the host leaves unmounted (perf_event,
/// net_cls, hugetlb on the test machines) and makes its slices in them. The kernel keeps such a
/// hierarchy, and every host process's place in it, after the instance is gone; containerd's
/// cgroup loader then finds a controller it cannot see mounted and `docker stats` reads 0 for
/// every container of the shared engine. `scripts/world.sh`'s `world_orphan_cgroups` releases
/// them (the same step `world_setup` takes for a machine a killed run left); it does nothing
/// while an instance container runs.
fn release_orphan_cgroup_hierarchies() {
    let out = run(Command::new("bash")
        .arg("-c")
        .arg("source scripts/world.sh && world_orphan_cgroups")
        .current_dir(ROOT));
    if !out.status.success() {
        eprintln!(
            "releasing the instances' cgroup hierarchies failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
