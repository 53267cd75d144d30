//! Resource accounting (design.md resolution 9): a task is admitted (may pull, create, start)
//! only when its CPU, memory and static host ports fit beside the tasks already holding
//! resources; otherwise it waits as PENDING, first come first served, until resources free up.
//! Reserved ports (`ECS_RESERVED_PORTS[_UDP]`) count as taken.
//!
//! Also picks dynamic host ports from `ECS_DYNAMIC_HOST_PORT_RANGE` when one is configured.
//! Pure except [`port_is_free`], which probes the host with a bind. A task that can never fit
//! (more CPU or memory than the instance registered, a reserved host port, one host port asked
//! twice) is told apart ([`Wait::never_fits`]): the engine stops it with that reason rather than
//! leaving it PENDING for ever.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use crate::engine::model::{TaskRecord, TaskStatus};

/// What the instance registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// CPU units (CPUs × 1024).
    pub cpu_units: u64,
    /// Memory, MiB (after `ECS_RESERVED_MEMORY`).
    pub memory_mib: u64,
    /// Reserved TCP ports.
    pub reserved_tcp: BTreeSet<u16>,
    /// Reserved UDP ports.
    pub reserved_udp: BTreeSet<u16>,
}

/// Why a task waits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Not enough CPU units.
    Cpu {
        /// Needed.
        need: u64,
        /// Free.
        free: u64,
    },
    /// Not enough memory.
    Memory {
        /// Needed, MiB.
        need: u64,
        /// Free, MiB.
        free: u64,
    },
    /// A host port is taken by another task.
    Port(u16, String),
    /// It can never fit here, and why.
    Never(String),
}

impl Wait {
    /// Whether no amount of waiting admits the task.
    pub fn never_fits(&self) -> bool {
        matches!(self, Wait::Never(_))
    }
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wait::Cpu { need, free } => write!(f, "needs {need} CPU units, {free} free"),
            Wait::Memory { need, free } => write!(f, "needs {need} MiB of memory, {free} free"),
            Wait::Port(p, proto) => write!(f, "host port {p}/{proto} is in use"),
            Wait::Never(why) => f.write_str(why),
        }
    }
}

/// Decides which waiting tasks are admitted now, in delivery order. Returns the ARNs admitted
/// and, for the others that want to run, why they wait. A task that does not fit does not block
/// smaller ones behind it... except that order is kept among tasks that do fit.
pub fn admit<'a>(
    tasks: impl IntoIterator<Item = &'a TaskRecord>,
    cap: &Capacity,
) -> (Vec<String>, BTreeMap<String, Wait>) {
    let mut all: Vec<&TaskRecord> = tasks.into_iter().collect();
    all.sort_by_key(|t| t.seq);
    let mut cpu = 0u64;
    let mut mem = 0u64;
    let mut ports: HashSet<(u16, String)> = HashSet::new();
    for p in &cap.reserved_tcp {
        ports.insert((*p, "tcp".into()));
    }
    for p in &cap.reserved_udp {
        ports.insert((*p, "udp".into()));
    }
    let mut held_ports: HashSet<(u16, String)> = HashSet::new();
    for t in all.iter().filter(|t| t.holds_resources()) {
        cpu += t.spec.cpu_units();
        mem += t.spec.memory_mib();
        held_ports.extend(t.spec.static_host_ports());
    }
    let mut admitted = Vec::new();
    let mut waits = BTreeMap::new();
    for t in all.iter().filter(|t| {
        !t.admitted && t.desired == TaskStatus::Running && t.known < TaskStatus::Stopped
    }) {
        let need_cpu = t.spec.cpu_units();
        let need_mem = t.spec.memory_mib();
        let want_ports = t.spec.static_host_ports();
        let mut seen = HashSet::new();
        let never = if need_cpu > cap.cpu_units {
            Some(format!(
                "the task needs {need_cpu} CPU units and the instance has {}",
                cap.cpu_units
            ))
        } else if need_mem > cap.memory_mib {
            Some(format!(
                "the task needs {need_mem} MiB of memory and the instance offers {}",
                cap.memory_mib
            ))
        } else if let Some((p, proto)) = want_ports.iter().find(|p| ports.contains(*p)) {
            Some(format!(
                "host port {p}/{proto} is reserved on this instance (ECS_RESERVED_PORTS)"
            ))
        } else {
            want_ports
                .iter()
                .find(|p| !seen.insert((*p).clone()))
                .map(|(p, proto)| format!("the task asks for host port {p}/{proto} twice"))
        };
        let wait = if let Some(why) = never {
            Some(Wait::Never(why))
        } else if cpu + need_cpu > cap.cpu_units {
            Some(Wait::Cpu {
                need: need_cpu,
                free: cap.cpu_units.saturating_sub(cpu),
            })
        } else if mem + need_mem > cap.memory_mib {
            Some(Wait::Memory {
                need: need_mem,
                free: cap.memory_mib.saturating_sub(mem),
            })
        } else {
            want_ports
                .iter()
                .find(|p| held_ports.contains(*p))
                .map(|(p, proto)| Wait::Port(*p, proto.clone()))
        };
        match wait {
            Some(w) => {
                waits.insert(t.spec.arn.clone(), w);
            }
            None => {
                cpu += need_cpu;
                mem += need_mem;
                held_ports.extend(want_ports);
                admitted.push(t.spec.arn.clone());
            }
        }
    }
    (admitted, waits)
}

/// Whether a host port can be bound now (TCP or UDP, all addresses).
pub fn port_is_free(port: u16, proto: &str) -> bool {
    if proto == "udp" {
        std::net::UdpSocket::bind(("0.0.0.0", port)).is_ok()
    } else {
        std::net::TcpListener::bind(("0.0.0.0", port)).is_ok()
    }
}

/// Picks `n` free host ports from `range` that are not in `taken`, starting after `start_hint`
/// (round robin keeps recently released ports cold).
pub fn pick_dynamic_ports(
    range: (u16, u16),
    proto: &str,
    taken: &HashSet<u16>,
    n: usize,
    start_hint: u16,
    is_free: impl Fn(u16, &str) -> bool,
) -> Option<Vec<u16>> {
    let (lo, hi) = range;
    if lo > hi || n == 0 {
        return if n == 0 { Some(Vec::new()) } else { None };
    }
    let span = (hi - lo) as u32 + 1;
    let start = if (lo..=hi).contains(&start_hint) {
        (start_hint - lo) as u32
    } else {
        0
    };
    let mut out = Vec::new();
    for i in 0..span {
        let port = lo + ((start + i) % span) as u16;
        if taken.contains(&port) || out.contains(&port) || !is_free(port, proto) {
            continue;
        }
        out.push(port);
        if out.len() == n {
            return Some(out);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::model::{TaskRecord, TaskSpec};

    fn task(arn: &str, seq: u64, mem: f64, port: Option<u16>) -> TaskRecord {
        let mut c = serde_json::json!({"name": "c", "image": "i", "memory": mem, "cpu": 256});
        if let Some(p) = port {
            c["portMappings"] = serde_json::json!([{"containerPort": 80, "hostPort": p}]);
        }
        let spec = TaskSpec::from_json(&serde_json::json!({
            "arn": arn, "family": "f", "version": "1", "desiredStatus": "RUNNING",
            "containers": [c]
        }))
        .unwrap();
        TaskRecord::new(spec, seq, 0.0).unwrap()
    }

    fn cap() -> Capacity {
        Capacity {
            cpu_units: 2048,
            memory_mib: 1000,
            reserved_tcp: [22].into(),
            reserved_udp: BTreeSet::new(),
        }
    }

    #[test]
    fn tasks_that_do_not_fit_wait_and_are_admitted_when_resources_free() {
        let mut a = task("a", 1, 600.0, None);
        let b = task("b", 2, 600.0, None);
        let (adm, waits) = admit([&a, &b], &cap());
        assert_eq!(adm, vec!["a".to_string()]);
        assert!(matches!(
            waits["b"],
            Wait::Memory {
                need: 600,
                free: 400
            }
        ));
        a.admitted = true;
        let (adm, _) = admit([&a, &b], &cap());
        assert!(adm.is_empty(), "a still holds its memory");
        a.known = TaskStatus::Stopped;
        let (adm, waits) = admit([&a, &b], &cap());
        assert_eq!(adm, vec!["b".to_string()]);
        assert!(waits.is_empty());
    }

    #[test]
    fn tasks_that_can_never_fit_are_told_apart() {
        let r = task("r", 1, 10.0, Some(22));
        let big = task("big", 2, 5000.0, None);
        let (adm, waits) = admit([&r, &big], &cap());
        assert!(adm.is_empty());
        assert!(waits["r"].never_fits(), "{}", waits["r"]);
        assert!(waits["r"].to_string().contains("22/tcp is reserved"));
        assert!(waits["big"].never_fits(), "{}", waits["big"]);
        assert!(waits["big"].to_string().contains("5000 MiB"));
        // A task that fits once others stop only waits.
        let a = task("a", 3, 600.0, None);
        let b = task("b", 4, 600.0, None);
        let (_, waits) = admit([&a, &b], &cap());
        assert!(!waits["b"].never_fits());
    }

    #[test]
    fn taken_ports_make_tasks_wait() {
        let x = task("x", 2, 10.0, Some(8080));
        let y = task("y", 3, 10.0, Some(8080));
        let (adm, waits) = admit([&x, &y], &cap());
        assert_eq!(adm, vec!["x".to_string()]);
        assert_eq!(waits["y"], Wait::Port(8080, "tcp".into()));
    }

    #[test]
    fn dynamic_ports_skip_taken_and_busy_ones() {
        let taken: HashSet<u16> = [40001].into();
        let got =
            pick_dynamic_ports((40000, 40005), "tcp", &taken, 3, 40000, |p, _| p != 40002).unwrap();
        assert_eq!(got, vec![40000, 40003, 40004]);
        assert!(pick_dynamic_ports((40000, 40001), "tcp", &taken, 2, 0, |_, _| true).is_none());
    }
}
