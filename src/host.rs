//! Facts about this host that registration reports: logical CPUs, total memory, OS identity.
//!
//! Read from `/proc/meminfo`, the scheduler and `/etc/os-release`; parsing is separated from
//! reading so it can be tested on recorded files. Never writes anything.

use std::path::Path;

/// What the host offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFacts {
    /// Logical CPUs the agent may schedule on.
    pub cpus: u64,
    /// `MemTotal` in bytes.
    pub mem_total_bytes: u64,
    /// `<ID>_<VERSION_ID>` from os-release (e.g. `debian_12`), or `LINUX`.
    pub os_detailed: String,
}

/// Host fact errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `/proc/meminfo` could not be read or has no MemTotal.
    #[error("cannot read total memory from {path}: {reason}")]
    Meminfo {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
}

impl HostFacts {
    /// Reads the facts of this host.
    pub fn read() -> Result<HostFacts, Error> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| Error::Meminfo {
            path: "/proc/meminfo".into(),
            reason: e.to_string(),
        })?;
        let mem_total_bytes = mem_total_bytes(&meminfo).ok_or_else(|| Error::Meminfo {
            path: "/proc/meminfo".into(),
            reason: "no MemTotal line".into(),
        })?;
        let os_release = std::fs::read_to_string(Path::new("/etc/os-release")).unwrap_or_default();
        Ok(HostFacts {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
            mem_total_bytes,
            os_detailed: os_detailed(&os_release),
        })
    }

    /// Registered CPU units: logical CPUs × 1024 (protocol spec §3.2).
    pub fn cpu_units(&self) -> i32 {
        (self.cpus * 1024).min(i32::MAX as u64) as i32
    }

    /// Registered memory: floor(MemTotal / MiB) − reserved; `None` if the reservation exceeds it.
    pub fn registrable_memory_mib(&self, reserved_mib: u64) -> Option<i32> {
        let total = self.mem_total_bytes / (1024 * 1024);
        total
            .checked_sub(reserved_mib)
            .map(|m| m.min(i32::MAX as u64) as i32)
    }
}

/// `MemTotal` from /proc/meminfo text, in bytes.
pub fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib * 1024)
    })
}

/// `<ID>_<VERSION_ID>` from os-release text, `LINUX` when either is missing.
pub fn os_detailed(os_release: &str) -> String {
    let field = |name: &str| {
        os_release.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.strip_prefix('='))
                .map(|v| v.trim().trim_matches('"').to_owned())
        })
    };
    match (field("ID"), field("VERSION_ID")) {
        (Some(id), Some(ver)) if !id.is_empty() && !ver.is_empty() => format!("{id}_{ver}"),
        _ => "LINUX".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_meminfo_and_os_release() {
        let meminfo = "MemTotal:       16106352 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(16106352 * 1024));
        assert_eq!(mem_total_bytes("MemFree: 1 kB"), None);
        assert_eq!(
            os_detailed("NAME=\"Amazon Linux\"\nID=\"amzn\"\nVERSION_ID=\"2023\"\n"),
            "amzn_2023"
        );
        assert_eq!(os_detailed("ID=debian\nVERSION_ID=\"12\"\n"), "debian_12");
        assert_eq!(os_detailed("ID=arch\n"), "LINUX");
    }

    #[test]
    fn resources_follow_the_spec() {
        let h = HostFacts {
            cpus: 4,
            mem_total_bytes: 16106352 * 1024,
            os_detailed: "LINUX".into(),
        };
        assert_eq!(h.cpu_units(), 4096);
        assert_eq!(h.registrable_memory_mib(0), Some(15728));
        assert_eq!(h.registrable_memory_mib(256), Some(15472));
        assert_eq!(h.registrable_memory_mib(20000), None);
    }

    #[test]
    fn reads_this_host() {
        let h = HostFacts::read().unwrap();
        assert!(h.cpus >= 1);
        assert!(h.mem_total_bytes > 64 * 1024 * 1024);
    }
}
