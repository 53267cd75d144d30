//! Unit tests: parsers on recorded text, the reader on temporary cgroup v1 and v2 trees, the TCS
//! formulas and sets on made-up samples, Docker's JSON shape, `/metrics`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::cgroup::Sample;
use super::parse::{self, BlkEntry, IfCounters};
use super::sets::{self, Point};
use super::*;
use crate::api::MetricsSection;

const ID_A: &str = "3c1d5e9f0a7b4c2d8e6f1a3b5c7d9e0f2a4b6c8d0e1f3a5b7c9d1e3f5a7b9c1d";
const ID_B: &str = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b";
const MEM_TOTAL: u64 = 24_683_772 * 1024;

const PROC_STAT: &str = "cpu  813692 20189 132742 701180 6060 0 1534 502 0 0\n\
cpu0 390166 8498 62501 374230 1898 0 297 245 0 0\n\
cpu1 423525 11691 70241 326950 4161 0 1236 257 0 0\n\
intr 123 0 0\nctxt 456\n";

const NET_DEV: &str = "Inter-|   Receive                                                |  Transmit\n \
face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
lo:     100       1    0    0    0     0          0         0      100       1    0    0    0     0       0          0\n  \
eth0:     806       9    1    2    0     0          0         0      500       5    3    4    0     0       0          0\n \
tunl0:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0\n";

const V1_MEMORY_STAT: &str = "cache 483328\nrss 61440\ninactive_file 139264\ntotal_cache 483328\n";
const V2_MEMORY_STAT: &str =
    "anon 1048576\nfile 4194304\ninactive_file 3145728\nactive_file 1048576\n";

fn at(secs: u64, ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(ms)
}

/// A temporary `/sys/fs/cgroup` and `/proc`.
struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn new() -> Tree {
        let t = Tree {
            dir: tempfile::tempdir().unwrap(),
        };
        t.write("proc/stat", PROC_STAT);
        t.write(
            "proc/meminfo",
            "MemTotal:       24683772 kB\nMemFree: 1 kB\n",
        );
        t
    }

    /// Hybrid v1 as on the test VMs: one mount per controller, an empty `cpu,cpuacct`
    /// directory, `unified` mounted without controllers.
    fn v1() -> Tree {
        let t = Tree::new();
        for c in ["cpuacct", "cpu", "memory", "blkio", "pids"] {
            t.write(&format!("cgroup/{c}/cgroup.procs"), "1\n");
        }
        std::fs::create_dir_all(t.cgroup().join("cpu,cpuacct")).unwrap();
        t.write("cgroup/unified/cgroup.controllers", "");
        t
    }

    fn v2() -> Tree {
        let t = Tree::new();
        t.write("cgroup/cgroup.controllers", "cpu io memory pids\n");
        t
    }

    fn cgroup(&self) -> PathBuf {
        self.dir.path().join("cgroup")
    }

    fn proc(&self) -> PathBuf {
        self.dir.path().join("proc")
    }

    fn collector(&self) -> Collector {
        Collector::new(self.cgroup(), self.proc())
    }

    fn write(&self, rel: &str, text: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn remove(&self, rel: &str) {
        std::fs::remove_file(self.dir.path().join(rel)).unwrap();
    }

    /// A v1 container at `rel` (relative to each controller) whose process is `pid`.
    fn v1_container(&self, rel: &str, pid: u32, percpu: (u64, u64)) {
        let c = |ctrl: &str, file: &str, text: &str| {
            self.write(&format!("cgroup/{ctrl}/{rel}/{file}"), text);
        };
        c(
            "cpuacct",
            "cpuacct.usage_percpu",
            &format!("{} {} \n", percpu.0, percpu.1),
        );
        c("cpuacct", "cpuacct.stat", "user 139\nsystem 16\n");
        c("cpuacct", "cgroup.procs", &format!("{pid}\n"));
        c(
            "cpu",
            "cpu.stat",
            "nr_periods 32\nnr_throttled 30\nthrottled_time 2354444055\nnr_bursts 0\nburst_time 0\n",
        );
        c("memory", "memory.usage_in_bytes", "68157440\n");
        c("memory", "memory.max_usage_in_bytes", "68853760\n");
        c("memory", "memory.limit_in_bytes", "9223372036854771712\n");
        c("memory", "memory.stat", V1_MEMORY_STAT);
        c("memory", "cgroup.procs", &format!("{pid}\n7\n"));
        c(
            "blkio",
            "blkio.throttle.io_service_bytes_recursive",
            "8:0 Read 4096\n8:0 Write 8192\n8:0 Sync 0\n8:0 Async 12288\n8:0 Discard 0\n8:0 Total 12288\n\
             8:16 Read 1000\n8:16 Write 0\nTotal 13288\n",
        );
        c("pids", "pids.current", "3\n");
        self.write(&format!("proc/{pid}/net/dev"), NET_DEV);
    }

    /// A v2 container at `rel` whose process is `pid`.
    fn v2_container(&self, rel: &str, pid: u32, usage_usec: u64) {
        let c = |file: &str, text: &str| self.write(&format!("cgroup/{rel}/{file}"), text);
        c(
            "cpu.stat",
            &format!(
                "usage_usec {usage_usec}\nuser_usec 1500\nsystem_usec 500\nnr_periods 10\nnr_throttled 4\nthrottled_usec 700\n"
            ),
        );
        c("memory.current", "8388608\n");
        c("memory.max", "max\n");
        c("memory.stat", V2_MEMORY_STAT);
        c(
            "io.stat",
            "8:0 rbytes=4096 wbytes=512 rios=1 wios=1 dbytes=0 dios=0\n259:0 rbytes=100 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
        );
        c("pids.current", "2\n");
        c("cgroup.procs", &format!("{pid}\n"));
        self.write(&format!("proc/{pid}/net/dev"), NET_DEV);
    }
}

fn running(id: &str, name: &str) -> Running {
    Running {
        docker_id: id.into(),
        name: name.into(),
        started_at: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Parsers

#[test]
fn proc_stat_gives_the_first_seven_columns_in_ns_and_counts_cpu_lines() {
    let (system, online) = parse::proc_stat(PROC_STAT).unwrap();
    let ticks = 813_692 + 20_189 + 132_742 + 701_180 + 6060 + 1534;
    assert_eq!(system, ticks * 10_000_000);
    assert_eq!(online, 2);
    assert_eq!(parse::proc_stat("intr 1\n"), None);
}

#[test]
fn keyed_files_single_values_and_limits() {
    let [u, s, x] = parse::keyed("user 139\nsystem 16\n", ["user", "system", "nice"]);
    assert_eq!((u, s, x), (Some(139), Some(16), None));
    assert_eq!(parse::keyed(V1_MEMORY_STAT, ["cache"])[0], Some(483_328));
    // A key that is a prefix of another is not confused with it.
    assert_eq!(
        parse::keyed("total_cache 5\ncache 7\n", ["cache"])[0],
        Some(7)
    );
    assert_eq!(parse::single(" 42\n"), Some(42));
    assert_eq!(parse::single("x"), None);
    assert_eq!(parse::limit("max\n"), Some(u64::MAX));
    assert_eq!(parse::limit("1048576\n"), Some(1_048_576));
    assert_eq!(
        parse::mem_total("MemTotal:       24683772 kB\n"),
        Some(MEM_TOTAL)
    );
    assert_eq!(parse::first_pid("\n4242\n7\n"), Some(4242));
    assert_eq!(parse::first_pid(""), None);
}

#[test]
fn percpu_sums_and_keeps_each_cpu() {
    let mut v = Vec::new();
    assert_eq!(
        parse::percpu("813550820 744643635 \n", &mut v),
        Some(1_558_194_455)
    );
    assert_eq!(v, [813_550_820, 744_643_635]);
    assert_eq!(parse::percpu("\n", &mut Vec::new()), None);
}

#[test]
fn blkio_v1_sums_read_and_write_and_skips_the_total_line() {
    let mut e = Vec::new();
    let (r, w) = parse::blkio_v1(
        "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\n8:16 Read 1000\nTotal 13288\n",
        &mut e,
    );
    assert_eq!((r, w), (5096, 8192));
    assert_eq!(e.len(), 4);
    assert_eq!(
        e[0],
        BlkEntry {
            major: 8,
            minor: 0,
            op: "Read",
            value: 4096
        }
    );
    let (r, w) = parse::blkio_v1("Total 0\n", &mut Vec::new());
    assert_eq!((r, w), (0, 0));
}

#[test]
fn io_stat_v2_gives_a_read_and_a_write_entry_per_device() {
    let mut e = Vec::new();
    let (r, w) = parse::io_stat_v2(
        "8:0 rbytes=4096 wbytes=512 rios=1 wios=1\n259:0 rbytes=100 wbytes=0\n",
        &mut e,
    );
    assert_eq!((r, w), (4196, 512));
    assert_eq!(e.len(), 4);
    assert_eq!((e[1].op, e[1].value), ("write", 512));
    assert_eq!((e[2].major, e[2].minor, e[2].op), (259, 0, "read"));
}

#[test]
fn net_dev_skips_loopback_and_fallback_tunnels() {
    let mut ifs = Vec::new();
    parse::net_dev(NET_DEV, &mut ifs);
    assert_eq!(ifs.len(), 1);
    assert_eq!(ifs[0].0, "eth0");
    assert_eq!(
        ifs[0].1,
        IfCounters {
            rx_bytes: 806,
            rx_packets: 9,
            rx_errors: 1,
            rx_dropped: 2,
            tx_bytes: 500,
            tx_packets: 5,
            tx_errors: 3,
            tx_dropped: 4,
        }
    );
    // Wide counters leave no space after the colon.
    let mut ifs = Vec::new();
    parse::net_dev(
        "h\nh\n  eth1:12345678901 2 0 0 0 0 0 0 7 1 0 0 0 0 0 0\n",
        &mut ifs,
    );
    assert_eq!(ifs[0].1.rx_bytes, 12_345_678_901);
    assert_eq!(ifs[0].1.tx_bytes, 7);
}

// ---------------------------------------------------------------------------------------------
// Layout and places

#[test]
fn layout_v1_hybrid_skips_the_empty_combined_directory_and_the_unified_mount() {
    let t = Tree::v1();
    let c = t.collector();
    let Layout::V1 {
        cpuacct,
        cpu,
        memory,
        blkio,
        pids,
        blkio_cfq,
    } = c.layout().clone()
    else {
        panic!("not v1: {:?}", c.layout());
    };
    assert_eq!(cpuacct, Some(t.cgroup().join("cpuacct")));
    assert_eq!(cpu, Some(t.cgroup().join("cpu")));
    assert_eq!(memory, Some(t.cgroup().join("memory")));
    assert_eq!(blkio, Some(t.cgroup().join("blkio")));
    assert_eq!(pids, Some(t.cgroup().join("pids")));
    assert!(!blkio_cfq);
}

#[test]
fn layout_v1_with_cpu_and_cpuacct_comounted() {
    let t = Tree::new();
    for c in ["cpu,cpuacct", "memory"] {
        t.write(&format!("cgroup/{c}/cgroup.procs"), "");
    }
    let Layout::V1 { cpuacct, cpu, .. } = Layout::detect(&t.cgroup()) else {
        panic!()
    };
    assert_eq!(cpuacct, Some(t.cgroup().join("cpu,cpuacct")));
    assert_eq!(cpu, Some(t.cgroup().join("cpu,cpuacct")));
}

#[test]
fn layout_v2_when_the_root_has_cgroup_controllers() {
    assert_eq!(*Tree::v2().collector().layout(), Layout::V2);
}

#[test]
fn v1_cgroupfs_container_reads_every_counter_docker_reports() {
    let t = Tree::v1();
    t.v1_container(&format!("docker/{ID_A}"), 4242, (813_550_820, 744_643_635));
    let mut c = t.collector();
    c.sample(&[running(ID_A, "web")], at(1_782_907_200, 123));
    assert_eq!(
        c.cgroup_of(ID_A),
        Some(Path::new("docker").join(ID_A)),
        "the cgroupfs driver's place"
    );
    let j = c.docker_stats(ID_A).unwrap();
    assert_eq!(j["name"], "/web");
    assert_eq!(j["id"], ID_A);
    assert_eq!(j["preread"], "0001-01-01T00:00:00Z");
    assert!(
        j["read"]
            .as_str()
            .unwrap()
            .starts_with("2026-07-01T12:00:00.123")
    );
    assert_eq!(j["num_procs"], 0);
    assert_eq!(j["pids_stats"], json!({"current": 3}));
    let cpu = &j["cpu_stats"];
    assert_eq!(cpu["cpu_usage"]["total_usage"], 1_558_194_455u64);
    assert_eq!(
        cpu["cpu_usage"]["percpu_usage"],
        json!([813_550_820u64, 744_643_635u64])
    );
    assert_eq!(cpu["cpu_usage"]["usage_in_usermode"], 1_390_000_000u64);
    assert_eq!(cpu["cpu_usage"]["usage_in_kernelmode"], 160_000_000u64);
    let (system, _) = parse::proc_stat(PROC_STAT).unwrap();
    assert_eq!(cpu["system_cpu_usage"], system);
    assert_eq!(cpu["online_cpus"], 2);
    assert_eq!(
        cpu["throttling_data"],
        json!({"periods": 32, "throttled_periods": 30, "throttled_time": 2_354_444_055u64})
    );
    assert_eq!(
        j["precpu_stats"],
        json!({"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
               "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}})
    );
    let mem = &j["memory_stats"];
    assert_eq!(mem["usage"], 68_157_440);
    assert_eq!(mem["max_usage"], 68_853_760);
    assert_eq!(mem["limit"], MEM_TOTAL, "no limit: the host's memory");
    assert_eq!(mem["stats"]["cache"], 483_328);
    assert_eq!(mem["stats"]["total_cache"], 483_328);
    let blk = j["blkio_stats"]["io_service_bytes_recursive"]
        .as_array()
        .unwrap();
    assert_eq!(blk.len(), 8, "every device line, not the last Total");
    assert_eq!(
        blk[0],
        json!({"major": 8, "minor": 0, "op": "Read", "value": 4096})
    );
    assert_eq!(
        j["networks"],
        json!({"eth0": {"rx_bytes": 806, "rx_packets": 9, "rx_errors": 1, "rx_dropped": 2,
                        "tx_bytes": 500, "tx_packets": 5, "tx_errors": 3, "tx_dropped": 4}})
    );
    // It parses as Docker's type.
    let parsed: bollard::models::ContainerStatsResponse = serde_json::from_value(j).unwrap();
    assert_eq!(
        parsed.cpu_stats.unwrap().cpu_usage.unwrap().total_usage,
        Some(1_558_194_455)
    );
}

#[test]
fn v1_round_costs_ten_reads_a_container_plus_proc_stat() {
    let t = Tree::v1();
    t.v1_container(&format!("docker/{ID_A}"), 4242, (1, 2));
    t.v1_container(&format!("docker/{ID_B}"), 4343, (1, 2));
    let mut c = t.collector();
    let both = [running(ID_A, "a"), running(ID_B, "b")];
    c.sample(&both, at(100, 0));
    // /proc/stat, /proc/meminfo (once), 10 a container, cgroup.procs once a container.
    assert_eq!(c.reads(), 2 + 2 * 11);
    c.sample(&both, at(105, 0));
    assert_eq!(c.reads() - 24, 1 + 2 * 10);
    let counters = c.counters();
    assert_eq!(
        counters
            .last_round_reads
            .load(std::sync::atomic::Ordering::Relaxed),
        21
    );
    // Nothing running: nothing read.
    c.sample(&[], at(110, 0));
    assert_eq!(c.reads(), 24 + 21);
}

#[test]
fn v2_systemd_scope_container() {
    let t = Tree::v2();
    let rel = format!("system.slice/docker-{ID_A}.scope");
    t.v2_container(&rel, 77, 2000);
    let mut c = t.collector();
    c.sample(&[running(ID_A, "/api")], at(1000, 0));
    assert_eq!(c.cgroup_of(ID_A), Some(PathBuf::from(&rel)));
    let j = c.docker_stats(ID_A).unwrap();
    assert_eq!(j["name"], "/api", "one leading slash");
    let cpu = &j["cpu_stats"]["cpu_usage"];
    assert_eq!(cpu["total_usage"], 2_000_000);
    assert_eq!(cpu["usage_in_usermode"], 1_500_000);
    assert_eq!(cpu["usage_in_kernelmode"], 500_000);
    assert!(cpu.get("percpu_usage").is_none(), "no per-CPU data on v2");
    assert_eq!(
        j["cpu_stats"]["throttling_data"],
        json!({"periods": 10, "throttled_periods": 4, "throttled_time": 700_000})
    );
    let mem = &j["memory_stats"];
    assert_eq!(mem["usage"], 8_388_608);
    assert_eq!(mem["limit"], MEM_TOTAL, "memory.max `max`");
    assert!(mem.get("max_usage").is_none());
    assert_eq!(mem["stats"]["inactive_file"], 3_145_728);
    assert_eq!(
        j["blkio_stats"]["io_service_bytes_recursive"],
        json!([
            {"major": 8, "minor": 0, "op": "read", "value": 4096},
            {"major": 8, "minor": 0, "op": "write", "value": 512},
            {"major": 259, "minor": 0, "op": "read", "value": 100},
            {"major": 259, "minor": 0, "op": "write", "value": 0},
        ])
    );
    assert_eq!(j["pids_stats"]["current"], 2);
    assert_eq!(j["networks"]["eth0"]["rx_bytes"], 806);

    // TCS memory is usage less inactive_file: 8 MiB − 3 MiB.
    t.v2_container(&rel, 77, 3000);
    c.sample(&[running(ID_A, "/api")], at(1005, 0));
    let s = c.sets(ID_A, true).unwrap();
    assert_eq!(s.memory_stats_set.max, 5.0);
    let st = s.storage_stats_set.unwrap();
    assert_eq!(st.read_size_bytes.unwrap().max, 4196);
    assert_eq!(st.write_size_bytes.unwrap().max, 512);
}

#[test]
fn v2_container_under_a_cgroup_parent_is_found_by_search_and_cached() {
    let t = Tree::v2();
    let rel = format!("ecs/5b0f6f0e1c3a4d229c534f7f3c1d2a10/{ID_A}");
    t.v2_container(&rel, 77, 2000);
    // Unrelated siblings are not mistaken for it.
    t.write(
        &format!("cgroup/ecs/other/{ID_B}/cpu.stat"),
        "usage_usec 1\n",
    );
    t.write("cgroup/user.slice/cgroup.procs", "");
    let mut c = t.collector();
    c.sample(&[running(ID_A, "a")], at(1000, 0));
    assert_eq!(c.cgroup_of(ID_A), Some(PathBuf::from(&rel)));
    assert!(c.docker_stats(ID_A).is_some());
    let searches = || {
        c.counters()
            .searches
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(searches(), 1);
    c.sample(&[running(ID_A, "a")], at(1005, 0));
    assert_eq!(
        c.counters()
            .searches
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "cached: no second search"
    );
}

#[test]
fn v1_container_under_a_cgroup_parent_is_found_by_search() {
    let t = Tree::v1();
    let rel = format!("ecs/9a8b7c/{ID_A}");
    t.v1_container(&rel, 4242, (10, 20));
    let mut c = t.collector();
    c.sample(&[running(ID_A, "a")], at(1000, 0));
    assert_eq!(c.cgroup_of(ID_A), Some(PathBuf::from(&rel)));
    assert_eq!(
        c.docker_stats(ID_A).unwrap()["cpu_stats"]["cpu_usage"]["total_usage"],
        30
    );
}

#[test]
fn a_container_not_found_is_searched_for_again_only_after_some_rounds() {
    let t = Tree::v2();
    let mut c = t.collector();
    let searches = |c: &Collector| {
        c.counters()
            .searches
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    c.sample(&[running(ID_A, "a")], at(1000, 0));
    assert_eq!(searches(&c), 1);
    assert!(c.tracks(ID_A));
    assert!(c.docker_stats(ID_A).is_none(), "tracked, no sample");
    for i in 1..cgroup::SEARCH_AGAIN_ROUNDS {
        c.sample(&[running(ID_A, "a")], at(1000 + i, 0));
    }
    assert_eq!(searches(&c), 1);
    t.v2_container(&format!("odd/{ID_A}"), 77, 1);
    c.sample(&[running(ID_A, "a")], at(1100, 0));
    assert_eq!(searches(&c), 2);
    assert!(c.docker_stats(ID_A).is_some());
}

#[test]
fn a_container_that_vanishes_mid_read_has_no_sample_and_the_others_do() {
    let t = Tree::v1();
    t.v1_container(&format!("docker/{ID_A}"), 4242, (1, 2));
    t.v1_container(&format!("docker/{ID_B}"), 4343, (1, 2));
    // B's CPU file is still there, its memory cgroup is already gone.
    t.remove(&format!(
        "cgroup/memory/docker/{ID_B}/memory.usage_in_bytes"
    ));
    let mut c = t.collector();
    let both = [running(ID_A, "a"), running(ID_B, "b")];
    c.sample(&both, at(100, 0));
    assert!(c.docker_stats(ID_A).is_some());
    assert!(c.docker_stats(ID_B).is_none());
    assert!(c.tracks(ID_B));
    assert_eq!(c.cgroup_of(ID_B), None, "its place is looked up again");
    c.sample(&both, at(105, 0));
    assert!(c.sets(ID_A, true).is_ok());
    assert!(matches!(
        c.sets(ID_B, true),
        Err(SetError::TooFewSamples { have: 0, .. })
    ));
}

#[test]
fn ids_not_running_are_forgotten() {
    let t = Tree::v1();
    t.v1_container(&format!("docker/{ID_A}"), 4242, (1, 2));
    let mut c = t.collector();
    c.sample(&[running(ID_A, "a")], at(100, 0));
    assert!(c.tracks(ID_A));
    c.sample(&[], at(105, 0));
    assert!(!c.tracks(ID_A));
    assert!(c.docker_stats(ID_A).is_none());
    assert_eq!(c.sets(ID_A, false), Err(SetError::NotSampled));
    assert!(SetError::NotSampled.is_quiet());
    assert_eq!(c.cgroup_of(ID_A), None);
}

#[test]
fn a_container_on_the_host_network_has_no_networks() {
    let t = Tree::v1();
    t.v1_container(&format!("docker/{ID_A}"), 4242, (1, 2));
    t.v1_container(&format!("docker/{ID_B}"), 4343, (1, 2));
    std::fs::create_dir_all(t.proc().join("self/ns")).unwrap();
    std::fs::create_dir_all(t.proc().join("4242/ns")).unwrap();
    std::fs::create_dir_all(t.proc().join("4343/ns")).unwrap();
    std::os::unix::fs::symlink("net:[4026531840]", t.proc().join("self/ns/net")).unwrap();
    std::os::unix::fs::symlink("net:[4026531840]", t.proc().join("4242/ns/net")).unwrap();
    std::os::unix::fs::symlink("net:[4026532999]", t.proc().join("4343/ns/net")).unwrap();
    let mut c = t.collector();
    c.sample(&[running(ID_A, "a"), running(ID_B, "b")], at(100, 0));
    assert!(c.docker_stats(ID_A).unwrap().get("networks").is_none());
    assert!(c.docker_stats(ID_B).unwrap().get("networks").is_some());
}

#[test]
fn a_gone_process_is_replaced_by_the_next_of_cgroup_procs() {
    let t = Tree::v1();
    t.v1_container(&format!("docker/{ID_A}"), 4242, (1, 2));
    let mut c = t.collector();
    c.sample(&[running(ID_A, "a")], at(100, 0));
    std::fs::remove_dir_all(t.proc().join("4242")).unwrap();
    t.write(
        &format!("cgroup/memory/docker/{ID_A}/cgroup.procs"),
        "5151\n",
    );
    t.write("proc/5151/net/dev", &NET_DEV.replace("806", "999"));
    c.sample(&[running(ID_A, "a")], at(105, 0));
    assert_eq!(
        c.docker_stats(ID_A).unwrap()["networks"]["eth0"]["rx_bytes"],
        999
    );
}

// ---------------------------------------------------------------------------------------------
// TCS formulas and sets

fn sample(t_ms: u64, cpu_total: u64) -> Sample {
    Sample {
        read_ns: t_ms * 1_000_000,
        cpu_total,
        online_cpus: 2,
        mem_usage: 100 << 20,
        mem_reclaimable: Some(30 << 20),
        blk_read: 4096,
        blk_write: 512,
        net: Some(vec![(
            "eth0".into(),
            IfCounters {
                rx_bytes: t_ms,
                tx_bytes: 2 * t_ms,
                ..IfCounters::default()
            },
        )]),
        ..Sample::default()
    }
}

fn ring_of(samples: &[Sample]) -> VecDeque<Point> {
    let mut ring: VecDeque<Point> = VecDeque::new();
    let mut last: Option<&Sample> = None;
    for s in samples {
        let p = sets::point(last.zip(ring.back()), s);
        ring.push_back(p);
        last = Some(s);
    }
    ring
}

#[test]
fn cpu_percent_is_100_times_the_per_cpu_delta_over_wall_time_and_nan_first() {
    // One CPU's worth of a 2-CPU host over 1 s: 1e9 ns of CPU → 50 %.
    let ring = ring_of(&[
        sample(1000, 0),
        sample(2000, 1_000_000_000),
        sample(2000, 1_500_000_000), // duplicate timestamp: the previous value again
        sample(3000, 1_600_000_000), // 0.1e9 / 2 over 1 s: 5 %
        sample(4000, 100),           // went backwards (restarted): NaN
    ]);
    assert!(ring[0].cpu_percent.is_nan());
    assert_eq!(ring[1].cpu_percent, 50.0);
    assert_eq!(ring[2].cpu_percent, 50.0);
    assert!((ring[3].cpu_percent - 5.0).abs() < 1e-9);
    assert!(ring[4].cpu_percent.is_nan());
    let set = sets::cw_set(&ring, "cpu", false, |p| p.cpu_percent).unwrap();
    assert_eq!(set.sample_count, 3, "NaNs are not counted");
    assert_eq!(set.max, 50.0);
    assert!((set.min - 5.0).abs() < 1e-9);
    assert!((set.sum - 105.0).abs() < 1e-9);
}

#[test]
fn memory_subtracts_cache_only_when_smaller_than_usage() {
    let mut s = sample(1000, 0);
    assert_eq!(sets::point(None, &s).memory_mib, 70);
    s.mem_reclaimable = Some(200 << 20);
    assert_eq!(sets::point(None, &s).memory_mib, 100);
    s.mem_reclaimable = None;
    s.mem_usage = (3 << 20) - 1;
    assert_eq!(sets::point(None, &s).memory_mib, 2, "integer MiB");
}

#[test]
fn byte_rates_are_per_second_and_nan_first() {
    let ring = ring_of(&[sample(1000, 0), sample(3000, 0)]);
    let n0 = ring[0].net.unwrap();
    assert!(n0.rx_bps.is_nan() && n0.tx_bps.is_nan());
    let n1 = ring[1].net.unwrap();
    assert_eq!(n1.rx_bps, 1000.0, "2000 bytes over 2 s");
    assert_eq!(n1.tx_bps, 2000.0);
    assert_eq!(n1.counters.rx_bytes, 3000);
}

#[test]
fn values_above_i64_max_go_to_the_overflow_fields() {
    assert_eq!(sets::with_overflow(5), (5, 0));
    assert_eq!(sets::with_overflow(i64::MAX as u128), (i64::MAX, 0));
    assert_eq!(sets::with_overflow(i64::MAX as u128 + 7), (i64::MAX, 7));
    assert_eq!(sets::with_overflow(u64::MAX as u128), (i64::MAX, 1));
    let mut a = sample(1000, 0);
    a.blk_read = u64::MAX;
    let mut b = sample(2000, 0);
    b.blk_read = 10;
    let set = sets::ulong_set(&ring_of(&[a, b]), "read", false, |p| p.read_bytes).unwrap();
    assert_eq!((set.max, set.overflow_max), (i64::MAX, 1));
    assert_eq!((set.min, set.overflow_min), (10, 0));
    // Sum 2^64 + 9 = 2·(2^63−1) + 11: capped, remainder 11 (no wrap).
    assert_eq!((set.sum, set.overflow_sum), (i64::MAX, 11));
    assert_eq!(set.sample_count, 2);
}

#[test]
fn sets_need_two_samples_and_an_unsent_value_and_mark_sent_consumes_them() {
    let t = Tree::v1();
    let rel = format!("docker/{ID_A}");
    t.v1_container(&rel, 4242, (0, 0));
    let mut c = t.collector();
    let r = [running(ID_A, "a")];
    c.sample(&r, at(100, 0));
    let e = c.sets(ID_A, true).unwrap_err();
    assert!(matches!(
        e,
        SetError::TooFewSamples {
            have: 1,
            young: true,
            ..
        }
    ));
    assert!(e.is_quiet(), "first seen just now: within the grace period");

    t.v1_container(&rel, 4242, (1_000_000_000, 0));
    c.sample(&r, at(101, 0));
    let s = c.sets(ID_A, true).unwrap();
    assert_eq!(s.cpu_stats_set.sample_count, 1, "the first is NaN");
    assert_eq!(s.memory_stats_set.sample_count, 2);
    assert_eq!(
        s.storage_stats_set
            .unwrap()
            .read_size_bytes
            .unwrap()
            .sample_count,
        2
    );
    let net = s.network_stats_set.unwrap();
    assert_eq!(net.rx_bytes.unwrap().max, 806);
    assert_eq!(net.rx_bytes_per_second.unwrap().max, 0.0);
    assert!(c.sets(ID_A, false).unwrap().network_stats_set.is_none());

    c.mark_sent();
    let e = c.sets(ID_A, true).unwrap_err();
    assert!(
        matches!(
            e,
            SetError::NoValues {
                set: "cpuStatsSet",
                ..
            }
        ),
        "{e}"
    );
    c.sample(&r, at(102, 0));
    let s = c.sets(ID_A, true).unwrap();
    assert_eq!(s.memory_stats_set.sample_count, 1, "only the unsent one");
    assert_eq!(s.cpu_stats_set.max, 0.0);
}

#[test]
fn errors_after_the_grace_period_are_not_quiet_and_omit_partial_sets() {
    let mut b = book::Book::default();
    let start = at(1000, 0);
    let r = [Running {
        docker_id: ID_A.into(),
        name: "a".into(),
        started_at: Some(start),
    }];
    let round = |s: Sample| cgroup::Round {
        samples: vec![(ID_A.to_owned(), s)],
    };
    let mut s1 = sample(1_000_000 + 40_000, 0);
    s1.net = None;
    b.record(&r, round(s1), at(1040, 0));
    let e = b.sets(ID_A, true).unwrap_err();
    assert!(!e.is_quiet(), "40 s after its start");
    let mut s2 = sample(1_000_000 + 45_000, 10);
    s2.net = None;
    b.record(&r, round(s2), at(1045, 0));
    // No network at all: its rates never have a value, so the set is left out after 30 s.
    let s = b.sets(ID_A, true).unwrap();
    assert!(s.network_stats_set.is_none());
    assert!(s.storage_stats_set.is_some());

    // The same container 10 s after its start: the partial network set is sent.
    let mut young = book::Book::default();
    let r = [Running {
        started_at: Some(at(1035, 0)),
        ..r[0].clone()
    }];
    let mut s1 = sample(1_000_000 + 40_000, 0);
    s1.net = None;
    young.record(&r, round(s1), at(1040, 0));
    let mut s2 = sample(1_000_000 + 45_000, 10);
    s2.net = None;
    young.record(&r, round(s2), at(1045, 0));
    let net = young.sets(ID_A, true).unwrap().network_stats_set.unwrap();
    assert!(net.rx_bytes.is_some());
    assert!(net.rx_bytes_per_second.is_none());
}

#[test]
fn the_ring_keeps_the_newest_points() {
    let mut b = book::Book::default();
    let r = [running(ID_A, "a")];
    for i in 0..(RING_CAPACITY as u64 + 10) {
        b.record(
            &r,
            cgroup::Round {
                samples: vec![(ID_A.to_owned(), sample(1000 * (i + 1), i * 1_000_000))],
            },
            at(i, 0),
        );
    }
    let t = &b.containers[ID_A];
    assert_eq!(t.ring.len(), RING_CAPACITY);
    assert!(
        !t.ring[0].cpu_percent.is_nan(),
        "the NaN first point fell out"
    );
    assert_eq!(
        t.last.as_ref().unwrap().read_ns,
        1000 * (RING_CAPACITY as u64 + 10) * 1_000_000
    );
    assert!(
        std::mem::size_of::<Point>() <= 128,
        "{}",
        std::mem::size_of::<Point>()
    );
}

#[test]
fn container_sets_serialise_as_publish_metrics_request_members() {
    let ring = ring_of(&[sample(1000, 0), sample(2000, 1_000_000_000)]);
    let s = sets::container_sets(&ring, false, false).unwrap();
    assert_eq!(
        serde_json::to_value(&s).unwrap(),
        json!({
            "cpuStatsSet": {"max": 50, "min": 50, "sampleCount": 1, "sum": 50},
            "memoryStatsSet": {"max": 70, "min": 70, "sampleCount": 2, "sum": 140},
            "storageStatsSet": {
                "readSizeBytes": {"max": 4096, "min": 4096, "overflowMax": 0, "overflowMin": 0,
                                  "overflowSum": 0, "sampleCount": 2, "sum": 8192},
                "writeSizeBytes": {"max": 512, "min": 512, "overflowMax": 0, "overflowMin": 0,
                                   "overflowSum": 0, "sampleCount": 2, "sum": 1024}
            }
        })
    );
    // Go writes whole floats without a fraction; others stay as they are.
    let text = serde_json::to_string(&s.cpu_stats_set).unwrap();
    assert_eq!(text, r#"{"max":50,"min":50,"sampleCount":1,"sum":50}"#);
    let odd = CwStatsSet {
        max: 3.25,
        min: 0.5,
        sample_count: 2,
        sum: 3.75,
    };
    assert_eq!(
        serde_json::to_string(&odd).unwrap(),
        r#"{"max":3.25,"min":0.5,"sampleCount":2,"sum":3.75}"#
    );
    let with_net = sets::container_sets(&ring, true, false).unwrap();
    let j = serde_json::to_value(&with_net).unwrap();
    let keys: Vec<&String> = j["networkStatsSet"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 10, "{keys:?}");
    assert_eq!(j["networkStatsSet"]["txBytesPerSecond"]["max"], 2000);
}

// ---------------------------------------------------------------------------------------------
// Docker's JSON, rates, /metrics

#[test]
fn rfc3339_like_go() {
    assert_eq!(docker::rfc3339_nanos(0), "1970-01-01T00:00:00Z");
    assert_eq!(
        docker::rfc3339_nanos(951_782_400_000_000_000),
        "2000-02-29T00:00:00Z"
    );
    assert_eq!(
        docker::rfc3339_nanos(1_782_907_201_123_456_789),
        "2026-07-01T12:00:01.123456789Z"
    );
    assert_eq!(
        docker::rfc3339_nanos(1_782_907_201_500_000_000),
        "2026-07-01T12:00:01.5Z",
        "trailing zeros dropped"
    );
    assert_eq!(
        docker::rfc3339_nanos(4_107_542_399_000_000_001),
        "2100-02-28T23:59:59.000000001Z"
    );
}

#[test]
fn docker_json_has_precpu_from_the_previous_sample_and_network_rates() {
    let t = Tree::v1();
    let rel = format!("docker/{ID_A}");
    t.v1_container(&rel, 4242, (100, 200));
    let mut c = t.collector();
    let r = [running(ID_A, "web")];
    c.sample(&r, at(1_782_907_200, 0));
    assert_eq!(c.network_rate(ID_A), None, "one sample");
    t.v1_container(&rel, 4242, (1000, 2000));
    t.write("proc/4242/net/dev", &NET_DEV.replace("806", "2806"));
    c.sample(&r, at(1_782_907_202, 0));
    let j = c.docker_stats(ID_A).unwrap();
    assert!(
        j["preread"]
            .as_str()
            .unwrap()
            .starts_with("2026-07-01T12:00:00")
    );
    assert!(
        j["read"]
            .as_str()
            .unwrap()
            .starts_with("2026-07-01T12:00:02")
    );
    assert_eq!(j["precpu_stats"]["cpu_usage"]["total_usage"], 300);
    assert_eq!(
        j["precpu_stats"]["cpu_usage"]["percpu_usage"],
        json!([100, 200])
    );
    assert_eq!(j["cpu_stats"]["cpu_usage"]["total_usage"], 3000);
    let rate = c.network_rate(ID_A).unwrap();
    // 2000 bytes in about 2 s (each read time is the round's time plus its offset).
    assert!((rate.rx_bytes_per_sec - 1000.0).abs() < 1.0, "{rate:?}");
    assert_eq!(rate.tx_bytes_per_sec, 0.0);
    assert_eq!(
        serde_json::to_value(rate)
            .unwrap()
            .as_object()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn metrics_section_renders_per_container_series_and_counters() {
    let t = Tree::v1();
    let rel = format!("docker/{ID_A}");
    t.v1_container(&rel, 4242, (0, 0));
    let stats = Stats::new(t.collector());
    let r = [running(ID_A, "/ecs-web-1-web-b2f0")];
    stats.sample(&r, at(100, 0));
    t.v1_container(&rel, 4242, (1_000_000_000, 1_000_000_000));
    stats.sample(&r, at(102, 0));
    let mut out = String::new();
    stats.render(&mut out);
    let labels = format!("name=\"ecs-web-1-web-b2f0\",id=\"{ID_A}\"");
    // 2e9 ns of CPU on 2 CPUs in 2 s: 50 %.
    let cpu_line = out
        .lines()
        .find(|l| l.starts_with(&format!("ecs_hostd_container_cpu_percent{{{labels}}} ")))
        .unwrap_or_else(|| panic!("{out}"));
    let cpu: f64 = cpu_line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((cpu - 50.0).abs() < 0.01, "{cpu_line}");
    assert!(out.contains(&format!(
        "ecs_hostd_container_memory_bytes{{{labels}}} {}\n",
        (68_157_440u64 - 483_328) >> 20 << 20
    )));
    assert!(out.contains(&format!(
        "ecs_hostd_container_cpu_seconds_total{{{labels}}} 2\n"
    )));
    assert!(out.contains(&format!(
        "ecs_hostd_container_network_receive_bytes_total{{{labels}}} 806\n"
    )));
    assert!(out.contains("ecs_hostd_stats_rounds_total 2\n"));
    assert!(out.contains(&format!(
        "ecs_hostd_stats_file_reads_total {}\n",
        stats.reads()
    )));
    for line in out.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        assert!(out.contains(&format!("# TYPE {name} ")), "{name}");
    }
}

#[tokio::test(start_paused = true)]
async fn run_samples_on_each_tick_and_stops_when_cancelled() {
    let t = Tree::v1();
    t.v1_container(&format!("docker/{ID_A}"), 4242, (0, 0));
    let stats = Stats::new(t.collector());
    let cancel = tokio_util::sync::CancellationToken::new();
    let (targets, _set) = Shared::new(vec![running(ID_A, "a")]);
    let task = tokio::spawn(run(
        stats.clone(),
        Duration::from_secs(5),
        targets,
        cancel.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(11)).await;
    let rounds = stats
        .counters()
        .rounds
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!((2..=4).contains(&rounds), "{rounds}");
    assert!(stats.tracks(ID_A));
    let sets = stats.sets(ID_A, false).unwrap();
    assert_eq!(sets.cpu_stats_set.max, 0.0, "the counters did not move");
    cancel.cancel();
    task.await.unwrap();
}

/// Targets the test changes through a watch channel, counting how often the collector asks.
struct Shared {
    rx: tokio::sync::watch::Receiver<Vec<Running>>,
    asked: Arc<std::sync::atomic::AtomicU64>,
}

impl Shared {
    fn new(initial: Vec<Running>) -> (Shared, tokio::sync::watch::Sender<Vec<Running>>) {
        let (tx, rx) = tokio::sync::watch::channel(initial);
        let asked = Arc::new(std::sync::atomic::AtomicU64::new(0));
        (Shared { rx, asked }, tx)
    }
}

impl Targets for Shared {
    fn running(&self) -> Vec<Running> {
        self.asked
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.rx.borrow().clone()
    }

    async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

/// Issue 23: with nothing running the collector neither ticks nor reads; a change wakes it and
/// it samples at once, then ticks again while something runs.
#[tokio::test(start_paused = true)]
async fn an_idle_collector_waits_for_a_change_instead_of_ticking() {
    let t = Tree::v1();
    t.v1_container(&format!("docker/{ID_A}"), 4242, (0, 0));
    let stats = Stats::new(t.collector());
    let cancel = tokio_util::sync::CancellationToken::new();
    let (targets, set) = Shared::new(Vec::new());
    let asked = targets.asked.clone();
    let task = tokio::spawn(run(
        stats.clone(),
        Duration::from_secs(5),
        targets,
        cancel.clone(),
    ));
    let rounds = || {
        stats
            .counters()
            .rounds
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    tokio::time::sleep(Duration::from_secs(60)).await;
    // Twelve ticks' worth of time: asked once (the first tick), no round, no timer left.
    assert_eq!(asked.load(std::sync::atomic::Ordering::Relaxed), 1);
    assert_eq!(rounds(), 0);
    set.send_replace(vec![running(ID_A, "a")]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(rounds(), 1, "a change is sampled at once");
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert!((3..=4).contains(&rounds()), "{}", rounds());
    cancel.cancel();
    task.await.unwrap();
}
