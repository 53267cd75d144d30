//! The credentials audit log (task-credentials.md §5): one line per credentials request and per
//! rate-limited request, in upstream's format:
//!
//! `<RFC 3339 UTC time> <status> <ip:port> "<path>" "<User-Agent>" <task ARN> <event> 2 <cluster> <container-instance ARN>`
//!
//! Errors and 429s carry only the first six fields (the role is unknown). Empty fields are `-`.
//! Lines go to the log under the target [`TARGET`] (the journal) or, when `ECS_AUDIT_LOGFILE`
//! is set, to that file (appended; its directories created); `ECS_AUDIT_LOGFILE_DISABLED`
//! writes none (design.md Round 2: "the journal, or `ECS_AUDIT_LOGFILE` when set").
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
    /// A file, appended to; opened on first use and again after a write error.
    File {
        /// The file.
        path: PathBuf,
        /// The open handle.
        file: Mutex<Option<std::fs::File>>,
    },
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
            Sink::File {
                path: path.clone(),
                file: Mutex::new(None),
            }
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
            Sink::File { path, file } => {
                let mut guard = file.lock().unwrap_or_else(|e| e.into_inner());
                if guard.is_none() {
                    let opened = path
                        .parent()
                        .filter(|p| !p.as_os_str().is_empty())
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| {
                            std::fs::OpenOptions::new()
                                .create(true)
                                .append(true)
                                .open(path)
                        });
                    match opened {
                        Ok(f) => *guard = Some(f),
                        Err(e) => {
                            warn!(path = %path.display(), error = %e, "Cannot open the audit log file; audit record lost.");
                            return;
                        }
                    }
                }
                if let Some(f) = guard.as_mut()
                    && let Err(e) = f.write_all(format!("{line}\n").as_bytes())
                {
                    warn!(path = %path.display(), error = %e, "Cannot write the audit log file; audit record lost.");
                    *guard = None;
                }
            }
        }
    }
}
