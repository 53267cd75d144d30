//! Talking to systemd about Docker's units: [`ServiceManager`] (read a unit's state, enable it,
//! start, restart, reset-failed) with its one real implementation over the system bus (zbus
//! proxies of `org.freedesktop.systemd1`) and a recording fake for tests.
//!
//! It never runs `systemctl`, never decides anything (that is `policy.rs`), and bounds every bus
//! call with [`DBUS_TIMEOUT`]. `StartUnit`/`RestartUnit` queue a job and return at once, so no
//! call here waits for Docker to come up.

use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use zbus::OwnedObjectPath;
use zbus::proxy::CacheProperties;

use super::policy::{Active, FileState, UnitState};

/// Upper bound on one D-Bus call.
pub const DBUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Present exactly when systemd is PID 1 (sd_booted(3)).
const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";

/// Errors of the systemd connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// systemd is not PID 1 here: nothing to talk to, ever.
    #[error("systemd is not the init system ({SYSTEMD_RUNTIME_DIR} is missing)")]
    NotBooted,
    /// The system bus could not be reached.
    #[error("cannot connect to the system bus: {0}")]
    Bus(#[source] zbus::Error),
    /// A call failed.
    #[error("{op} {unit}: {source}")]
    Call {
        /// The D-Bus method, e.g. `RestartUnit`.
        op: &'static str,
        /// The unit.
        unit: String,
        /// Cause.
        #[source]
        source: zbus::Error,
    },
    /// A call did not answer within [`DBUS_TIMEOUT`].
    #[error("{op} {unit}: no answer within {DBUS_TIMEOUT:?}")]
    Timeout {
        /// The D-Bus method.
        op: &'static str,
        /// The unit.
        unit: String,
    },
}

impl Error {
    /// Whether trying again later can help. Without systemd it never will; a bus that is not up
    /// yet at boot, a timeout or a refused job may.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Error::NotBooted)
    }
}

/// The systemd operations the Docker watchdog needs.
#[async_trait]
pub trait ServiceManager: Send + Sync {
    /// The state of `unit`; `None` when no such unit is installed.
    async fn unit_state(&self, unit: &str) -> Result<Option<UnitState>, Error>;
    /// `EnableUnitFiles([unit], runtime=false, force=false)`, then `Reload()` (D-Bus does not
    /// reload for you).
    async fn enable(&self, unit: &str) -> Result<(), Error>;
    /// `StartUnit(unit, "replace")`; returns once the job is queued.
    async fn start(&self, unit: &str) -> Result<(), Error>;
    /// `RestartUnit(unit, "replace")`; returns once the job is queued.
    async fn restart(&self, unit: &str) -> Result<(), Error>;
    /// `ResetFailedUnit(unit)`: clears `failed` and the start-limit counter.
    async fn reset_failed(&self, unit: &str) -> Result<(), Error>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Manager {
    fn load_unit(&self, name: &str) -> zbus::Result<OwnedObjectPath>;
    fn get_unit_file_state(&self, file: &str) -> zbus::Result<String>;
    fn enable_unit_files(
        &self,
        files: &[&str],
        runtime: bool,
        force: bool,
    ) -> zbus::Result<(bool, Vec<(String, String, String)>)>;
    fn reload(&self) -> zbus::Result<()>;
    fn start_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn restart_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
    fn reset_failed_unit(&self, name: &str) -> zbus::Result<()>;
    fn start_transient_unit(
        &self,
        name: &str,
        mode: &str,
        properties: &[(&str, zbus::Variant<'_>)],
        aux: &[(&str, &[(&str, zbus::Variant<'_>)])],
    ) -> zbus::Result<OwnedObjectPath>;
    fn stop_unit(&self, name: &str, mode: &str) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Unit",
    default_service = "org.freedesktop.systemd1"
)]
trait Unit {
    #[zbus(property)]
    fn load_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn active_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn sub_state(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn unit_file_state(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Service",
    default_service = "org.freedesktop.systemd1"
)]
trait Service {
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Socket",
    default_service = "org.freedesktop.systemd1"
)]
trait Socket {
    #[zbus(property)]
    fn result(&self) -> zbus::Result<String>;
}

/// Runs one bus call under [`DBUS_TIMEOUT`].
async fn call<T>(
    op: &'static str,
    unit: &str,
    fut: impl Future<Output = zbus::Result<T>>,
) -> Result<T, Error> {
    match tokio::time::timeout(DBUS_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(Error::Call {
            op,
            unit: unit.to_owned(),
            source,
        }),
        Err(_) => Err(Error::Timeout {
            op,
            unit: unit.to_owned(),
        }),
    }
}

/// systemd's manager on the system bus.
pub struct DbusManager {
    conn: zbus::Connection,
}

impl DbusManager {
    /// Connects to the system bus, if systemd is PID 1 here.
    pub async fn connect() -> Result<DbusManager, Error> {
        if !Path::new(SYSTEMD_RUNTIME_DIR).is_dir() {
            return Err(Error::NotBooted);
        }
        let conn = match tokio::time::timeout(DBUS_TIMEOUT, zbus::Connection::system()).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(Error::Bus(e)),
            Err(_) => {
                return Err(Error::Timeout {
                    op: "connect",
                    unit: "system bus".into(),
                });
            }
        };
        Ok(DbusManager { conn })
    }

    async fn manager(&self) -> Result<ManagerProxy<'static>, Error> {
        call(
            "connect",
            "org.freedesktop.systemd1",
            ManagerProxy::new(&self.conn),
        )
        .await
    }

    /// A property reader for `path` that always asks systemd (no cache: states change under us).
    async fn proxy<P>(&self, unit: &str, path: &OwnedObjectPath) -> Result<P, Error>
    where
        P: From<zbus::Proxy<'static>> + zbus::proxy::Defaults,
    {
        let b = zbus::proxy::Builder::<P>::new(&self.conn)
            .cache_properties(CacheProperties::No)
            .path(path.clone());
        call("proxy", unit, b.build()).await
    }
}

#[async_trait]
impl ServiceManager for DbusManager {
    async fn unit_state(&self, unit: &str) -> Result<Option<UnitState>, Error> {
        let m = self.manager().await?;
        let path = call("LoadUnit", unit, m.load_unit(unit)).await?;
        let u: UnitProxy = self.proxy(unit, &path).await?;
        let load = call("Get LoadState", unit, u.load_state()).await?;
        if load == "not-found" {
            return Ok(None);
        }
        let active = call("Get ActiveState", unit, u.active_state()).await?;
        let sub_state = call("Get SubState", unit, u.sub_state()).await?;
        let file = call("Get UnitFileState", unit, u.unit_file_state()).await?;
        let result = if unit.ends_with(".socket") {
            let s: SocketProxy = self.proxy(unit, &path).await?;
            call("Get Result", unit, s.result()).await?
        } else {
            let s: ServiceProxy = self.proxy(unit, &path).await?;
            call("Get Result", unit, s.result()).await?
        };
        Ok(Some(UnitState {
            active: Active::parse(&active),
            sub_state,
            result,
            file: FileState::parse(&file),
        }))
    }

    async fn enable(&self, unit: &str) -> Result<(), Error> {
        let m = self.manager().await?;
        call(
            "EnableUnitFiles",
            unit,
            m.enable_unit_files(&[unit], false, false),
        )
        .await?;
        call("Reload", unit, m.reload()).await
    }

    async fn start(&self, unit: &str) -> Result<(), Error> {
        let m = self.manager().await?;
        call("StartUnit", unit, m.start_unit(unit, "replace"))
            .await
            .map(drop)
    }

    async fn restart(&self, unit: &str) -> Result<(), Error> {
        let m = self.manager().await?;
        call("RestartUnit", unit, m.restart_unit(unit, "replace"))
            .await
            .map(drop)
    }

    async fn reset_failed(&self, unit: &str) -> Result<(), Error> {
        let m = self.manager().await?;
        call("ResetFailedUnit", unit, m.reset_failed_unit(unit)).await
    }
}

/// The task engine's slices (`engine::task_cgroup`, Docker's systemd cgroup driver): a transient
/// slice per task, made with its limits and stopped at the task's cleanup, on the same bus
/// connection kind as the watchdog's.
#[async_trait]
impl crate::engine::task_cgroup::Slices for DbusManager {
    async fn start_slice(
        &self,
        slice: &str,
        properties: &[crate::engine::task_cgroup::SliceProperty],
    ) -> Result<(), String> {
        use crate::engine::task_cgroup::SliceProperty as P;
        use zbus::Variant as Value;
        let props: Vec<(&str, Value<'_>)> = properties
            .iter()
            .map(|p| match p {
                P::Description(d) => ("Description", Value::from(d.as_str())),
                P::CpuQuotaPerSecUsec(v) => ("CPUQuotaPerSecUSec", Value::from(*v)),
                P::CpuQuotaPeriodUsec(v) => ("CPUQuotaPeriodUSec", Value::from(*v)),
                P::CpuWeight(v) => ("CPUWeight", Value::from(*v)),
                P::CpuShares(v) => ("CPUShares", Value::from(*v)),
                P::MemoryMax(v) => ("MemoryMax", Value::from(*v)),
                P::TasksMax(v) => ("TasksMax", Value::from(*v)),
            })
            .collect();
        let m = self.manager().await.map_err(|e| e.to_string())?;
        match call(
            "StartTransientUnit",
            slice,
            m.start_transient_unit(slice, "replace", &props, &[]),
        )
        .await
        {
            Ok(_) => Ok(()),
            // A restarted agent, or a second container of the task: the slice is there.
            Err(e) if method_error(&e) == Some("org.freedesktop.systemd1.UnitExists") => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn stop_slice(&self, slice: &str) -> Result<(), String> {
        let m = self.manager().await.map_err(|e| e.to_string())?;
        match call("StopUnit", slice, m.stop_unit(slice, "replace")).await {
            Ok(_) => Ok(()),
            Err(e) if method_error(&e) == Some("org.freedesktop.systemd1.NoSuchUnit") => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The D-Bus error name of a failed call (`org.freedesktop.systemd1.NoSuchUnit`...).
fn method_error(e: &Error) -> Option<&str> {
    match e {
        Error::Call {
            source: zbus::Error::MethodError(name, _, _),
            ..
        } => Some(name.as_str()),
        _ => None,
    }
}

/// A fake systemd: units with settable states, a log of every call, and injectable failures.
#[derive(Default)]
pub struct FakeManager {
    inner: Mutex<FakeInner>,
}

#[derive(Default)]
struct FakeInner {
    units: std::collections::BTreeMap<String, UnitState>,
    calls: Vec<String>,
    fail: Option<String>,
}

impl FakeManager {
    /// Sets (or installs) a unit's state.
    pub fn set(&self, unit: &str, state: UnitState) {
        self.lock().units.insert(unit.to_owned(), state);
    }
    /// Every call so far, as `"Op unit"`.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }
    /// Makes every call fail with `message` (`None` heals).
    pub fn fail_with(&self, message: Option<&str>) {
        self.lock().fail = message.map(str::to_owned);
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeInner> {
        // A test that panicked while holding the lock already failed; keep its data.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
    fn record(&self, op: &'static str, unit: &str) -> Result<(), Error> {
        let mut inner = self.lock();
        inner.calls.push(format!("{op} {unit}"));
        match &inner.fail {
            Some(m) => Err(Error::Call {
                op,
                unit: unit.to_owned(),
                source: zbus::Error::Failure(m.clone()),
            }),
            None => Ok(()),
        }
    }
    fn update(&self, unit: &str, f: impl FnOnce(&mut UnitState)) {
        if let Some(u) = self.lock().units.get_mut(unit) {
            f(u);
        }
    }
}

#[async_trait]
impl ServiceManager for FakeManager {
    async fn unit_state(&self, unit: &str) -> Result<Option<UnitState>, Error> {
        if self.lock().fail.is_some() {
            self.record("GetUnit", unit)?;
        }
        Ok(self.lock().units.get(unit).cloned())
    }
    async fn enable(&self, unit: &str) -> Result<(), Error> {
        self.record("EnableUnitFiles", unit)?;
        self.update(unit, |u| u.file = FileState::Enabled);
        Ok(())
    }
    async fn start(&self, unit: &str) -> Result<(), Error> {
        self.record("StartUnit", unit)?;
        self.update(unit, |u| {
            u.active = Active::Active;
            u.sub_state = "running".into();
        });
        Ok(())
    }
    async fn restart(&self, unit: &str) -> Result<(), Error> {
        self.record("RestartUnit", unit)?;
        self.update(unit, |u| {
            u.active = Active::Active;
            u.sub_state = "running".into();
        });
        Ok(())
    }
    async fn reset_failed(&self, unit: &str) -> Result<(), Error> {
        self.record("ResetFailedUnit", unit)?;
        self.update(unit, |u| {
            if u.active == Active::Failed {
                u.active = Active::Inactive;
                u.result = "success".into();
            }
        });
        Ok(())
    }
}
