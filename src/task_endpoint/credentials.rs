//! `/v1/credentials?id=` and `/v2/credentials/<id>` (task-credentials.md §4.2–§4.4): the stored
//! entry as exactly five keys, or an error body with `code`, `message` and `HTTPErrorCode`; one
//! audit record per request (§5).
//!
//! Never logs the id nor anything of the entry but the task ARN.

use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;

use super::audit::{Event, RequestInfo};
use super::{EndpointState, json_response};
use crate::credentials::{Lookup, RoleType};

/// Which route was asked: only the error messages' prefix differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// `/v1/credentials?id=`.
    V1,
    /// `/v2/credentials/<id>`.
    V2,
}

impl Version {
    fn prefix(self) -> &'static str {
        match self {
            Version::V1 => "CredentialsV1Request",
            Version::V2 => "CredentialsV2Request",
        }
    }
}

/// The success body: exactly these keys, in this order.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CredentialsBody<'a> {
    role_arn: &'a str,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    token: &'a str,
    expiration: &'a str,
}

/// The error body, byte-compatible with upstream's.
#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    #[serde(rename = "HTTPErrorCode")]
    http_error_code: u16,
}

/// The answer to a credentials request, before it becomes HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Status.
    pub status: StatusCode,
    /// JSON body.
    pub body: Vec<u8>,
    /// The task the id belongs to, when known.
    pub task_arn: Option<String>,
    /// The role, for a successful answer (the audit event).
    pub role: Option<RoleType>,
}

fn error(status: StatusCode, code: &str, message: String, task_arn: Option<String>) -> Answer {
    let body = serde_json::to_vec(&ErrorBody {
        code,
        message,
        http_error_code: status.as_u16(),
    })
    .unwrap_or_default();
    Answer {
        status,
        body,
        task_arn,
        role: None,
    }
}

/// Looks `id` up (§4.4's checks, in order).
pub fn answer(store: &crate::credentials::CredentialsStore, id: &str, v: Version) -> Answer {
    let prefix = v.prefix();
    if id.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "NoIdInRequest",
            format!("{prefix}: No Credential ID in the request"),
            None,
        );
    }
    match store.lookup(id) {
        Lookup::Pending { task_arn, .. } => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "CredentialsUninitialized",
            format!("{prefix}: Credentials uninitialized for ID"),
            Some(task_arn),
        ),
        Lookup::Unknown => error(
            StatusCode::BAD_REQUEST,
            "InvalidIdInRequest",
            format!("{prefix}: Credentials not found"),
            None,
        ),
        Lookup::Found(e) => {
            let c = &e.credentials;
            match serde_json::to_vec(&CredentialsBody {
                role_arn: &c.role_arn,
                access_key_id: &c.access_key_id,
                secret_access_key: &c.secret_access_key,
                token: &c.session_token,
                expiration: &c.expiration,
            }) {
                Ok(body) => Answer {
                    status: StatusCode::OK,
                    body,
                    task_arn: Some(e.task_arn),
                    role: Some(e.role),
                },
                Err(_) => error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "InternalServerError",
                    "Internal server error".into(),
                    Some(e.task_arn),
                ),
            }
        }
    }
}

/// Answers one credentials request and writes its audit record.
pub fn serve(s: &EndpointState, request: &RequestInfo, id: &str, v: Version) -> Response {
    let a = answer(&s.credentials, id, v);
    match a.role {
        Some(role) => s.audit.served(
            request,
            a.status.as_u16(),
            a.task_arn.as_deref().unwrap_or(""),
            match role {
                RoleType::TaskApplication => Event::GetCredentials,
                RoleType::TaskExecution => Event::GetCredentialsExecutionRole,
            },
            &s.instance,
        ),
        None => s
            .audit
            .failed(request, a.status.as_u16(), a.task_arn.as_deref()),
    }
    json_response(a.status, a.body)
}
