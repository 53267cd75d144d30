//! Which filesystems are reported: `/proc/<pid>/mountinfo` parsed into [`MountEntry`]s and the
//! selection rules of metrics.md §6.1 (pseudo, overlay, network, read-only, loop and
//! Docker-internal mounts skipped; `/var/lib/docker` kept when it is its own volume; duplicate
//! bind mounts; dimension validity; the cardinality cap), plus the legacy profile's
//! "containing mount of a path" resolution (§3.4).
//!
//! Pure functions of the mount table text; the statvfs-based rules (read-only flag, size 0,
//! timeouts) are applied by [`super::collect`]. This module never touches the filesystem.

/// Filesystem types never reported by default (metrics.md §6.1 rule 1), network types included.
pub const DEFAULT_IGNORE_FS_TYPES: &[&str] = &[
    "sysfs",
    "proc",
    "devtmpfs",
    "devpts",
    "tmpfs",
    "ramfs",
    "cgroup",
    "cgroup2",
    "pstore",
    "bpf",
    "tracefs",
    "debugfs",
    "securityfs",
    "configfs",
    "fusectl",
    "efivarfs",
    "selinuxfs",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "binfmt_misc",
    "rpc_pipefs",
    "autofs",
    "squashfs",
    "iso9660",
    "overlay",
    "aufs",
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "lustre",
    "ceph",
];

/// Mount-point prefixes never reported by default (rule 2). `/var/lib/docker` itself is not one.
pub const DEFAULT_IGNORE_MOUNT_PREFIXES: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/run",
    "/snap",
    "/boot/efi",
    "/var/lib/docker/overlay2",
    "/var/lib/docker/containers",
    "/var/lib/docker/plugins",
    "/var/lib/containerd",
    "/var/lib/kubelet/pods",
];

/// Longest dimension value CloudWatch accepts (rule 7).
const MAX_DIMENSION_VALUE: usize = 1024;

/// One line of mountinfo (proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// Device major number.
    pub major: u32,
    /// Device minor number.
    pub minor: u32,
    /// Root of the mount within the filesystem (not `/` for bind mounts of a subtree).
    pub root: String,
    /// Mount point, unescaped.
    pub mount_point: String,
    /// Per-mount options (`rw`, `ro`, ...).
    pub options: String,
    /// Filesystem type.
    pub fstype: String,
    /// Mount source, unescaped (`/dev/nvme0n1p1`, `tmpfs`, `fs-1:/`).
    pub source: String,
}

impl MountEntry {
    fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// A filesystem chosen for reporting, with its dimension values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filesystem {
    /// Mount point: the `path` (cwagent) and `MountPath` (legacy) dimension.
    pub mount_point: String,
    /// Source as the mount table shows it: the legacy `Filesystem` dimension.
    pub source: String,
    /// Source without a leading `/dev/`: the cwagent `device` dimension.
    pub device: String,
    /// Kernel filesystem type: the `fstype` dimension.
    pub fstype: String,
}

impl From<&MountEntry> for Filesystem {
    fn from(e: &MountEntry) -> Filesystem {
        Filesystem {
            mount_point: e.mount_point.clone(),
            source: e.source.clone(),
            device: e
                .source
                .strip_prefix("/dev/")
                .unwrap_or(&e.source)
                .to_owned(),
            fstype: e.fstype.clone(),
        }
    }
}

/// Parses mountinfo text. Malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<MountEntry> {
    // 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    let (left, right) = line.split_once(" - ")?;
    let mut l = left.split(' ');
    let _id = l.next()?;
    let _parent = l.next()?;
    let (major, minor) = l.next()?.split_once(':')?;
    let root = unescape(l.next()?);
    let mount_point = unescape(l.next()?);
    let options = l.next()?.to_owned();
    let mut r = right.split(' ');
    let fstype = r.next()?.to_owned();
    let source = unescape(r.next().unwrap_or(""));
    Some(MountEntry {
        major: major.parse().ok()?,
        minor: minor.parse().ok()?,
        root,
        mount_point,
        options,
        fstype,
        source,
    })
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012` newline, `\134` backslash).
pub fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The selection rules' settings (metrics.md §6.1, §10).
#[derive(Clone, Debug, PartialEq)]
pub struct Selection {
    /// Types ignored (rule 1; `fuse.*` always).
    pub ignore_fs_types: Vec<String>,
    /// Mount-point prefixes ignored (rule 2).
    pub ignore_mount_prefixes: Vec<String>,
    /// When non-empty: report exactly these mount points (an operator's explicit choice bypasses
    /// rules 1–4).
    pub explicit: Vec<String>,
    /// Rule 3.
    pub require_block_device: bool,
    /// Rule 4 off.
    pub include_read_only: bool,
    /// Rule 8.
    pub max_filesystems: usize,
}

impl Default for Selection {
    fn default() -> Selection {
        Selection {
            ignore_fs_types: DEFAULT_IGNORE_FS_TYPES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            ignore_mount_prefixes: DEFAULT_IGNORE_MOUNT_PREFIXES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            explicit: Vec::new(),
            require_block_device: true,
            include_read_only: false,
            max_filesystems: 20,
        }
    }
}

/// The outcome of [`select`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chosen {
    /// Reported filesystems, sorted by mount point.
    pub filesystems: Vec<Filesystem>,
    /// Mounts that qualified but whose dimension values are invalid: (mount point, why).
    pub invalid: Vec<(String, String)>,
    /// How many qualifying mounts the cardinality cap dropped.
    pub capped: usize,
}

/// The last entry per mount point (the top-most mount wins), in table order.
fn top_most(table: &[MountEntry]) -> Vec<&MountEntry> {
    let mut out: Vec<&MountEntry> = Vec::with_capacity(table.len());
    for (i, e) in table.iter().enumerate() {
        let shadowed = table[i + 1..]
            .iter()
            .any(|later| later.mount_point == e.mount_point);
        if !shadowed {
            out.push(e);
        }
    }
    out
}

fn under_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn invalid_value(v: &str) -> Option<&'static str> {
    if v.is_empty() {
        Some("empty")
    } else if v.len() > MAX_DIMENSION_VALUE {
        Some("longer than 1024 characters")
    } else if !v.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Some("not printable ASCII")
    } else {
        None
    }
}

/// Applies rules 1–5, 7 and 8 to a mount table.
pub fn select(table: &[MountEntry], rules: &Selection) -> Chosen {
    let candidates: Vec<&MountEntry> = top_most(table)
        .into_iter()
        .filter(|e| {
            if !rules.explicit.is_empty() {
                return rules.explicit.contains(&e.mount_point);
            }
            let ignored_type = e.fstype.starts_with("fuse.")
                || e.fstype == "fuse"
                || rules.ignore_fs_types.contains(&e.fstype);
            let ignored_prefix = rules
                .ignore_mount_prefixes
                .iter()
                .any(|p| under_prefix(&e.mount_point, p));
            let block = !rules.require_block_device
                || (e.source.starts_with("/dev/") && !e.source.starts_with("/dev/loop"));
            let writable = rules.include_read_only || !e.read_only();
            !ignored_type && !ignored_prefix && block && writable
        })
        .collect();

    // Rule 5: a bind mount of a subtree duplicates a selected whole-filesystem mount.
    let deduped: Vec<&MountEntry> = candidates
        .iter()
        .copied()
        .filter(|e| {
            e.root == "/"
                || !candidates
                    .iter()
                    .any(|o| o.root == "/" && o.major == e.major && o.minor == e.minor)
        })
        .collect();

    let mut chosen = Chosen::default();
    for e in deduped {
        let fs = Filesystem::from(e);
        let bad = [
            ("path", &fs.mount_point),
            ("device", &fs.device),
            ("fstype", &fs.fstype),
        ]
        .into_iter()
        .find_map(|(name, v)| invalid_value(v).map(|why| format!("{name} is {why}")));
        match bad {
            Some(why) => chosen.invalid.push((fs.mount_point.clone(), why)),
            None => chosen.filesystems.push(fs),
        }
    }
    chosen
        .filesystems
        .sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    if chosen.filesystems.len() > rules.max_filesystems {
        chosen.capped = chosen.filesystems.len() - rules.max_filesystems;
        chosen.filesystems.truncate(rules.max_filesystems);
    }
    chosen
}

/// The mount containing `path` (longest matching mount point among the top-most entries), as
/// `df <path>` resolves it. No filtering: the legacy profile reports what it is told.
pub fn containing(table: &[MountEntry], path: &str) -> Option<Filesystem> {
    top_most(table)
        .into_iter()
        .filter(|e| under_prefix(path, &e.mount_point))
        .max_by_key(|e| e.mount_point.len())
        .map(Filesystem::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ECS_HOST: &str = include_str!("../../tests/data/proc/mountinfo.ecs-host");
    const TMPFS_HEAVY: &str = include_str!("../../tests/data/proc/mountinfo.tmpfs-heavy");

    fn paths(c: &Chosen) -> Vec<(&str, &str, &str)> {
        c.filesystems
            .iter()
            .map(|f| (f.mount_point.as_str(), f.device.as_str(), f.fstype.as_str()))
            .collect()
    }

    #[test]
    fn spec_mount_table_reports_root_and_docker_volume_only() {
        let table = parse_mountinfo(ECS_HOST);
        assert!(table.len() >= 12, "{}", table.len());
        let chosen = select(&table, &Selection::default());
        assert_eq!(
            paths(&chosen),
            [
                ("/", "nvme0n1p1", "xfs"),
                ("/var/lib/docker", "nvme1n1", "ext4")
            ]
        );
        let ro = Selection {
            include_read_only: true,
            ..Selection::default()
        };
        assert_eq!(
            paths(&select(&table, &ro)),
            [
                ("/", "nvme0n1p1", "xfs"),
                ("/data", "nvme2n1", "xfs"),
                ("/var/lib/docker", "nvme1n1", "ext4")
            ]
        );
    }

    #[test]
    fn tmpfs_heavy_host_reports_only_real_disks() {
        let table = parse_mountinfo(TMPFS_HEAVY);
        let chosen = select(&table, &Selection::default());
        // The escaped mount point "/mnt/my disk" is unescaped; the bind mount of /srv's subtree
        // is a duplicate; the shadowed first mount of /scratch is not counted.
        assert_eq!(
            paths(&chosen),
            [
                ("/", "xvda1", "ext4"),
                ("/mnt/my disk", "xvdb", "ext4"),
                ("/scratch", "xvdd", "xfs"),
                ("/srv", "xvdc", "ext4"),
            ]
        );
    }

    #[test]
    fn cap_keeps_first_paths_and_explicit_list_wins() {
        let table = parse_mountinfo(ECS_HOST);
        let capped = select(
            &table,
            &Selection {
                max_filesystems: 1,
                ..Selection::default()
            },
        );
        assert_eq!(paths(&capped), [("/", "nvme0n1p1", "xfs")]);
        assert_eq!(capped.capped, 1);
        let explicit = select(
            &table,
            &Selection {
                explicit: vec!["/dev/shm".into(), "/".into()],
                ..Selection::default()
            },
        );
        assert_eq!(
            paths(&explicit),
            [("/", "nvme0n1p1", "xfs"), ("/dev/shm", "tmpfs", "tmpfs")]
        );
    }

    #[test]
    fn invalid_dimension_values_are_reported_not_selected() {
        let table = parse_mountinfo("1 0 8:1 / /caf\u{e9} rw - ext4 /dev/sda1 rw\n");
        let chosen = select(&table, &Selection::default());
        assert!(chosen.filesystems.is_empty());
        assert_eq!(chosen.invalid.len(), 1);
    }

    #[test]
    fn containing_mount_is_the_longest_prefix() {
        let table = parse_mountinfo(ECS_HOST);
        let fs = containing(&table, "/var/lib/docker/volumes/x").unwrap();
        assert_eq!(fs.mount_point, "/var/lib/docker");
        assert_eq!(fs.source, "/dev/nvme1n1");
        assert_eq!(containing(&table, "/home").unwrap().mount_point, "/");
        assert_eq!(containing(&table, "/dev/shm").unwrap().fstype, "tmpfs");
        assert!(!under_prefix("/devices", "/dev"));
    }

    #[test]
    fn unescape_handles_octal_and_leaves_the_rest() {
        assert_eq!(unescape(r"/a\040b\011c\134d"), "/a b\tc\\d");
        assert_eq!(unescape(r"/x\9"), r"/x\9");
        assert_eq!(unescape(r"\04"), r"\04");
    }
}
