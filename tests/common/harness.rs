//! Drives `examples/engine_harness.rs` as a separate process the tests can kill -9, plus a local
//! `docker-registry` (Debian package) on 127.0.0.1 with optional htpasswd auth.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ecs_hostd::store::{Store, Table};
use ecs_hostd::tasks::TaskChange;

/// The name of the test function that turns a re-executed test binary into the harness.
pub const HARNESS_TEST: &str = "harness_process";

/// Call from a `#[test] fn harness_process()`: when this process was started as the harness
/// (`HARNESS_DIR` set), run it and exit; otherwise return at once.
pub fn harness_entry() {
    if std::env::var_os("HARNESS_DIR").is_none() {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(crate::harness_main::harness_main());
    std::process::exit(0);
}

/// One harness directory and (maybe) a running process.
pub struct Harness {
    /// Its directory.
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
}

impl Harness {
    /// A fresh directory.
    pub fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tasks")).unwrap();
        Harness {
            dir,
            child: None,
            env: Vec::new(),
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the process, optionally pausing at `phase`.
    pub fn start(&mut self, pause_at: Option<&str>) {
        assert!(self.child.is_none(), "already running");
        for p in [
            "pull.before",
            "pull.after",
            "create.after",
            "start.after",
            "stop.before",
        ] {
            let _ = std::fs::remove_file(self.path().join(p));
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join("harness.log"))
            .unwrap();
        // The test binary itself is the harness (see `harness_entry`).
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.args([
            HARNESS_TEST,
            "--exact",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("HARNESS_DIR", self.path())
        .env_remove("HARNESS_PAUSE_AT")
        .stdout(Stdio::null())
        .stderr(log);
        if let Some(p) = pause_at {
            cmd.env("HARNESS_PAUSE_AT", p);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn harness"));
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Writes (replaces) a task file atomically.
    pub fn put_task(&self, name: &str, task: &serde_json::Value) {
        let tmp = self.path().join(format!("tasks/.{name}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec(task).unwrap()).unwrap();
        std::fs::rename(&tmp, self.path().join(format!("tasks/{name}.json"))).unwrap();
    }

    /// Waits for the pause marker of `phase`.
    pub fn wait_marker(&self, phase: &str, deadline: Duration) {
        let start = Instant::now();
        while !self.path().join(phase).exists() {
            assert!(
                start.elapsed() < deadline,
                "harness never reached {phase}; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The harness log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path().join("harness.log")).unwrap_or_default()
    }

    /// Waits until the log contains `text`.
    pub fn wait_log(&self, text: &str, deadline: Duration) {
        let start = Instant::now();
        while !self.log().contains(text) {
            assert!(
                start.elapsed() < deadline,
                "log never said {text:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Changes exported so far (best effort, while running).
    pub fn live_changes(&self) -> Vec<TaskChange> {
        std::fs::read_to_string(self.path().join("changes.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until `f` holds over the live changes.
    pub fn wait_changes(&self, what: &str, deadline: Duration, f: impl Fn(&[TaskChange]) -> bool) {
        let start = Instant::now();
        loop {
            let ch = self.live_changes();
            if f(&ch) {
                return;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out waiting for {what}; changes {ch:#?}\nlog:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The durable changes, read from the store (the process must be stopped).
    pub fn stored_changes(&self) -> Vec<TaskChange> {
        assert!(self.child.is_none(), "stop the harness first");
        let store = Store::open(&self.path().join("state.redb")).unwrap();
        store
            .list::<TaskChange>(Table("harness_changes"))
            .unwrap()
            .into_iter()
            .map(|(_, c)| c)
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A local registry (`/usr/bin/docker-registry serve`) on 127.0.0.1.
pub struct Registry {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry storing under `storage` (shared between registries to serve the same
    /// images with and without auth); `htpasswd` enables basic auth.
    pub fn start(storage: &Path, htpasswd: Option<&Path>) -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "docker-registry is missing: apt-get install -y docker-registry (scripts/world.sh installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth = match htpasswd {
            Some(p) => format!(
                "auth:\n  htpasswd:\n    realm: ecs-hostd-test\n    path: {}\n",
                p.display()
            ),
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
            storage.display()
        );
        let cfg = dir.path().join("config.yml");
        std::fs::write(&cfg, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let start = Instant::now();
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "registry did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes an htpasswd file (bcrypt, `htpasswd -B`).
pub fn htpasswd(dir: &Path, user: &str, pass: &str) -> PathBuf {
    let p = dir.join("htpasswd");
    let st = Command::new("htpasswd")
        .args(["-Bbc", p.to_str().unwrap(), user, pass])
        .output()
        .expect("htpasswd (apache2-utils) is missing; scripts/world.sh installs it");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    p
}

/// Pushes the local `image` to `<registry>/<repo>` (through the default Docker engine) and
/// removes the local tag again, so a pull must really fetch it.
pub fn push(image: &str, registry: &str, repo: &str) -> String {
    let target = format!("{registry}/{repo}");
    let run = |args: &[&str]| {
        let o = Command::new("docker").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "docker {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    run(&["tag", image, &target]);
    run(&["push", &target]);
    run(&["rmi", &target]);
    target
}

/// The id of a local image (by reference or id) on the shared engine, if present.
pub fn image_id(image: &str) -> Option<String> {
    let o = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", image])
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_owned())
}

/// The label a derived image (and so every container of it) carries: `<label>=<run>`.
pub const DERIVED_LABEL: &str = "ecs-hostd.test";

/// A registry with htpasswd (`user`/`password`) holding an image of its own, derived from
/// `base` and labelled with a fresh run id, which is not in the local image store: a pull must
/// really fetch it with that login. Dropping it removes the containers and the image.
pub struct PrivateImage {
    /// The image reference on the registry.
    pub image: String,
    /// Id of that image (no other image has it).
    pub image_id: String,
    /// The run id of its label.
    pub run: String,
    /// The registry.
    pub registry: Registry,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl PrivateImage {
    /// Pushes through an open registry on the same storage, then serves it with auth only.
    pub fn start(base: &str, repo: &str, user: &str, password: &str) -> PrivateImage {
        let docker = |args: &[&str]| {
            let o = Command::new("docker").args(args).output().unwrap();
            assert!(
                o.status.success(),
                "docker {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            String::from_utf8_lossy(&o.stdout).trim().to_owned()
        };
        let run = format!(
            "{repo}-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        );
        let storage = tempfile::tempdir().unwrap();
        let open = Registry::start(storage.path(), None);
        let label = format!("{DERIVED_LABEL}={run}");
        let cid = docker(&["create", "--label", &label, base, "true"]);
        let local = format!("ehd-derived/{run}:1");
        let id = docker(&[
            "commit",
            "--change",
            &format!("LABEL {label}"),
            &cid,
            &local,
        ]);
        docker(&["rm", &cid]);
        let pushed = push(&local, &open.addr, &format!("{repo}/{run}:1"));
        docker(&["rmi", &local]);
        assert!(
            image_id(&id).is_none(),
            "the image must be in the registry only"
        );
        drop(open);
        let auth = tempfile::tempdir().unwrap();
        let registry =
            Registry::start(storage.path(), Some(&htpasswd(auth.path(), user, password)));
        let image = pushed.replace(&pushed[..pushed.find('/').unwrap()], &registry.addr);
        PrivateImage {
            image,
            image_id: id,
            run,
            registry,
            _dirs: (storage, auth),
        }
    }
}

impl Drop for PrivateImage {
    fn drop(&mut self) {
        let ps = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label={DERIVED_LABEL}={}", self.run))
            .output();
        if let Ok(o) = ps {
            for id in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", "-v", id]).output();
            }
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image_id])
            .output();
    }
}
