//! Pure parsers of the cgroup and `/proc` files the collector reads. Each takes the file's text
//! (already read into the reader's buffer) and walks it once, line by line, without allocating
//! per line; the few that fill a list (per-CPU usage, block devices, interfaces) append to one the
//! caller owns.
//!
//! Nothing here touches a file.

/// Nanoseconds per `USER_HZ` tick: `cpuacct.stat` and `/proc/stat` count in ticks of 1/100 s.
///
/// NOTE: `USER_HZ` is 100 on every Linux architecture Docker supports, and runc (hence Docker's
/// own `usage_in_usermode`) hard-codes the same value rather than asking `sysconf(_SC_CLK_TCK)`.
pub const NS_PER_TICK: u64 = 1_000_000_000 / 100;

/// A single unsigned integer (`cpuacct.usage`, `memory.usage_in_bytes`, `memory.current`,
/// `pids.current`).
pub fn single(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A limit: a number, or `max` (cgroup v2 for "no limit"), which is `u64::MAX`.
pub fn limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => Some(u64::MAX),
        t => t.parse().ok(),
    }
}

/// The values of `keys` in a flat keyed file (`key value` per line: `cpuacct.stat`, `cpu.stat`,
/// `memory.stat`), in the order of `keys`; a key the file lacks is `None`. One pass.
pub fn keyed<const N: usize>(text: &str, keys: [&str; N]) -> [Option<u64>; N] {
    let mut out = [None; N];
    let mut left = N;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        if let Some(i) = keys.iter().position(|k| *k == key) {
            if out[i].is_none() {
                left -= 1;
            }
            out[i] = value.trim().parse().ok();
            if left == 0 {
                break;
            }
        }
    }
    out
}

/// `cpuacct.usage_percpu`: nanoseconds per possible CPU, space separated. Appends to `out` and
/// returns the sum (which is what the kernel prints in `cpuacct.usage`: the same per-CPU
/// counters added up), or `None` if the file has no number.
pub fn percpu(text: &str, out: &mut Vec<u64>) -> Option<u64> {
    let mut sum = 0u64;
    let mut any = false;
    for word in text.split_ascii_whitespace() {
        let v: u64 = word.parse().ok()?;
        out.push(v);
        sum = sum.saturating_add(v);
        any = true;
    }
    any.then_some(sum)
}

/// A block-I/O operation as Docker names it in `io_service_bytes_recursive`.
pub fn blkio_op(op: &str) -> Option<&'static str> {
    Some(match op {
        "Read" => "Read",
        "Write" => "Write",
        "Sync" => "Sync",
        "Async" => "Async",
        "Discard" => "Discard",
        "Total" => "Total",
        _ => return None,
    })
}

/// One entry of Docker's `io_service_bytes_recursive`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkEntry {
    /// Device major number.
    pub major: u64,
    /// Device minor number.
    pub minor: u64,
    /// `Read`, `Write`… (v1) or `read`, `write` (v2), as Docker spells them.
    pub op: &'static str,
    /// Bytes.
    pub value: u64,
}

fn major_minor(dev: &str) -> Option<(u64, u64)> {
    let (major, minor) = dev.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// cgroup v1 `blkio.throttle.io_service_bytes_recursive` (or `blkio.io_service_bytes_recursive`):
/// `MAJ:MIN Op bytes` lines and a final `Total n`. Appends the device lines to `out` and returns
/// the summed (Read, Write) bytes (tcs.md §6.2: `op` compared case-insensitively).
pub fn blkio_v1(text: &str, out: &mut Vec<BlkEntry>) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let (Some(dev), Some(op), Some(value)) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let (Some((major, minor)), Some(op), Ok(value)) =
            (major_minor(dev), blkio_op(op), value.parse::<u64>())
        else {
            continue;
        };
        match op {
            "Read" => read = read.saturating_add(value),
            "Write" => write = write.saturating_add(value),
            _ => {}
        }
        out.push(BlkEntry {
            major,
            minor,
            op,
            value,
        });
    }
    (read, write)
}

/// cgroup v2 `io.stat`: `MAJ:MIN rbytes=… wbytes=… rios=… …` per device. Appends a `read` and a
/// `write` entry per device to `out` (as Docker does for v2) and returns the summed bytes.
pub fn io_stat_v2(text: &str, out: &mut Vec<BlkEntry>) -> (u64, u64) {
    let (mut read, mut write) = (0u64, 0u64);
    for line in text.lines() {
        let mut words = line.split_ascii_whitespace();
        let Some((major, minor)) = words.next().and_then(major_minor) else {
            continue;
        };
        let (mut r, mut w) = (0u64, 0u64);
        for word in words {
            match word.split_once('=') {
                Some(("rbytes", v)) => r = v.parse().unwrap_or(0),
                Some(("wbytes", v)) => w = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        read = read.saturating_add(r);
        write = write.saturating_add(w);
        out.push(BlkEntry {
            major,
            minor,
            op: "read",
            value: r,
        });
        out.push(BlkEntry {
            major,
            minor,
            op: "write",
            value: w,
        });
    }
    (read, write)
}

/// The counters of one network interface that Docker's `networks` map carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    /// Received bytes.
    pub rx_bytes: u64,
    /// Received packets.
    pub rx_packets: u64,
    /// Receive errors.
    pub rx_errors: u64,
    /// Received packets dropped.
    pub rx_dropped: u64,
    /// Sent bytes.
    pub tx_bytes: u64,
    /// Sent packets.
    pub tx_packets: u64,
    /// Send errors.
    pub tx_errors: u64,
    /// Sent packets dropped.
    pub tx_dropped: u64,
}

impl IfCounters {
    /// Adds `o` to each counter (saturating).
    pub fn add(&mut self, o: &IfCounters) {
        self.rx_bytes = self.rx_bytes.saturating_add(o.rx_bytes);
        self.rx_packets = self.rx_packets.saturating_add(o.rx_packets);
        self.rx_errors = self.rx_errors.saturating_add(o.rx_errors);
        self.rx_dropped = self.rx_dropped.saturating_add(o.rx_dropped);
        self.tx_bytes = self.tx_bytes.saturating_add(o.tx_bytes);
        self.tx_packets = self.tx_packets.saturating_add(o.tx_packets);
        self.tx_errors = self.tx_errors.saturating_add(o.tx_errors);
        self.tx_dropped = self.tx_dropped.saturating_add(o.tx_dropped);
    }
}

/// Interfaces left out of a container's `networks`: loopback, and the fallback tunnel devices
/// the kernel creates in every network namespace when their modules are loaded. Docker lists only
/// its endpoints' interfaces, so none of these appear in its JSON.
const SKIPPED_INTERFACES: &[&str] = &[
    "lo", "tunl0", "sit0", "ip6tnl0", "ip_vti0", "ip6_vti0", "gre0", "gretap0", "erspan0",
    "ip6gre0",
];

/// `/proc/<pid>/net/dev`: two header lines, then `name: rx(8 columns) tx(8 columns)`. Appends
/// every interface except loopback and the kernel's fallback tunnels to `out`.
pub fn net_dev(text: &str, out: &mut Vec<(String, IfCounters)>) {
    for line in text.lines().skip(2) {
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() || SKIPPED_INTERFACES.contains(&name) {
            continue;
        }
        let mut v = [0u64; 16];
        let mut n = 0;
        for (slot, word) in v.iter_mut().zip(rest.split_ascii_whitespace()) {
            *slot = word.parse().unwrap_or(0);
            n += 1;
        }
        if n < 12 {
            continue;
        }
        out.push((
            name.to_owned(),
            IfCounters {
                rx_bytes: v[0],
                rx_packets: v[1],
                rx_errors: v[2],
                rx_dropped: v[3],
                tx_bytes: v[8],
                tx_packets: v[9],
                tx_errors: v[10],
                tx_dropped: v[11],
            },
        ));
    }
}

/// `/proc/stat`: Docker's `system_cpu_usage` (the first seven columns of the `cpu` line, user to
/// softirq, in ticks, as nanoseconds) and `online_cpus` (the number of `cpuN` lines). Stops at the
/// first line after the CPU lines.
pub fn proc_stat(text: &str) -> Option<(u64, u32)> {
    let mut system = None;
    let mut online = 0u32;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("cpu") else {
            break;
        };
        if rest.starts_with(' ') {
            let mut ticks = 0u64;
            for word in rest.split_ascii_whitespace().take(7) {
                ticks = ticks.saturating_add(word.parse().ok()?);
            }
            system = Some(ticks.saturating_mul(NS_PER_TICK));
        } else if rest.starts_with(|c: char| c.is_ascii_digit()) {
            online += 1;
        }
    }
    Some((system?, online))
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub fn mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line["MemTotal:".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib.saturating_mul(1024))
}

/// The first pid of `cgroup.procs` (one pid per line), if any.
pub fn first_pid(text: &str) -> Option<u32> {
    text.lines().find_map(|l| l.trim().parse().ok())
}

/// The `key value` pairs of a `memory.stat` text, for Docker's `memory_stats.stats`.
pub fn memory_stat_pairs(text: &str) -> impl Iterator<Item = (&str, u64)> {
    text.lines().filter_map(|line| {
        let (k, v) = line.split_once(' ')?;
        Some((k, v.trim().parse().ok()?))
    })
}
