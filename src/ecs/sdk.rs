//! The real [`EcsApi`]: aws-sdk-ecs. Translation between our request types and the SDK's, and
//! nothing else (no retries, no decisions).

use async_trait::async_trait;
use aws_sdk_ecs::types::{
    Attribute as SdkAttribute, ContainerInstanceStatus, DesiredStatus, Resource, Tag,
};

use super::{
    ApiError, Attribute, EcsApi, ErrorKind, PollEndpoints, RegisterRequest, RegisteredInstance,
    TaskSummary,
};
use crate::aws::classify;
use crate::tasks::{ContainerChange, NetworkBinding, TaskChange};

/// ECS limits `reason` texts to 1024 characters (protocol spec §8.2).
const MAX_REASON_CHARS: usize = 1024;

fn truncate_reason(reason: &Option<String>) -> Option<String> {
    reason
        .as_ref()
        .map(|r| r.chars().take(MAX_REASON_CHARS).collect())
}

fn sdk_binding(b: &NetworkBinding) -> aws_sdk_ecs::types::NetworkBinding {
    aws_sdk_ecs::types::NetworkBinding::builder()
        .bind_ip(&b.bind_ip)
        .set_container_port(b.container_port.map(i32::from))
        .set_host_port(b.host_port.map(i32::from))
        .protocol(aws_sdk_ecs::types::TransportProtocol::from(
            b.protocol.as_str(),
        ))
        .set_container_port_range(b.container_port_range.clone())
        .set_host_port_range(b.host_port_range.clone())
        .build()
}

fn sdk_container(c: &ContainerChange) -> aws_sdk_ecs::types::ContainerStateChange {
    aws_sdk_ecs::types::ContainerStateChange::builder()
        .container_name(&c.container_name)
        .set_runtime_id(c.runtime_id.clone())
        .status(c.status.as_str())
        .set_exit_code(c.exit_code)
        .set_reason(truncate_reason(&c.reason))
        .set_image_digest(c.image_digest.clone())
        .set_network_bindings(if c.network_bindings.is_empty() {
            None
        } else {
            Some(c.network_bindings.iter().map(sdk_binding).collect())
        })
        .build()
}

fn epoch(secs: Option<f64>) -> Option<aws_smithy_types::DateTime> {
    secs.filter(|s| s.is_finite())
        .map(aws_smithy_types::DateTime::from_secs_f64)
}

/// ECS through the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkEcs {
    client: aws_sdk_ecs::Client,
}

impl SdkEcs {
    /// A client from the shared SDK configuration; `endpoint` (ECS_BACKEND_HOST) overrides the
    /// endpoint when set.
    pub fn new(sdk: &aws_config::SdkConfig, endpoint: Option<&str>) -> SdkEcs {
        let mut conf = aws_sdk_ecs::config::Builder::from(sdk);
        if let Some(url) = endpoint {
            conf = conf.endpoint_url(url);
        }
        SdkEcs {
            client: aws_sdk_ecs::Client::from_conf(conf.build()),
        }
    }

    /// The SDK client, for the control-plane modules that need more operations.
    pub fn client(&self) -> &aws_sdk_ecs::Client {
        &self.client
    }
}

fn resource_int(name: &str, v: i32) -> Resource {
    Resource::builder()
        .name(name)
        .r#type("INTEGER")
        .integer_value(v)
        .build()
}

fn resource_set(name: &str, ports: &[u16]) -> Resource {
    Resource::builder()
        .name(name)
        .r#type("STRINGSET")
        .set_string_set_value(Some(ports.iter().map(u16::to_string).collect()))
        .build()
}

/// Adds `"name": value` to a JSON request body and fixes Content-Length.
fn add_json_member(http: &mut aws_smithy_runtime_api::http::Request, name: &str, value: &str) {
    let Some(bytes) = http.body().bytes() else {
        return;
    };
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_slice(bytes) else {
        return;
    };
    body.insert(name.to_owned(), serde_json::Value::String(value.to_owned()));
    let Ok(new) = serde_json::to_vec(&body) else {
        return;
    };
    let len = new.len();
    *http.body_mut() = aws_smithy_types::body::SdkBody::from(new);
    http.headers_mut().insert("content-length", len.to_string());
}

#[async_trait]
impl EcsApi for SdkEcs {
    async fn register_container_instance(
        &self,
        req: &RegisterRequest,
    ) -> Result<RegisteredInstance, ApiError> {
        let r = &req.resources;
        let mut call = self
            .client
            .register_container_instance()
            .cluster(&req.cluster)
            .instance_identity_document(&req.identity_document)
            .instance_identity_document_signature(&req.identity_signature)
            .total_resources(resource_int("CPU", r.cpu))
            .total_resources(resource_int("MEMORY", r.memory_mib))
            .total_resources(resource_set("PORTS", &r.ports))
            .total_resources(resource_set("PORTS_UDP", &r.ports_udp))
            .set_container_instance_arn(req.container_instance_arn.clone());
        for a in &req.attributes {
            call = call.attributes(
                SdkAttribute::builder()
                    .name(&a.name)
                    .set_value(a.value.clone())
                    .build()
                    .map_err(|e| ApiError {
                        operation: "RegisterContainerInstance",
                        kind: super::ErrorKind::Client,
                        code: None,
                        message: e.to_string(),
                    })?,
            );
        }
        for (k, v) in &req.tags {
            call = call.tags(Tag::builder().key(k).value(v).build());
        }
        // The public SDK model lacks the agent-only `clientToken` member (the agent model in
        // fixtures/ecs-api has it), so it is added to the serialised JSON body.
        let token = req.client_token.clone();
        let out = call
            .customize()
            .mutate_request(move |http| add_json_member(http, "clientToken", &token))
            .send()
            .await
            .map_err(|e| classify("RegisterContainerInstance", e))?;
        let ci = out.container_instance.ok_or_else(|| ApiError {
            operation: "RegisterContainerInstance",
            kind: super::ErrorKind::Server,
            code: None,
            message: "response has no containerInstance".into(),
        })?;
        Ok(RegisteredInstance {
            arn: ci.container_instance_arn.unwrap_or_default(),
            attributes: ci
                .attributes
                .unwrap_or_default()
                .into_iter()
                .map(|a| Attribute {
                    name: a.name,
                    value: a.value,
                })
                .collect(),
        })
    }

    async fn create_cluster(&self, name: &str) -> Result<(), ApiError> {
        self.client
            .create_cluster()
            .cluster_name(name)
            .send()
            .await
            .map_err(|e| classify("CreateCluster", e))?;
        Ok(())
    }

    async fn cluster_status(&self, cluster: &str) -> Result<Option<String>, ApiError> {
        let out = self
            .client
            .describe_clusters()
            .clusters(cluster)
            .send()
            .await
            .map_err(|e| classify("DescribeClusters", e))?;
        Ok(out
            .clusters
            .unwrap_or_default()
            .into_iter()
            .next()
            .and_then(|c| c.status))
    }

    async fn update_container_instance_state(
        &self,
        cluster: &str,
        container_instance_arn: &str,
        status: &str,
    ) -> Result<(), ApiError> {
        let out = self
            .client
            .update_container_instances_state()
            .cluster(cluster)
            .container_instances(container_instance_arn)
            .status(ContainerInstanceStatus::from(status))
            .send()
            .await
            .map_err(|e| classify("UpdateContainerInstancesState", e))?;
        if let Some(f) = out.failures().first() {
            return Err(ApiError {
                operation: "UpdateContainerInstancesState",
                kind: ErrorKind::Client,
                code: f.reason().map(str::to_owned),
                message: format!(
                    "{}: {}",
                    f.arn().unwrap_or(container_instance_arn),
                    f.detail().or(f.reason()).unwrap_or("failed")
                ),
            });
        }
        Ok(())
    }

    async fn list_tasks(
        &self,
        cluster: &str,
        container_instance_arn: &str,
        desired_status: &str,
    ) -> Result<Vec<String>, ApiError> {
        // Bounded: 100 pages of 100 tasks is far more than one instance can hold.
        const MAX_PAGES: usize = 100;
        let mut arns = Vec::new();
        let mut next: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let out = self
                .client
                .list_tasks()
                .cluster(cluster)
                .container_instance(container_instance_arn)
                .desired_status(DesiredStatus::from(desired_status))
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| classify("ListTasks", e))?;
            arns.extend(out.task_arns().iter().cloned());
            match out.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(arns)
    }

    async fn describe_tasks(
        &self,
        cluster: &str,
        task_arns: &[String],
    ) -> Result<Vec<TaskSummary>, ApiError> {
        if task_arns.is_empty() {
            return Ok(Vec::new());
        }
        let out = self
            .client
            .describe_tasks()
            .cluster(cluster)
            .set_tasks(Some(task_arns.to_vec()))
            .send()
            .await
            .map_err(|e| classify("DescribeTasks", e))?;
        Ok(out
            .tasks()
            .iter()
            .map(|t| TaskSummary {
                arn: t.task_arn().unwrap_or_default().to_owned(),
                started_by: t.started_by().unwrap_or_default().to_owned(),
                last_status: t.last_status().unwrap_or_default().to_owned(),
                desired_status: t.desired_status().unwrap_or_default().to_owned(),
            })
            .collect())
    }

    async fn discover_poll_endpoint(
        &self,
        cluster: &str,
        container_instance: &str,
    ) -> Result<PollEndpoints, ApiError> {
        let out = self
            .client
            .discover_poll_endpoint()
            .cluster(cluster)
            .container_instance(container_instance)
            .send()
            .await
            .map_err(|e| classify("DiscoverPollEndpoint", e))?;
        let acs = out
            .endpoint
            .filter(|e| !e.is_empty())
            .ok_or_else(|| ApiError {
                operation: "DiscoverPollEndpoint",
                kind: super::ErrorKind::Server,
                code: None,
                message: "response has no endpoint".into(),
            })?;
        Ok(PollEndpoints {
            acs,
            telemetry: out.telemetry_endpoint,
        })
    }

    async fn submit_task_state_change(&self, change: &TaskChange) -> Result<(), ApiError> {
        self.client
            .submit_task_state_change()
            .cluster(&change.cluster)
            .task(&change.task_arn)
            .status(change.status.as_str())
            .set_reason(truncate_reason(&change.reason))
            .set_pull_started_at(epoch(change.pull_started_at))
            .set_pull_stopped_at(epoch(change.pull_stopped_at))
            .set_execution_stopped_at(epoch(change.execution_stopped_at))
            .set_containers(if change.containers.is_empty() {
                None
            } else {
                Some(change.containers.iter().map(sdk_container).collect())
            })
            .set_attachments(if change.attachments.is_empty() {
                None
            } else {
                Some(
                    change
                        .attachments
                        .iter()
                        .map(|a| {
                            aws_sdk_ecs::types::AttachmentStateChange::builder()
                                .attachment_arn(&a.attachment_arn)
                                .status(&a.status)
                                .build()
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| ApiError {
                            operation: "SubmitTaskStateChange",
                            kind: crate::aws::ErrorKind::Client,
                            code: None,
                            message: format!("attachments: {e}"),
                        })?,
                )
            })
            .send()
            .await
            .map_err(|e| classify("SubmitTaskStateChange", e))?;
        Ok(())
    }
}
