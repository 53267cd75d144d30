//! The credentials audit log (task-credentials.md §5): one line per credentials request and per
//! rate-limited request, in upstream's format:
//!
//! `<RFC 3339 UTC time> <status> <ip:port> "<path>" "<User-Agent>" <task ARN> <event> 2 <cluster> <container-instance ARN>`
//!
//! Errors and 429s carry only the first six fields (the role is unknown). Empty fields are `-`.
//! Lines go to the log under the target [`TARGET`] (the journal) or, when `ECS_AUDIT_LOGFILE`
//! is set, to that file (appended; its directories created); `ECS_AUDIT_LOGFILE_DISABLED`
//! writes none (design.md Round 2: "the journal, or `ECS_AUDIT_LOGFILE` when set"). The file is
//! rotated as the official agent rotates its files ([`Rotation`]: hourly to
//! `<file>.YYYY-MM-DD-HH`, or by size to `<file>.1`…), keeping `ECS_LOG_MAX_ROLL_COUNT` of them.
//!
//! Never writes a credentials id (paths are reduced to `/v2/credentials`, see
//! [`super::loggable_path`]) nor any part of the credentials.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::InstanceFacts;
use super::metadata::rfc3339;
use crate::config::{RotateBy, Rotation};

/// The log target of audit lines (so a filter or journal match can pick them out).
pub const TARGET: &str = "ecs_hostd::audit";
/// The audit format version upstream writes.
const VERSION: u32 = 2;

/// What the log says about the request itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestInfo {
    /// The caller.
    pub peer: SocketAddr,
    /// The path, without any credentials id.
    pub path: String,
    /// `User-Agent`.
    pub user_agent: String,
}

/// Which credentials were served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Task role.
    GetCredentials,
    /// Execution role.
    GetCredentialsExecutionRole,
}

impl Event {
    fn as_str(self) -> &'static str {
        match self {
            Event::GetCredentials => "GetCredentials",
            Event::GetCredentialsExecutionRole => "GetCredentialsExecutionRole",
        }
    }
}

/// Where lines go.
#[derive(Debug)]
pub enum Sink {
    /// Nowhere (`ECS_AUDIT_LOGFILE_DISABLED=true`).
    Disabled,
    /// The log, under [`TARGET`].
    Log,
    /// A file, appended to and rotated; opened on first use and again after a write error.
    File(FileSink),
}

impl Sink {
    /// The file `path`, rotated as `rotation` says.
    pub fn file(path: PathBuf, rotation: Rotation) -> Sink {
        Sink::File(FileSink {
            path,
            rotation,
            open: Mutex::new(None),
        })
    }
}

/// The audit file.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    rotation: Rotation,
    open: Mutex<Option<OpenFile>>,
}

#[derive(Debug)]
struct OpenFile {
    file: std::fs::File,
    /// Bytes in the file.
    size: u64,
    /// The hour (seconds since the epoch / 3600) of the lines in the file.
    hour: u64,
}

/// The audit log.
#[derive(Debug)]
pub struct AuditLog {
    sink: Sink,
}

fn field(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// The time field: RFC 3339, UTC, whole seconds.
fn now_field() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs as f64, false)
}

/// The first six fields.
pub fn short_line(time: &str, r: &RequestInfo, status: u16, task_arn: &str) -> String {
    format!(
        "{time} {status} {} \"{}\" \"{}\" {}",
        r.peer,
        field(&r.path),
        field(&r.user_agent),
        field(task_arn)
    )
}

/// The full line of a served request.
pub fn full_line(
    time: &str,
    r: &RequestInfo,
    status: u16,
    task_arn: &str,
    event: Event,
    instance: &InstanceFacts,
) -> String {
    format!(
        "{} {} {VERSION} {} {}",
        short_line(time, r, status, task_arn),
        event.as_str(),
        field(&instance.cluster),
        field(&instance.container_instance_arn)
    )
}

impl AuditLog {
    /// An audit log writing to `sink`.
    pub fn new(sink: Sink) -> AuditLog {
        AuditLog { sink }
    }

    /// The audit log the settings ask for.
    pub fn from_config(c: &crate::config::TaskEndpointConfig) -> AuditLog {
        AuditLog::new(if c.audit_disabled {
            Sink::Disabled
        } else if let Some(path) = &c.audit_logfile {
            Sink::file(path.clone(), c.audit_rotation)
        } else {
            Sink::Log
        })
    }

    /// Credentials served (200).
    pub fn served(
        &self,
        r: &RequestInfo,
        status: u16,
        task_arn: &str,
        event: Event,
        instance: &InstanceFacts,
    ) {
        if matches!(self.sink, Sink::Disabled) {
            return;
        }
        self.write(&full_line(
            &now_field(),
            r,
            status,
            task_arn,
            event,
            instance,
        ));
    }

    /// A credentials request that failed (400, 503, 500).
    pub fn failed(&self, r: &RequestInfo, status: u16, task_arn: Option<&str>) {
        if matches!(self.sink, Sink::Disabled) {
            return;
        }
        self.write(&short_line(&now_field(), r, status, task_arn.unwrap_or("")));
    }

    /// A request refused by the rate limiter (any path).
    pub fn rejected(&self, r: &RequestInfo, status: u16) {
        self.failed(r, status, None);
    }

    fn write(&self, line: &str) {
        match &self.sink {
            Sink::Disabled => {}
            Sink::Log => tracing::info!(target: TARGET, "{line}"),
            Sink::File(f) => f.write(line, unix_now()),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether `s` reads `YYYY-MM-DD-HH`.
fn is_hour_stamp(s: &str) -> bool {
    s.len() == 13
        && s.bytes().enumerate().all(|(i, b)| match i {
            4 | 7 | 10 => b == b'-',
            _ => b.is_ascii_digit(),
        })
}

/// `YYYY-MM-DD-HH` of an hour (seconds since the epoch / 3600).
fn hour_stamp(hour: u64) -> String {
    let t = rfc3339((hour * 3600) as f64, false); // 2026-07-01T12:00:00Z
    format!("{}-{}", &t[..10], &t[11..13])
}

impl FileSink {
    /// Appends `line` at `now` (seconds since the epoch), rotating first if the hour changed or
    /// the line would take the file past its size. A failure loses this line, with a warning,
    /// and is tried again on the next.
    pub fn write(&self, line: &str, now: u64) {
        let path = &self.path;
        let mut guard = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let hour = now / 3600;
        if guard.is_none() {
            *guard = self.opened(hour);
        }
        let Some(open) = guard.as_mut() else { return };
        let bytes = line.len() as u64 + 1;
        let rotate = open.size > 0
            && match self.rotation.by {
                RotateBy::Hour => open.hour != hour,
                RotateBy::Size => open.size + bytes > self.rotation.max_bytes,
            };
        if rotate {
            let old_hour = open.hour;
            *guard = None;
            if let Err(e) = self.rotate(old_hour) {
                // Keep appending to the same file rather than lose lines.
                warn!(path = %path.display(), error = %e, "Cannot rotate the audit log file.");
            }
            *guard = self.opened(hour);
        }
        let Some(open) = guard.as_mut() else { return };
        open.hour = hour;
        match open.file.write_all(format!("{line}\n").as_bytes()) {
            Ok(()) => open.size += bytes,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "Cannot write the audit log file; audit record lost.");
                *guard = None;
            }
        }
    }

    /// [`Self::open_file`], or `None` with a warning (this line is lost; the next tries again).
    fn opened(&self, hour: u64) -> Option<OpenFile> {
        self.open_file(hour)
            .map_err(|e| warn!(path = %self.path.display(), error = %e, "Cannot open the audit log file; audit record lost."))
            .ok()
    }

    /// Opens (creating it and its directories) for appending. An existing file's lines belong to
    /// the hour it was last written in, so a restart in a later hour rotates it.
    fn open_file(&self, hour: u64) -> std::io::Result<OpenFile> {
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        let meta = file.metadata()?;
        let written = meta
            .modified()
            .ok()
            .and_then(|m| m.duration_since(UNIX_EPOCH).ok())
            .map_or(hour, |d| d.as_secs() / 3600);
        Ok(OpenFile {
            file,
            size: meta.len(),
            hour: if meta.len() > 0 { written } else { hour },
        })
    }

    /// Moves the current file aside and removes the rotated files beyond `keep`.
    fn rotate(&self, hour: u64) -> std::io::Result<()> {
        let name = |suffix: &str| {
            let mut p = self.path.clone().into_os_string();
            p.push(".");
            p.push(suffix);
            PathBuf::from(p)
        };
        let keep = self.rotation.keep.max(1);
        match self.rotation.by {
            RotateBy::Size => {
                for i in (1..keep).rev() {
                    let from = name(&i.to_string());
                    if from.exists() {
                        std::fs::rename(&from, name(&(i + 1).to_string()))?;
                    }
                }
                std::fs::rename(&self.path, name("1"))
            }
            RotateBy::Hour => {
                let stamp = hour_stamp(hour);
                let mut to = name(&stamp);
                // Only a clock set back can meet an hour twice; never overwrite it.
                let mut n = 1;
                while to.exists() {
                    to = name(&format!("{stamp}.{n}"));
                    n += 1;
                }
                std::fs::rename(&self.path, &to)?;
                self.prune_hourly(keep as usize)
            }
        }
    }

    /// Removes the oldest `<file>.YYYY-MM-DD-HH[.n]` beyond `keep` (the stamps sort by time).
    fn prune_hourly(&self, keep: usize) -> std::io::Result<()> {
        let (Some(dir), Some(base)) = (self.path.parent(), self.path.file_name()) else {
            return Ok(());
        };
        let dir = if dir.as_os_str().is_empty() {
            std::path::Path::new(".")
        } else {
            dir
        };
        let prefix = format!("{}.", base.to_string_lossy());
        let mut rotated: Vec<String> = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| {
                n.strip_prefix(&prefix)
                    .is_some_and(|s| s.get(..13).is_some_and(is_hour_stamp))
            })
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(keep);
        for old in &rotated[..excess] {
            std::fs::remove_file(dir.join(old))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(p: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn size_rotation_shifts_files_up_and_keeps_the_newest_lines_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.log");
        let sink = FileSink {
            path: path.clone(),
            rotation: Rotation {
                by: RotateBy::Size,
                max_bytes: 100,
                keep: 2,
            },
            open: Mutex::new(None),
        };
        // 30-byte lines (with the newline): three fit in 100 bytes.
        let all: Vec<String> = (0..10)
            .map(|i| format!("line {i:02} {}", "x".repeat(21)))
            .collect();
        for l in &all {
            sink.write(l, 1_000_000);
        }
        assert_eq!(
            names(path.parent().unwrap()),
            ["audit.log", "audit.log.1", "audit.log.2"]
        );
        let mut kept = lines_of(&dir.path().join("a/audit.log.2"));
        kept.extend(lines_of(&dir.path().join("a/audit.log.1")));
        kept.extend(lines_of(&path));
        // Lines 9 (current), 6–8 (.1), 3–5 (.2); 0–2 fell off the end.
        assert_eq!(kept, all[3..]);
        assert!(std::fs::metadata(&path).unwrap().len() <= 100);
    }

    #[test]
    fn hourly_rotation_names_files_by_the_hour_of_their_lines_and_prunes_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(dir.path().join("audit.log.keep-me"), "not ours").unwrap();
        let sink = FileSink {
            path: path.clone(),
            rotation: Rotation {
                by: RotateBy::Hour,
                max_bytes: 10,
                keep: 2,
            },
            open: Mutex::new(None),
        };
        let h = 1_782_907_200 / 3600; // 2026-07-01T12:00:00Z
        sink.write("a", h * 3600 + 5);
        sink.write("b", h * 3600 + 3599); // same hour: no rotation, whatever the size
        sink.write("c", (h + 1) * 3600);
        sink.write("d", (h + 2) * 3600 + 7);
        sink.write("e", (h + 3) * 3600);
        assert_eq!(
            names(dir.path()),
            [
                "audit.log",
                "audit.log.2026-07-01-13",
                "audit.log.2026-07-01-14",
                "audit.log.keep-me"
            ]
        );
        assert_eq!(lines_of(&path), ["e"]);
        assert_eq!(lines_of(&dir.path().join("audit.log.2026-07-01-14")), ["d"]);
    }

    #[test]
    fn a_file_left_from_an_earlier_hour_is_rotated_on_the_first_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "old\n").unwrap();
        let h = 1_782_907_200 / 3600;
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(UNIX_EPOCH + std::time::Duration::from_secs(h * 3600 + 60))
            .unwrap();
        let sink = FileSink {
            path: path.clone(),
            rotation: Rotation::default(),
            open: Mutex::new(None),
        };
        sink.write("new", (h + 5) * 3600);
        assert_eq!(
            lines_of(&dir.path().join("audit.log.2026-07-01-12")),
            ["old"]
        );
        assert_eq!(lines_of(&path), ["new"]);
    }

    #[test]
    fn hour_stamps() {
        assert_eq!(hour_stamp(1_782_907_200 / 3600), "2026-07-01-12");
        assert!(is_hour_stamp("2026-07-01-12"));
        assert!(!is_hour_stamp("2026-07-01T12"));
        assert!(!is_hour_stamp("keep-me"));
    }
}
