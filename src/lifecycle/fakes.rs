//! Hand-written fakes for the lifecycle unit tests: IMDS (paths switchable at run time, reads
//! counted, failures injectable) and ECS (container instance state and tasks, calls recorded).

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::aws::{ApiError, ErrorKind};
use crate::ecs::{EcsApi, RegisterRequest, RegisteredInstance, TaskSummary};
use crate::imds::{self, InstanceMetadata};

use super::signals::{LIFE_CYCLE_PATH, TARGET_STATE_PATH};

#[derive(Default)]
struct ImdsState {
    values: BTreeMap<String, String>,
    failing: BTreeMap<String, bool>,
    reads: BTreeMap<String, u32>,
}

/// A fake IMDS: a map of paths to bodies; absent paths are 404.
#[derive(Default)]
pub struct FakeImds {
    state: Mutex<ImdsState>,
}

impl FakeImds {
    /// A Spot instance in service.
    pub fn spot() -> FakeImds {
        let f = FakeImds::default();
        f.set(LIFE_CYCLE_PATH, Some("spot"));
        f.set(TARGET_STATE_PATH, Some("InService"));
        f
    }

    /// An on-demand instance in service.
    pub fn on_demand() -> FakeImds {
        let f = FakeImds::default();
        f.set(LIFE_CYCLE_PATH, Some("on-demand"));
        f.set(TARGET_STATE_PATH, Some("InService"));
        f
    }

    /// Sets (or removes, with `None`) a path.
    pub fn set(&self, path: &str, body: Option<&str>) {
        let mut s = self.state.lock().unwrap();
        match body {
            Some(b) => s.values.insert(path.to_owned(), b.to_owned()),
            None => s.values.remove(path),
        };
    }

    /// Makes reads of `path` fail (as an unreachable IMDS) or succeed again.
    pub fn fail(&self, path: &str, failing: bool) {
        self.state
            .lock()
            .unwrap()
            .failing
            .insert(path.to_owned(), failing);
    }

    /// How many times `path` was read.
    pub fn reads(&self, path: &str) -> u32 {
        self.state
            .lock()
            .unwrap()
            .reads
            .get(path)
            .copied()
            .unwrap_or(0)
    }
}

#[async_trait]
impl InstanceMetadata for FakeImds {
    async fn get(&self, path: &str) -> Result<Option<String>, imds::Error> {
        let mut s = self.state.lock().unwrap();
        *s.reads.entry(path.to_owned()).or_default() += 1;
        if s.failing.get(path).copied().unwrap_or(false) {
            return Err(imds::Error::Unreachable {
                endpoint: "fake".into(),
                path: path.into(),
                attempts: 1,
                elapsed: Duration::ZERO,
                last: "HTTP 500".into(),
            });
        }
        Ok(s.values.get(path).cloned())
    }
}

/// One call a [`FakeEcs`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EcsCall {
    /// UpdateContainerInstancesState (arn, status).
    UpdateState(String, String),
    /// ListTasks (desired status).
    ListTasks(String),
    /// DescribeTasks (number of ARNs).
    DescribeTasks(usize),
}

/// A fake ECS for draining: the tasks on the instance and the calls received.
#[derive(Default)]
pub struct FakeEcs {
    /// Tasks on the instance.
    pub tasks: Mutex<Vec<TaskSummary>>,
    /// Errors for the next UpdateContainerInstancesState calls.
    pub update_errors: Mutex<VecDeque<ApiError>>,
    /// Every call.
    pub calls: Mutex<Vec<EcsCall>>,
}

impl FakeEcs {
    /// A task summary.
    pub fn task(arn: &str, started_by: &str, last: &str, desired: &str) -> TaskSummary {
        TaskSummary {
            arn: arn.into(),
            started_by: started_by.into(),
            last_status: last.into(),
            desired_status: desired.into(),
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<EcsCall> {
        self.calls.lock().unwrap().clone()
    }

    /// UpdateContainerInstancesState calls so far.
    pub fn state_updates(&self) -> usize {
        self.calls()
            .iter()
            .filter(|c| matches!(c, EcsCall::UpdateState(..)))
            .count()
    }

    /// Sets every task's last status.
    pub fn stop_all(&self) {
        for t in self.tasks.lock().unwrap().iter_mut() {
            t.last_status = "STOPPED".into();
            t.desired_status = "STOPPED".into();
        }
    }

    /// A throttling error.
    pub fn throttled(operation: &'static str) -> ApiError {
        ApiError {
            operation,
            kind: ErrorKind::Throttled,
            code: Some("ThrottlingException".into()),
            message: "Rate exceeded".into(),
        }
    }
}

#[async_trait]
impl EcsApi for FakeEcs {
    async fn register_container_instance(
        &self,
        _req: &RegisterRequest,
    ) -> Result<RegisteredInstance, ApiError> {
        unreachable!("lifecycle never registers")
    }
    async fn create_cluster(&self, _name: &str) -> Result<(), ApiError> {
        unreachable!("lifecycle never creates clusters")
    }
    async fn cluster_status(&self, _cluster: &str) -> Result<Option<String>, ApiError> {
        unreachable!("lifecycle never describes clusters")
    }
    async fn update_container_instance_state(
        &self,
        _cluster: &str,
        arn: &str,
        status: &str,
    ) -> Result<(), ApiError> {
        self.calls
            .lock()
            .unwrap()
            .push(EcsCall::UpdateState(arn.into(), status.into()));
        match self.update_errors.lock().unwrap().pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
    async fn list_tasks(
        &self,
        _cluster: &str,
        _arn: &str,
        desired_status: &str,
    ) -> Result<Vec<String>, ApiError> {
        self.calls
            .lock()
            .unwrap()
            .push(EcsCall::ListTasks(desired_status.into()));
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .iter()
            .filter(|t| t.desired_status == desired_status)
            .map(|t| t.arn.clone())
            .collect())
    }
    async fn describe_tasks(
        &self,
        _cluster: &str,
        arns: &[String],
    ) -> Result<Vec<TaskSummary>, ApiError> {
        self.calls
            .lock()
            .unwrap()
            .push(EcsCall::DescribeTasks(arns.len()));
        Ok(self
            .tasks
            .lock()
            .unwrap()
            .iter()
            .filter(|t| arns.contains(&t.arn))
            .cloned()
            .collect())
    }
}
