//! Task secrets (issue 19; task-credentials.md §9.2–9.5): the `secrets` of a task's containers
//! from SSM Parameter Store and Secrets Manager, and the private-registry logins of their
//! `repositoryCredentials`, fetched with the task's execution-role credentials once per task
//! start, before the pulls and creates that need them.
//!
//! Owns the grouping into calls (SSM: by region, at most [`SSM_BATCH`] names a call, the batches
//! at once; Secrets Manager: one call per secret, all at once), the ARN forms (a parameter ARN's
//! own region; `secret:<name>:<json-key>:<version-stage>:<version-id>`), the retry of failures a
//! retry can help (throttling, 5xx, transport), and the error texts the official agent gives.
//!
//! The values live only in the engine's memory ([`Resolved`], whose `Debug` shows names only)
//! until they reach Docker's container config (or its pull's auth); never a log line, the state file or `/v1/tasks`.
//! Never decides when to fetch (the reconciler does) nor how a container is built (`docker`).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::tasks::RoleCredentials;

/// SSM `GetParameters` takes at most this many names.
pub const SSM_BATCH: usize = 10;
/// Attempts of a call that failed in a way a retry can help.
const ATTEMPTS: u32 = 3;
/// Wait before the second attempt (doubled for the third).
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// One item of a container's `secrets` as ACS sends it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretSpec {
    /// The environment variable (or log option) name.
    #[serde(default)]
    pub name: String,
    /// Parameter name or ARN (`ssm`), secret ARN (`asm`).
    #[serde(default)]
    pub value_from: String,
    /// The region ECS resolved for it.
    #[serde(default)]
    pub region: Option<String>,
    /// `ssm` or `asm`.
    #[serde(default)]
    pub provider: Option<String>,
    /// `ENVIRONMENT_VARIABLE` (the only type on Linux).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// `CONTAINER` (environment) or `LOG_DRIVER` (`logConfiguration.secretOptions`).
    #[serde(default)]
    pub target: Option<String>,
}

impl SecretSpec {
    fn is_ssm(&self) -> bool {
        self.provider.as_deref().is_none_or(|p| p == "ssm")
    }

    /// Whether the value goes to the log driver's options rather than the environment.
    pub fn for_log_driver(&self) -> bool {
        self.target.as_deref() == Some("LOG_DRIVER")
    }
}

/// A container's `registryAuthentication` of type `asm` (`repositoryCredentials`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsmAuthData {
    /// The secret's ARN (or name) holding `{"username", "password"}`.
    #[serde(default)]
    pub credentials_parameter: String,
    /// The region ECS resolved for it.
    #[serde(default)]
    pub region: Option<String>,
}

/// A registry user and password from Secrets Manager (`Debug` shows the user only).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RegistryLogin {
    /// `username`.
    pub username: String,
    /// `password`.
    pub password: String,
}

impl std::fmt::Debug for RegistryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryLogin")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// One container's values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ContainerSecrets {
    /// Environment variables (they override the task definition's `environment`).
    pub env: Vec<(String, String)>,
    /// Log driver options.
    pub log_options: Vec<(String, String)>,
    /// Variables of its environment files (below the task definition's `environment`).
    pub file_env: Vec<(String, String)>,
    /// Its private registry's login, for its pull only.
    pub registry: Option<RegistryLogin>,
}

impl std::fmt::Debug for ContainerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |v: &[(String, String)]| v.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        f.debug_struct("ContainerSecrets")
            .field("env", &names(&self.env))
            .field("log_options", &names(&self.log_options))
            .field("file_env", &names(&self.file_env))
            .field("registry", &self.registry)
            .finish()
    }
}

/// A task's values, by container name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// By container.
    pub containers: HashMap<String, ContainerSecrets>,
}

/// SSM's answer to one `GetParameters`.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Parameters {
    /// Values by the name (or ARN) as it was asked.
    pub values: HashMap<String, String>,
    /// The asked names SSM does not know.
    pub invalid: Vec<String>,
}

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchError {
    /// The service's error code (`AccessDeniedException`), empty for a transport failure.
    pub code: String,
    /// What went wrong (`<code>: <message>` as the SDKs print it).
    pub text: String,
    /// Whether a later attempt may succeed (throttling, 5xx, transport).
    pub retryable: bool,
}

/// SSM and Secrets Manager, signed with the given credentials.
#[async_trait]
pub trait SecretSource: Send + Sync {
    /// SSM `GetParameters{Names, WithDecryption: true}` in `region` (at most [`SSM_BATCH`]).
    async fn get_parameters(
        &self,
        creds: &RoleCredentials,
        region: &str,
        names: &[String],
    ) -> Result<Parameters, FetchError>;

    /// Secrets Manager `GetSecretValue` in `region`: the `SecretString`.
    async fn get_secret_value(
        &self,
        creds: &RoleCredentials,
        region: &str,
        secret_id: &str,
        version_stage: Option<&str>,
        version_id: Option<&str>,
    ) -> Result<String, FetchError>;
}

/// A Secrets Manager reference parsed from `valueFrom` (task-credentials.md §9.4).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AsmRef {
    /// The ARN with `secret:<name>` only.
    pub secret_id: String,
    /// The ARN's region.
    pub region: String,
    /// Key of the JSON object in `SecretString`, if any.
    pub json_key: Option<String>,
    /// `VersionStage`, if any.
    pub version_stage: Option<String>,
    /// `VersionId`, if any.
    pub version_id: Option<String>,
}

impl AsmRef {
    /// The `GetSecretValue` this reference needs: the same without the JSON key (references
    /// that differ only in their key share one call).
    fn call(&self) -> AsmRef {
        AsmRef {
            json_key: None,
            ..self.clone()
        }
    }
}

const INVALID_ASM_ARN: &str = "an invalid ARN format for the AWS Secrets Manager secret was specified. Specify a valid ARN and try again.";

/// The official text for a Secrets Manager secret that does not exist (or not in that region).
fn not_found(secret_id: &str) -> String {
    format!(
        "ResourceNotFoundException: The task can't retrieve the secret with ARN '{secret_id}' from AWS Secrets Manager. Check whether the secret exists in the specified Region"
    )
}

/// Parses a Secrets Manager `valueFrom`: `arn:<partition>:secretsmanager:<region>:<account>:secret:<name>`
/// or with `:<json-key>:<version-stage>:<version-id>` (empty parts allowed).
pub fn parse_asm(value_from: &str) -> Result<AsmRef, String> {
    let parts: Vec<&str> = value_from.splitn(6, ':').collect();
    let [arn, _partition, service, region, _account, resource] = parts[..] else {
        return Err(INVALID_ASM_ARN.to_owned());
    };
    if arn != "arn" || service != "secretsmanager" || region.is_empty() {
        return Err(INVALID_ASM_ARN.to_owned());
    }
    let fields: Vec<&str> = resource.split(':').collect();
    let nonempty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let prefix = &value_from[..value_from.len() - resource.len()];
    match fields[..] {
        ["secret", name] if !name.is_empty() => Ok(AsmRef {
            secret_id: value_from.to_owned(),
            region: region.to_owned(),
            json_key: None,
            version_stage: None,
            version_id: None,
        }),
        ["secret", name, key, stage, id] if !name.is_empty() => Ok(AsmRef {
            secret_id: format!("{prefix}secret:{name}"),
            region: region.to_owned(),
            json_key: nonempty(key),
            version_stage: nonempty(stage),
            version_id: nonempty(id),
        }),
        _ => Err(INVALID_ASM_ARN.to_owned()),
    }
}

/// The region an SSM `valueFrom` is fetched in: a parameter ARN's own, else the one ECS gave,
/// else `default_region`.
pub fn ssm_region(s: &SecretSpec, default_region: &str) -> String {
    let mut parts = s.value_from.splitn(6, ':');
    if parts.next() == Some("arn")
        && let (Some(_), Some("ssm"), Some(region)) = (parts.next(), parts.next(), parts.next())
        && !region.is_empty()
    {
        return region.to_owned();
    }
    s.region
        .clone()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| default_region.to_owned())
}

/// A JSON value as text (`"x"` → `x`, `5` → `5`, `true` → `true`, objects as JSON).
fn json_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Calls `call` until it succeeds, fails in a way a retry cannot help, or [`ATTEMPTS`] are
/// spent (waits of 0.5 s, then 1 s).
pub(super) async fn with_retries<T, F, Fut>(mut call: F) -> Result<T, FetchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, FetchError>>,
{
    let mut wait = RETRY_AFTER;
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if e.retryable && attempt < ATTEMPTS => {
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Fetches every secret of `containers` (name → its secrets). `Err` is the task's stop reason,
/// in the official agent's words.
pub async fn resolve(
    source: &dyn SecretSource,
    creds: Option<&RoleCredentials>,
    containers: &BTreeMap<String, Vec<SecretSpec>>,
    default_region: &str,
) -> Result<Resolved, String> {
    let all: Vec<(&String, &SecretSpec)> = containers
        .iter()
        .flat_map(|(c, list)| list.iter().map(move |s| (c, s)))
        .collect();
    if all.is_empty() {
        return Ok(Resolved::default());
    }
    let has_ssm = all.iter().any(|(_, s)| s.is_ssm());
    let Some(creds) = creds else {
        return Err(if has_ssm {
            "ssm secret resource: unable to find execution role credentials"
        } else {
            "ASM secret resource: unable to find execution role credentials"
        }
        .to_owned());
    };

    // Where each secret is asked (by position in `all`): its SSM region, or its parsed
    // Secrets Manager reference.
    let mut ssm_regions: Vec<Option<String>> = vec![None; all.len()];
    let mut asm_parsed: Vec<Option<AsmRef>> = vec![None; all.len()];

    // SSM: by region, batches of at most SSM_BATCH distinct names, all at once.
    let mut by_region: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (i, (_, s)) in all.iter().enumerate().filter(|(_, (_, s))| s.is_ssm()) {
        let region = ssm_region(s, default_region);
        let names = by_region.entry(region.clone()).or_default();
        if !names.contains(&s.value_from) {
            names.push(s.value_from.clone());
        }
        ssm_regions[i] = Some(region);
    }
    let batches: Vec<(String, Vec<String>)> = by_region
        .iter()
        .flat_map(|(region, names)| {
            names
                .chunks(SSM_BATCH)
                .map(move |chunk| (region.clone(), chunk.to_vec()))
        })
        .collect();
    let answers =
        futures_util::future::join_all(batches.iter().map(|(region, names)| {
            with_retries(move || source.get_parameters(creds, region, names))
        }))
        .await;
    let mut ssm: HashMap<(String, String), String> = HashMap::new();
    for ((region, _), answer) in batches.iter().zip(answers) {
        let got = answer.map_err(|e| {
            format!(
                "fetching secret data from SSM Parameter Store in {region}: {}",
                e.text
            )
        })?;
        if !got.invalid.is_empty() {
            return Err(format!(
                "fetching secret data from SSM Parameter Store in {region}: invalid parameters: {}",
                got.invalid.join(",")
            ));
        }
        for (name, value) in got.values {
            ssm.insert((region.clone(), name), value);
        }
    }

    // Secrets Manager: one call per distinct (secret, stage, version), all at once.
    let mut asm_refs: Vec<AsmRef> = Vec::new();
    for (i, (_, s)) in all.iter().enumerate().filter(|(_, (_, s))| !s.is_ssm()) {
        let r = parse_asm(&s.value_from)?;
        let call = r.call();
        if !asm_refs.contains(&call) {
            asm_refs.push(call);
        }
        asm_parsed[i] = Some(r);
    }
    let answers = futures_util::future::join_all(asm_refs.iter().map(|r| {
        with_retries(move || {
            source.get_secret_value(
                creds,
                &r.region,
                &r.secret_id,
                r.version_stage.as_deref(),
                r.version_id.as_deref(),
            )
        })
    }))
    .await;
    let mut asm: HashMap<AsmRef, String> = HashMap::new();
    for (r, answer) in asm_refs.into_iter().zip(answers) {
        let value = answer.map_err(|e| {
            if e.code == "ResourceNotFoundException" {
                not_found(&r.secret_id)
            } else {
                format!(
                    "fetching secret data from AWS Secrets Manager in region {}: secret {}: {}",
                    r.region, r.secret_id, e.text
                )
            }
        })?;
        asm.insert(r, value);
    }

    let mut resolved = Resolved::default();
    for (i, (container, s)) in all.into_iter().enumerate() {
        let value = if let Some(region) = ssm_regions[i].take() {
            let key = (region, s.value_from.clone());
            ssm.get(&key).cloned().ok_or_else(|| {
                format!(
                    "fetching secret data from SSM Parameter Store in {}: invalid parameters: {}",
                    key.0, s.value_from
                )
            })?
        } else {
            let r = asm_parsed[i]
                .take()
                .ok_or_else(|| INVALID_ASM_ARN.to_owned())?;
            let text = asm.get(&r.call()).cloned().unwrap_or_default();
            match &r.json_key {
                None => text,
                Some(key) => {
                    let missing = || {
                        format!(
                            "retrieved secret from Secrets Manager did not contain json key {key}"
                        )
                    };
                    let object: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(&text).map_err(|_| missing())?;
                    object.get(key).map(json_text).ok_or_else(missing)?
                }
            }
        };
        let entry = resolved.containers.entry(container.clone()).or_default();
        if s.for_log_driver() {
            entry.log_options.push((s.name.clone(), value));
        } else {
            entry.env.push((s.name.clone(), value));
        }
    }
    Ok(resolved)
}

/// The registry logins of `containers` (name → its `asmAuthData`): one `GetSecretValue` per
/// distinct secret, all at once; the `SecretString` must be a JSON object with non-empty
/// `username` and `password`. `Err` is the task's stop reason: the pull it was for cannot
/// happen, so it reads `CannotPullContainerError: ` and then the official agent's words.
pub async fn registry_logins(
    source: &dyn SecretSource,
    creds: Option<&RoleCredentials>,
    containers: &BTreeMap<String, AsmAuthData>,
    default_region: &str,
) -> Result<HashMap<String, RegistryLogin>, String> {
    if containers.is_empty() {
        return Ok(HashMap::new());
    }
    let fail = |why: String| format!("CannotPullContainerError: {why}");
    let Some(creds) = creds else {
        return Err(fail(
            "asm resource: unable to find execution role credentials".to_owned(),
        ));
    };
    let region_of = |a: &AsmAuthData| {
        parse_asm(&a.credentials_parameter)
            .ok()
            .map(|r| r.region)
            .or_else(|| a.region.clone().filter(|r| !r.is_empty()))
            .unwrap_or_else(|| default_region.to_owned())
    };
    let keys: Vec<(&String, (String, String))> = containers
        .iter()
        .map(|(name, a)| (name, (region_of(a), a.credentials_parameter.clone())))
        .collect();
    let mut calls: Vec<(String, String)> = keys.iter().map(|(_, k)| k.clone()).collect();
    calls.sort();
    calls.dedup();
    let answers = futures_util::future::join_all(calls.iter().map(|(region, id)| {
        with_retries(move || source.get_secret_value(creds, region, id, None, None))
    }))
    .await;
    let mut logins: HashMap<(String, String), RegistryLogin> = HashMap::new();
    for ((region, id), answer) in calls.into_iter().zip(answers) {
        let text = answer.map_err(|e| {
            fail(if e.code == "ResourceNotFoundException" {
                not_found(&id)
            } else {
                format!("asm fetching secret from the service for {id}: {}", e.text)
            })
        })?;
        logins.insert(
            (region, id),
            registry_login(&text).map_err(|e| fail(e.to_owned()))?,
        );
    }
    Ok(keys
        .into_iter()
        .filter_map(|(name, key)| Some((name.clone(), logins.get(&key)?.clone())))
        .collect())
}

/// A registry login from a `SecretString` (the official agent's checks and texts).
fn registry_login(text: &str) -> Result<RegistryLogin, &'static str> {
    if text.is_empty() {
        return Err("asm fetching authorization data: empty secrets value");
    }
    #[derive(Deserialize)]
    struct Value {
        username: Option<String>,
        password: Option<String>,
    }
    let v: Value = serde_json::from_str(text).map_err(
        |_| "asm fetching authorization data: unable to unmarshal secret value, invalid schema",
    )?;
    let username = v.username.unwrap_or_default();
    let password = v.password.unwrap_or_default();
    if username.is_empty() {
        return Err("asm fetching username: AuthorizationData is malformed, empty field");
    }
    if password.is_empty() {
        return Err("asm fetching password: AuthorizationData is malformed, empty field");
    }
    Ok(RegistryLogin { username, password })
}

/// SSM and Secrets Manager through the AWS SDK, with the task's execution-role credentials and
/// the agent's SDK settings (endpoint, timeouts).
#[derive(Debug, Default)]
pub struct SdkSecrets;

/// The agent's SDK settings for `region` (endpoint, timeouts).
async fn sdk_config(region: &str) -> Result<aws_config::SdkConfig, FetchError> {
    crate::aws::sdk_config(region)
        .await
        .map_err(|e| FetchError {
            code: String::new(),
            text: e.to_string(),
            retryable: false,
        })
}

fn static_credentials(c: &RoleCredentials) -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new(
        c.access_key_id.clone(),
        c.secret_access_key.clone(),
        Some(c.session_token.clone()),
        None,
        "ecs-hostd-execution-role",
    )
}

fn fetch_error<E, R>(err: aws_smithy_runtime_api::client::result::SdkError<E, R>) -> FetchError
where
    E: aws_smithy_types::error::metadata::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_smithy_runtime_api::client::result::SdkError;
    match &err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("").to_owned();
            let message = se.err().message().unwrap_or("");
            let retryable = code.contains("Throttl")
                || code == "InternalServerError"
                || code == "InternalServiceError"
                || code == "ServiceUnavailable";
            FetchError {
                text: format!("{code}: {message}"),
                code,
                retryable,
            }
        }
        _ => FetchError {
            code: String::new(),
            text: aws_smithy_types::error::display::DisplayErrorContext(&err).to_string(),
            retryable: true,
        },
    }
}

#[async_trait]
impl SecretSource for SdkSecrets {
    async fn get_parameters(
        &self,
        creds: &RoleCredentials,
        region: &str,
        names: &[String],
    ) -> Result<Parameters, FetchError> {
        let sdk = sdk_config(region).await?;
        let conf = aws_sdk_ssm::config::Builder::from(&sdk)
            .credentials_provider(static_credentials(creds))
            .build();
        let out = aws_sdk_ssm::Client::from_conf(conf)
            .get_parameters()
            .set_names(Some(names.to_vec()))
            .with_decryption(true)
            .send()
            .await
            .map_err(fetch_error)?;
        Ok(Parameters {
            values: out
                .parameters()
                .iter()
                .filter_map(|p| Some((p.name()?.to_owned(), p.value()?.to_owned())))
                .collect(),
            invalid: out.invalid_parameters().to_vec(),
        })
    }

    async fn get_secret_value(
        &self,
        creds: &RoleCredentials,
        region: &str,
        secret_id: &str,
        version_stage: Option<&str>,
        version_id: Option<&str>,
    ) -> Result<String, FetchError> {
        let sdk = sdk_config(region).await?;
        let conf = aws_sdk_secretsmanager::config::Builder::from(&sdk)
            .credentials_provider(static_credentials(creds))
            .build();
        let out = aws_sdk_secretsmanager::Client::from_conf(conf)
            .get_secret_value()
            .secret_id(secret_id)
            .set_version_stage(version_stage.map(str::to_owned))
            .set_version_id(version_id.map(str::to_owned))
            .send()
            .await
            .map_err(fetch_error)?;
        Ok(out.secret_string().unwrap_or_default().to_owned())
    }
}

#[cfg(test)]
mod tests;
