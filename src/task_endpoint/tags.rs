//! `/taskWithTags`' tags (task-metadata.md §7): ECS `ListTagsForResource` for the container
//! instance and for the task, with the instance's credentials, on every request (tags change in
//! ECS at any time, so nothing is cached). Owns the call and the translation of a failure into the
//! facts of an `Errors` entry; never decides how the document looks ([`super::metadata`] does).

use std::collections::BTreeMap;

use async_trait::async_trait;

/// Why one resource's tags could not be read: the facts of an `Errors` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagFailure {
    /// The service's error code (`AccessDeniedException`), empty for a transport failure.
    pub code: String,
    /// What went wrong.
    pub message: String,
    /// The HTTP status of the reply, when there was one.
    pub status: Option<u16>,
    /// The request id ECS gave the failed call.
    pub request_id: Option<String>,
}

/// Where tags come from.
#[async_trait]
pub trait TagSource: Send + Sync {
    /// The tags of one ECS resource (a task or a container instance), by key.
    async fn tags(&self, resource_arn: &str) -> Result<BTreeMap<String, String>, TagFailure>;
}

/// ECS through the AWS SDK, with the agent's client (its credentials, endpoint and timeouts).
pub struct EcsTags(pub aws_sdk_ecs::Client);

#[async_trait]
impl TagSource for EcsTags {
    async fn tags(&self, resource_arn: &str) -> Result<BTreeMap<String, String>, TagFailure> {
        use aws_sdk_ecs::error::{DisplayErrorContext, ProvideErrorMetadata};
        use aws_sdk_ecs::operation::RequestId;
        match self
            .0
            .list_tags_for_resource()
            .resource_arn(resource_arn)
            .send()
            .await
        {
            Ok(out) => Ok(out
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
                .collect()),
            Err(err) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                Err(match err.as_service_error() {
                    Some(se) => TagFailure {
                        code: se.code().unwrap_or("").to_owned(),
                        message: se.message().unwrap_or("").to_owned(),
                        status,
                        request_id: se.request_id().map(str::to_owned),
                    },
                    None => TagFailure {
                        code: String::new(),
                        message: DisplayErrorContext(&err).to_string(),
                        status,
                        request_id: None,
                    },
                })
            }
        }
    }
}
