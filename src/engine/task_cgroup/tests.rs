use std::sync::Mutex;

use serde_json::json;

use super::*;

fn spec(task: serde_json::Value) -> TaskSpec {
    let mut t = json!({"arn": "arn:aws:ecs:us-east-1:1:task/c/0123abcd", "family": "f", "version": "1",
        "containers": [{"name": "a", "image": "i", "cpu": 100, "memory": 64},
                       {"name": "b", "image": "i", "cpu": 0}]});
    crate::engine::docker::merge(&mut t, &task);
    TaskSpec::from_json(&t).unwrap()
}

const PERIOD: Duration = Duration::from_millis(100);

#[test]
fn task_cpu_becomes_a_quota_of_the_period() {
    let l = limits(&spec(json!({"cpu": 0.5})), PERIOD, None).unwrap();
    assert_eq!(
        l.cpu,
        Cpu::Quota {
            quota_us: 50_000,
            period_us: 100_000
        }
    );
    let l = limits(&spec(json!({"cpu": 2.0})), Duration::from_millis(8), None).unwrap();
    assert_eq!(
        l.cpu,
        Cpu::Quota {
            quota_us: 16_000,
            period_us: 8_000
        }
    );
    // Below the kernel's 1 ms floor the quota is the floor, not an EINVAL.
    let l = limits(&spec(json!({"cpu": 0.001})), PERIOD, None).unwrap();
    assert_eq!(
        l.cpu,
        Cpu::Quota {
            quota_us: MIN_QUOTA_US,
            period_us: 100_000
        }
    );
}

#[test]
fn without_task_cpu_the_shares_are_summed_with_a_floor_and_a_cap() {
    // a: 100, b: 0 → 2.
    let l = limits(&spec(json!({})), PERIOD, None).unwrap();
    assert_eq!(l.cpu, Cpu::Shares(102));
    let l = limits(&spec(json!({"cpu": 0})), PERIOD, None).unwrap();
    assert_eq!(l.cpu, Cpu::Shares(102));
    let big = spec(
        json!({"containers": [{"name": "a", "image": "i", "cpu": 200000},
                                         {"name": "b", "image": "i", "cpu": 100000}]}),
    );
    assert_eq!(
        limits(&big, PERIOD, None).unwrap().cpu,
        Cpu::Shares(MAX_SHARES)
    );
}

#[test]
fn task_memory_is_bytes_and_no_container_may_exceed_it() {
    let l = limits(&spec(json!({"memory": 256})), PERIOD, Some(100)).unwrap();
    assert_eq!(l.memory_bytes, Some(256 * 1024 * 1024));
    assert_eq!(l.pids, Some(100));
    let l = limits(&spec(json!({})), PERIOD, Some(0)).unwrap();
    assert_eq!((l.memory_bytes, l.pids), (None, None));
    // Equal is fine; one MiB more is not.
    assert!(limits(&spec(json!({"memory": 64})), PERIOD, None).is_ok());
    let e = limits(&spec(json!({"memory": 63})), PERIOD, None).unwrap_err();
    assert_eq!(
        e.to_string(),
        "container memory limit(64) greater than task memory limit(63) (container a)"
    );
}

#[test]
fn limits_are_asked_for_by_cpu_or_memory() {
    assert!(!asks_for_limits(&spec(json!({}))));
    assert!(asks_for_limits(&spec(json!({"cpu": 0.25}))));
    assert!(asks_for_limits(&spec(json!({"memory": 128}))));
}

fn fs_root(v2: bool) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    if v2 {
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
    } else {
        for h in ["cpu,cpuacct", "memory", "pids", "blkio", "systemd"] {
            std::fs::create_dir_all(d.path().join(h)).unwrap();
            std::fs::write(d.path().join(h).join("cgroup.procs"), "").unwrap();
        }
        std::os::unix::fs::symlink("cpu,cpuacct", d.path().join("cpu")).unwrap();
    }
    d
}

fn cgroups(layout: Layout) -> TaskCgroups {
    TaskCgroups {
        layout,
        cpu_period: PERIOD,
        pids_limit: Some(64),
    }
}

fn read(p: PathBuf) -> String {
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[tokio::test]
async fn v1_cgroupfs_writes_the_controllers_files_and_removes_every_hierarchy() {
    let root = fs_root(false);
    let layout = TaskCgroups::detect(root.path(), "cgroupfs", None).unwrap();
    assert!(matches!(layout, Layout::V1 { .. }), "{layout:?}");
    let cg = cgroups(layout);
    assert_eq!(cg.parent("0123abcd").unwrap(), "/ecs/0123abcd");
    let l = cg
        .limits(&spec(json!({"cpu": 0.25, "memory": 128})))
        .unwrap();
    cg.ensure("0123abcd", &l).await.unwrap();
    // Twice: a second container, or a restarted agent.
    cg.ensure("0123abcd", &l).await.unwrap();
    let at = |h: &str, f: &str| read(root.path().join(h).join("ecs/0123abcd").join(f));
    assert_eq!(at("cpu", "cpu.cfs_period_us"), "100000");
    assert_eq!(at("cpu", "cpu.cfs_quota_us"), "25000");
    assert_eq!(at("memory", "memory.limit_in_bytes"), "134217728");
    assert_eq!(at("pids", "pids.max"), "64");
    // runc makes the task's directory in the hierarchies it joins too.
    std::fs::create_dir_all(root.path().join("blkio/ecs/0123abcd")).unwrap();
    // The fake's files make the directories non-empty; the kernel's vanish with rmdir.
    for f in [
        "cpu/ecs/0123abcd/cpu.cfs_period_us",
        "cpu/ecs/0123abcd/cpu.cfs_quota_us",
        "memory/ecs/0123abcd/memory.limit_in_bytes",
        "pids/ecs/0123abcd/pids.max",
    ] {
        std::fs::remove_file(root.path().join(f)).unwrap();
    }
    // A busy cgroup (a container's left) is an error naming the path, and keeps the rest.
    std::fs::create_dir_all(root.path().join("memory/ecs/0123abcd/c1")).unwrap();
    let e = cg.remove("0123abcd").await.unwrap_err().to_string();
    assert!(
        e.contains("rmdir") && e.contains("memory/ecs/0123abcd"),
        "{e}"
    );
    std::fs::remove_dir(root.path().join("memory/ecs/0123abcd/c1")).unwrap();
    cg.remove("0123abcd").await.unwrap();
    for h in ["cpu,cpuacct", "memory", "pids", "blkio", "systemd"] {
        assert!(!root.path().join(h).join("ecs/0123abcd").exists(), "{h}");
        assert!(root.path().join(h).exists(), "{h}");
    }
    // Gone already: fine.
    cg.remove("0123abcd").await.unwrap();
}

#[tokio::test]
async fn v1_without_task_cpu_writes_shares() {
    let root = fs_root(false);
    let cg = TaskCgroups {
        pids_limit: None,
        ..cgroups(TaskCgroups::detect(root.path(), "cgroupfs", None).unwrap())
    };
    let l = cg.limits(&spec(json!({}))).unwrap();
    cg.ensure("t1", &l).await.unwrap();
    assert_eq!(read(root.path().join("cpu/ecs/t1/cpu.shares")), "102");
    assert!(!root.path().join("cpu/ecs/t1/cpu.cfs_quota_us").exists());
    assert!(
        !root
            .path()
            .join("memory/ecs/t1/memory.limit_in_bytes")
            .exists()
    );
    assert!(!root.path().join("pids/ecs/t1").exists());
}

#[tokio::test]
async fn v2_cgroupfs_delegates_the_controllers_and_writes_the_v2_files() {
    let root = fs_root(true);
    let layout = TaskCgroups::detect(root.path(), "cgroupfs", None).unwrap();
    assert!(matches!(layout, Layout::V2 { .. }), "{layout:?}");
    let cg = cgroups(layout);
    assert_eq!(cg.parent("t2").unwrap(), "/ecstasks/t2");
    let l = cg
        .limits(&spec(json!({"cpu": 1.5, "memory": 512})))
        .unwrap();
    cg.ensure("t2", &l).await.unwrap();
    assert_eq!(
        read(root.path().join("ecstasks/cgroup.subtree_control")),
        "+cpu +memory +pids"
    );
    assert_eq!(
        read(root.path().join("ecstasks/t2/cpu.max")),
        "150000 100000"
    );
    assert_eq!(
        read(root.path().join("ecstasks/t2/memory.max")),
        "536870912"
    );
    assert_eq!(read(root.path().join("ecstasks/t2/pids.max")), "64");
    let shares = cg.limits(&spec(json!({}))).unwrap();
    cg.ensure("t3", &shares).await.unwrap();
    assert_eq!(read(root.path().join("ecstasks/t3/cpu.weight")), "4");
    // The fake's files make the directory non-empty; the kernel's vanish with rmdir.
    for f in ["cpu.max", "memory.max", "pids.max"] {
        std::fs::remove_file(root.path().join("ecstasks/t2").join(f)).unwrap();
    }
    cg.remove("t2").await.unwrap();
    assert!(!root.path().join("ecstasks/t2").exists());
}

#[test]
fn detection_refuses_what_cannot_work() {
    let empty = tempfile::tempdir().unwrap();
    let e = TaskCgroups::detect(empty.path(), "cgroupfs", None).unwrap_err();
    assert!(e.to_string().contains("no cgroup v1 cpu hierarchy"), "{e}");
    let v2 = tempfile::tempdir().unwrap();
    std::fs::write(v2.path().join("cgroup.controllers"), "cpuset io pids\n").unwrap();
    let e = TaskCgroups::detect(v2.path(), "cgroupfs", None).unwrap_err();
    assert!(e.to_string().contains("lacks the cpu controller"), "{e}");
    let root = fs_root(true);
    let e = TaskCgroups::detect(root.path(), "systemd", None).unwrap_err();
    assert!(e.to_string().contains("systemd's bus"), "{e}");
    let e = TaskCgroups::detect(root.path(), "kubelet", None).unwrap_err();
    assert!(e.to_string().contains("\"kubelet\""), "{e}");
}

#[tokio::test]
async fn a_task_id_that_would_leave_the_directory_is_refused() {
    let root = fs_root(false);
    let cg = cgroups(TaskCgroups::detect(root.path(), "cgroupfs", None).unwrap());
    let l = cg.limits(&spec(json!({}))).unwrap();
    for bad in ["", "..", "a/b", "../../etc", "x y"] {
        assert!(
            matches!(cg.parent(bad), Err(Error::BadTaskId(_))),
            "{bad:?}"
        );
        assert!(
            matches!(cg.ensure(bad, &l).await, Err(Error::BadTaskId(_))),
            "{bad:?}"
        );
        assert!(
            matches!(cg.remove(bad).await, Err(Error::BadTaskId(_))),
            "{bad:?}"
        );
    }
    assert!(!root.path().join("cpu/ecs").exists());
}

/// Records the slices asked for; `fail` makes every call fail with that text.
#[derive(Default)]
struct FakeSlices {
    calls: Mutex<Vec<(String, String, Vec<SliceProperty>)>>,
    fail: Option<String>,
}

#[async_trait]
impl Slices for FakeSlices {
    async fn start_slice(&self, slice: &str, properties: &[SliceProperty]) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push(("start".into(), slice.into(), properties.to_vec()));
        self.fail.clone().map_or(Ok(()), Err)
    }
    async fn stop_slice(&self, slice: &str) -> Result<(), String> {
        self.calls
            .lock()
            .unwrap()
            .push(("stop".into(), slice.into(), vec![]));
        self.fail.clone().map_or(Ok(()), Err)
    }
}

#[tokio::test]
async fn the_systemd_driver_gets_a_transient_slice_with_the_limits() {
    for v2 in [true, false] {
        let root = fs_root(v2);
        let fake = Arc::new(FakeSlices::default());
        let layout = TaskCgroups::detect(root.path(), "systemd", Some(fake.clone())).unwrap();
        assert!(
            matches!(layout, Layout::Systemd { v2: x, .. } if x == v2),
            "{layout:?}"
        );
        let cg = cgroups(layout);
        assert_eq!(cg.parent("abc").unwrap(), "ecstasks-abc.slice");
        let quota = cg
            .limits(&spec(json!({"cpu": 0.5, "memory": 128})))
            .unwrap();
        cg.ensure("abc", &quota).await.unwrap();
        let shares = cg.limits(&spec(json!({}))).unwrap();
        cg.ensure("def", &shares).await.unwrap();
        cg.remove("abc").await.unwrap();
        let calls = fake.calls.lock().unwrap().clone();
        let desc = |id: &str| SliceProperty::Description(format!("ECS task {id} (ecs-hostd)"));
        assert_eq!(
            calls,
            vec![
                (
                    "start".into(),
                    "ecstasks-abc.slice".into(),
                    vec![
                        desc("abc"),
                        SliceProperty::CpuQuotaPerSecUsec(500_000),
                        SliceProperty::CpuQuotaPeriodUsec(100_000),
                        SliceProperty::MemoryMax(128 * 1024 * 1024),
                        SliceProperty::TasksMax(64),
                    ]
                ),
                (
                    "start".into(),
                    "ecstasks-def.slice".into(),
                    vec![
                        desc("def"),
                        if v2 {
                            SliceProperty::CpuWeight(4)
                        } else {
                            SliceProperty::CpuShares(102)
                        },
                        SliceProperty::TasksMax(64),
                    ]
                ),
                ("stop".into(), "ecstasks-abc.slice".into(), vec![]),
            ]
        );
        // Nothing is written to the hierarchy by hand.
        assert!(!root.path().join("ecstasks").exists());
        assert!(!root.path().join("cpu/ecs").exists());
    }
}

#[tokio::test]
async fn a_systemd_refusal_names_the_slice() {
    let root = fs_root(true);
    let fake = Arc::new(FakeSlices {
        fail: Some("org.freedesktop.DBus.Error.AccessDenied: no".into()),
        ..FakeSlices::default()
    });
    let cg = cgroups(TaskCgroups::detect(root.path(), "systemd", Some(fake)).unwrap());
    let l = cg.limits(&spec(json!({}))).unwrap();
    let e = cg.ensure("abc", &l).await.unwrap_err().to_string();
    assert!(
        e.contains("ecstasks-abc.slice") && e.contains("AccessDenied"),
        "{e}"
    );
}

#[test]
fn shares_map_to_weights_as_runc_does() {
    assert_eq!(shares_to_weight(2), 1);
    assert_eq!(shares_to_weight(1024), 39);
    assert_eq!(shares_to_weight(262_144), 10_000);
    assert_eq!(shares_to_weight(0), 1);
}
