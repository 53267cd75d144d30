//! The Auto Scaling operations draining needs, behind [`AutoScalingApi`]: which group the
//! instance belongs to, the termination hook's settings, heartbeats and completion.
//!
//! [`SdkAutoScaling`] wraps aws-sdk-autoscaling (endpoint from the SDK's standard variables, e.g.
//! `AWS_ENDPOINT_URL_AUTO_SCALING`); [`FakeAutoScaling`] records calls for unit tests and can
//! inject failures. Errors are classified once ([`ApiError`]); this module never retries and never
//! decides which hook to complete.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::aws::{ApiError, ErrorKind, classify};

/// What DescribeLifecycleHooks says about one hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookInfo {
    /// Hook name.
    pub name: String,
    /// `autoscaling:EC2_INSTANCE_TERMINATING` or `..._LAUNCHING`.
    pub transition: String,
    /// How long Auto Scaling waits for a heartbeat or completion before the default result.
    pub heartbeat_timeout: Duration,
}

/// The Auto Scaling operations the agent uses.
#[async_trait]
pub trait AutoScalingApi: Send + Sync {
    /// DescribeAutoScalingInstances: the group of `instance_id`, or `None` if it is in no group.
    async fn group_of_instance(&self, instance_id: &str) -> Result<Option<String>, ApiError>;

    /// DescribeLifecycleHooks for one hook of `group`; `None` when the group has no such hook.
    async fn lifecycle_hook(&self, group: &str, hook: &str) -> Result<Option<HookInfo>, ApiError>;

    /// RecordLifecycleActionHeartbeat by instance id (no token: the instance never sees it).
    async fn record_heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
    ) -> Result<(), ApiError>;

    /// CompleteLifecycleAction by instance id with `result` (`CONTINUE` or `ABANDON`).
    async fn complete_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: &str,
    ) -> Result<(), ApiError>;
}

/// Auto Scaling through the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkAutoScaling {
    client: aws_sdk_autoscaling::Client,
}

impl SdkAutoScaling {
    /// A client from the shared SDK configuration.
    pub fn new(sdk: &aws_config::SdkConfig) -> SdkAutoScaling {
        SdkAutoScaling {
            client: aws_sdk_autoscaling::Client::new(sdk),
        }
    }
}

#[async_trait]
impl AutoScalingApi for SdkAutoScaling {
    async fn group_of_instance(&self, instance_id: &str) -> Result<Option<String>, ApiError> {
        let out = self
            .client
            .describe_auto_scaling_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .map_err(|e| classify("DescribeAutoScalingInstances", e))?;
        Ok(out
            .auto_scaling_instances()
            .iter()
            .find(|i| i.instance_id() == Some(instance_id) || i.instance_id().is_none())
            .and_then(|i| i.auto_scaling_group_name())
            .filter(|g| !g.is_empty())
            .map(str::to_owned))
    }

    async fn lifecycle_hook(&self, group: &str, hook: &str) -> Result<Option<HookInfo>, ApiError> {
        let out = self
            .client
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(group)
            .lifecycle_hook_names(hook)
            .send()
            .await
            .map_err(|e| classify("DescribeLifecycleHooks", e))?;
        Ok(out
            .lifecycle_hooks()
            .iter()
            .find(|h| h.lifecycle_hook_name() == Some(hook))
            .map(|h| HookInfo {
                name: hook.to_owned(),
                transition: h.lifecycle_transition().unwrap_or_default().to_owned(),
                // AWS's default heartbeat timeout is one hour.
                heartbeat_timeout: Duration::from_secs(
                    h.heartbeat_timeout().map_or(3600, |t| t.max(0) as u64),
                ),
            }))
    }

    async fn record_heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
    ) -> Result<(), ApiError> {
        self.client
            .record_lifecycle_action_heartbeat()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance_id)
            .send()
            .await
            .map_err(|e| classify("RecordLifecycleActionHeartbeat", e))?;
        Ok(())
    }

    async fn complete_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: &str,
    ) -> Result<(), ApiError> {
        self.client
            .complete_lifecycle_action()
            .auto_scaling_group_name(group)
            .lifecycle_hook_name(hook)
            .instance_id(instance_id)
            .lifecycle_action_result(result)
            .send()
            .await
            .map_err(|e| classify("CompleteLifecycleAction", e))?;
        Ok(())
    }
}

/// One call a [`FakeAutoScaling`] received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// DescribeAutoScalingInstances.
    GroupOf(String),
    /// DescribeLifecycleHooks (group, hook).
    Hook(String, String),
    /// RecordLifecycleActionHeartbeat (group, hook, instance).
    Heartbeat(String, String, String),
    /// CompleteLifecycleAction (group, hook, instance, result).
    Complete(String, String, String, String),
}

/// A scriptable, recording fake for unit tests.
#[derive(Debug, Default)]
pub struct FakeAutoScaling {
    /// The group every instance belongs to.
    pub group: Option<String>,
    /// The hook DescribeLifecycleHooks returns (whatever name is asked for when it matches).
    pub hook: Option<HookInfo>,
    /// Errors returned by the next CompleteLifecycleAction calls, in order.
    pub complete_errors: Mutex<VecDeque<ApiError>>,
    /// Errors returned by the next heartbeat calls, in order.
    pub heartbeat_errors: Mutex<VecDeque<ApiError>>,
    /// Every call, in order.
    pub calls: Mutex<Vec<Call>>,
}

impl FakeAutoScaling {
    fn push(&self, call: Call) {
        self.calls.lock().expect("fake lock").push(call);
    }

    /// The calls received so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().expect("fake lock").clone()
    }

    /// A client-side error such as the API's `ValidationError`.
    pub fn error(operation: &'static str, kind: ErrorKind, code: &str) -> ApiError {
        ApiError {
            operation,
            kind,
            code: Some(code.to_owned()),
            message: format!("injected {code}"),
        }
    }
}

#[async_trait]
impl AutoScalingApi for FakeAutoScaling {
    async fn group_of_instance(&self, instance_id: &str) -> Result<Option<String>, ApiError> {
        self.push(Call::GroupOf(instance_id.to_owned()));
        Ok(self.group.clone())
    }

    async fn lifecycle_hook(&self, group: &str, hook: &str) -> Result<Option<HookInfo>, ApiError> {
        self.push(Call::Hook(group.to_owned(), hook.to_owned()));
        Ok(self.hook.clone().filter(|h| h.name == hook))
    }

    async fn record_heartbeat(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
    ) -> Result<(), ApiError> {
        self.push(Call::Heartbeat(
            group.to_owned(),
            hook.to_owned(),
            instance_id.to_owned(),
        ));
        match self.heartbeat_errors.lock().expect("fake lock").pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    async fn complete_action(
        &self,
        group: &str,
        hook: &str,
        instance_id: &str,
        result: &str,
    ) -> Result<(), ApiError> {
        self.push(Call::Complete(
            group.to_owned(),
            hook.to_owned(),
            instance_id.to_owned(),
            result.to_owned(),
        ));
        match self.complete_errors.lock().expect("fake lock").pop_front() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
