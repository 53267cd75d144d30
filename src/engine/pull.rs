//! Image pulls: the official pull behaviours (`ECS_IMAGE_PULL_BEHAVIOR`), the retry policy
//! (spec §6.4 step 10) and registry credentials: `ECS_ENGINE_AUTH_TYPE/DATA` (`docker` and
//! `dockercfg` formats) and ECR tokens from GetAuthorizationToken with the task's execution-role
//! credentials (from the in-memory `CredentialsStore`) or the instance role, and the
//! `repositoryCredentials` login the engine fetched from Secrets Manager for the task.
//!
//! Never stores or logs credentials; never decides which images are needed (the reconciler
//! does). One pull per image at a time is guaranteed by the engine's in-flight keys.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use serde::Deserialize;
use tracing::{debug, info, warn};

use crate::backoff::Policy;
use crate::config::PullBehavior;
use crate::engine::docker::registry_of;
use crate::engine::model::RegistryAuthentication;
use crate::engine::runtime::{ContainerRuntime, PullLimits, RuntimeError};
use crate::engine::secrets::RegistryLogin;
use crate::tasks::{CredentialsStore, RoleCredentials, RoleType};

/// Pull attempts (spec §6.4: up to 5, 1.1 s, 5 s, ×2, 0.2).
pub const PULL_ATTEMPTS: u32 = 5;
/// Backoff between pull attempts.
pub const PULL_RETRY: Policy = Policy::new(
    Duration::from_millis(1100),
    Duration::from_secs(5),
    2.0,
    0.2,
);
/// No first progress within this aborts a pull (spec §6.4).
pub const FIRST_PROGRESS: Duration = Duration::from_secs(5 * 60);

/// Pull and credential errors.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// `ECS_ENGINE_AUTH_DATA` is not valid for its type.
    #[error("ECS_ENGINE_AUTH_DATA is not valid {kind} JSON: {reason}")]
    AuthData {
        /// `docker` or `dockercfg`.
        kind: String,
        /// Why.
        reason: String,
    },
    /// The ECR token could not be used (or the SDK not configured).
    #[error("cannot get an ECR authorization token: {0}")]
    Ecr(String),
    /// GetAuthorizationToken failed; retryable unless ECR refused the request (4xx, e.g. the
    /// role may not call it).
    #[error("cannot get an ECR authorization token: {0}")]
    EcrApi(#[from] crate::aws::ApiError),
    /// ECR auth needs execution-role credentials that are not (yet) there.
    #[error("no execution role credentials for task {0}")]
    NoExecutionCredentials(String),
    /// A `repositoryCredentials` container reached its pull without its login (the engine
    /// fetches it first; never expected).
    #[error("asm resource: the registry login was not fetched before the pull")]
    NoRegistryLogin,
    /// The runtime failed.
    #[error("{0}")]
    Runtime(#[from] RuntimeError),
}

impl PullError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            PullError::AuthData { .. } | PullError::NoRegistryLogin => false,
            PullError::Ecr(_) | PullError::NoExecutionCredentials(_) => true,
            PullError::EcrApi(e) => e.is_retryable(),
            PullError::Runtime(e) => e.is_retryable(),
        }
    }
}

#[derive(Deserialize)]
struct DockerAuthEntry {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

/// Normalises a registry key: no scheme, no path (`https://index.docker.io/v1/` → `docker.io`).
pub fn normalize_registry(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_owned()
        }
        h => h.to_owned(),
    }
}

/// Parses `ECS_ENGINE_AUTH_TYPE`/`ECS_ENGINE_AUTH_DATA` into credentials per registry.
/// `docker`: `{"registry": {"username","password","email"}}`; `dockercfg`:
/// `{"registry": {"auth": base64("user:pass"), "email"}}`.
pub fn parse_engine_auth(
    kind: Option<&str>,
    data: Option<&str>,
) -> Result<HashMap<String, DockerCredentials>, PullError> {
    let (Some(kind), Some(data)) = (kind, data) else {
        return Ok(HashMap::new());
    };
    let bad = |reason: String| PullError::AuthData {
        kind: kind.to_owned(),
        reason,
    };
    let entries: HashMap<String, DockerAuthEntry> =
        serde_json::from_str(data).map_err(|e| bad(e.to_string()))?;
    let mut out = HashMap::new();
    for (registry, e) in entries {
        let (username, password) = match kind {
            "docker" => (e.username, e.password),
            "dockercfg" => {
                let raw = e.auth.ok_or_else(|| bad(format!("{registry}: no auth")))?;
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(raw.trim())
                    .map_err(|err| bad(format!("{registry}: auth is not base64: {err}")))?;
                let text = String::from_utf8(decoded)
                    .map_err(|_| bad(format!("{registry}: auth is not UTF-8")))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| bad(format!("{registry}: auth is not user:password")))?;
                (Some(u.to_owned()), Some(p.to_owned()))
            }
            other => return Err(bad(format!("unknown ECS_ENGINE_AUTH_TYPE {other}"))),
        };
        out.insert(
            normalize_registry(&registry),
            DockerCredentials {
                username,
                password,
                email: e.email,
                serveraddress: Some(registry),
                ..Default::default()
            },
        );
    }
    Ok(out)
}

/// Fetches ECR tokens. A trait so tests can stand in for ECR.
#[async_trait::async_trait]
pub trait EcrTokens: Send + Sync {
    /// Docker credentials for an ECR registry, using `creds` (execution role) or the instance
    /// role when `None`.
    async fn token(
        &self,
        region: &str,
        registry_id: Option<&str>,
        endpoint: Option<&str>,
        creds: Option<RoleCredentials>,
    ) -> Result<DockerCredentials, PullError>;
}

/// How long an ECR token is reused. ECR tokens are valid for 12 hours; an hour keeps a burst of
/// tasks from one registry to one GetAuthorizationToken call (the API is throttled per account)
/// while a revoked role stops working within the hour.
pub const ECR_TOKEN_REUSE: Duration = Duration::from_secs(3600);

/// Reuses ECR tokens per region, registry, endpoint and principal (the access key id of the
/// execution role's credentials, or the instance role) for [`ECR_TOKEN_REUSE`]; only
/// successful answers are kept. Tokens live in memory only.
pub struct CachedEcr {
    inner: Arc<dyn EcrTokens>,
    reuse: Duration,
    cache: std::sync::Mutex<HashMap<EcrKey, (tokio::time::Instant, DockerCredentials)>>,
}

type EcrKey = (String, Option<String>, Option<String>, Option<String>);

impl CachedEcr {
    /// A cache in front of `inner`.
    pub fn new(inner: Arc<dyn EcrTokens>, reuse: Duration) -> CachedEcr {
        CachedEcr {
            inner,
            reuse,
            cache: std::sync::Mutex::new(HashMap::new()),
        }
    }
}

#[async_trait::async_trait]
impl EcrTokens for CachedEcr {
    async fn token(
        &self,
        region: &str,
        registry_id: Option<&str>,
        endpoint: Option<&str>,
        creds: Option<RoleCredentials>,
    ) -> Result<DockerCredentials, PullError> {
        let key = (
            region.to_owned(),
            registry_id.map(str::to_owned),
            endpoint.map(str::to_owned),
            creds.as_ref().map(|c| c.access_key_id.clone()),
        );
        let now = tokio::time::Instant::now();
        {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, (at, _)| now.duration_since(*at) < self.reuse);
            if let Some((_, t)) = cache.get(&key) {
                return Ok(t.clone());
            }
        }
        let token = self
            .inner
            .token(region, registry_id, endpoint, creds)
            .await?;
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, (now, token.clone()));
        Ok(token)
    }
}

/// ECR through aws-sdk-ecr.
#[derive(Debug, Default)]
pub struct SdkEcr;

#[async_trait::async_trait]
impl EcrTokens for SdkEcr {
    async fn token(
        &self,
        region: &str,
        registry_id: Option<&str>,
        endpoint: Option<&str>,
        creds: Option<RoleCredentials>,
    ) -> Result<DockerCredentials, PullError> {
        // The agent's SDK settings (one attempt per call: the pull loop owns the retries;
        // bounded timeouts); the instance role is the default chain's credentials.
        let sdk = crate::aws::sdk_config(region)
            .await
            .map_err(PullError::Ecr)?;
        let mut conf = aws_sdk_ecr::config::Builder::from(&sdk);
        if let Some(c) = creds {
            conf = conf.credentials_provider(aws_credential_types::Credentials::new(
                c.access_key_id,
                c.secret_access_key,
                Some(c.session_token),
                None,
                "ecs-hostd-execution-role",
            ));
        }
        if let Some(ep) = endpoint.filter(|e| !e.is_empty()) {
            conf = conf.endpoint_url(ep);
        }
        let client = aws_sdk_ecr::Client::from_conf(conf.build());
        // The token is valid for every registry the principal may use; the registry id is only
        // logged (the API's registryIds parameter is deprecated).
        debug!(registry_id = ?registry_id, region, "Requesting an ECR authorization token.");
        let out = client
            .get_authorization_token()
            .send()
            .await
            .map_err(|e| crate::aws::classify("GetAuthorizationToken", e))?;
        let data = out
            .authorization_data()
            .first()
            .ok_or_else(|| PullError::Ecr("empty authorizationData".into()))?;
        decode_ecr_token(
            data.authorization_token().unwrap_or_default(),
            data.proxy_endpoint(),
        )
    }
}

/// Decodes an ECR authorization token (`base64("AWS:<password>")`).
pub fn decode_ecr_token(
    token: &str,
    proxy_endpoint: Option<&str>,
) -> Result<DockerCredentials, PullError> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .map_err(|e| PullError::Ecr(format!("token is not base64: {e}")))?;
    let text =
        String::from_utf8(decoded).map_err(|_| PullError::Ecr("token is not UTF-8".into()))?;
    let (user, pass) = text
        .split_once(':')
        .ok_or_else(|| PullError::Ecr("token is not user:password".into()))?;
    Ok(DockerCredentials {
        username: Some(user.to_owned()),
        password: Some(pass.to_owned()),
        serveraddress: proxy_endpoint.map(str::to_owned),
        ..Default::default()
    })
}

/// Everything a pull needs besides the image.
pub struct Puller {
    /// Runtime.
    pub runtime: Arc<dyn ContainerRuntime>,
    /// Pull behaviour.
    pub behavior: PullBehavior,
    /// Limits.
    pub limits: PullLimits,
    /// Static registry credentials from the configuration.
    pub engine_auth: HashMap<String, DockerCredentials>,
    /// Execution-role credentials.
    pub credentials: Arc<CredentialsStore>,
    /// ECR tokens.
    pub ecr: Arc<dyn EcrTokens>,
    /// Instance region (default for ECR).
    pub region: Option<String>,
    /// Delay policy between attempts (tests shorten it).
    pub retry: Policy,
}

impl Puller {
    /// Makes `image` available per the pull behaviour; returns the image id. The error text is
    /// the reason reported to ECS (`CannotPullContainerError: ...`).
    pub async fn ensure(
        &self,
        image: &str,
        task_arn: &str,
        auth: Option<&RegistryAuthentication>,
        login: Option<RegistryLogin>,
    ) -> Result<Option<String>, String> {
        let cached = self.runtime.image(image).await.ok().flatten();
        if cached.is_some()
            && matches!(
                self.behavior,
                PullBehavior::Once | PullBehavior::PreferCached
            )
        {
            debug!(image, "Image cached; not pulling.");
            return Ok(cached.map(|i| i.id));
        }
        let started = std::time::Instant::now();
        match self
            .pull_with_retries(image, task_arn, auth, login.as_ref())
            .await
        {
            Ok(()) => {
                info!(
                    image,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "Image pulled."
                );
                Ok(self.runtime.image(image).await.ok().flatten().map(|i| i.id))
            }
            Err(e) => {
                let reason = format!("CannotPullContainerError: {e}");
                if self.behavior == PullBehavior::Default
                    && let Some(c) = cached
                {
                    warn!(image, error = %e, "Pull failed; using the cached image.");
                    return Ok(Some(c.id));
                }
                warn!(image, error = %e, "Pull failed.");
                Err(reason)
            }
        }
    }

    async fn pull_with_retries(
        &self,
        image: &str,
        task_arn: &str,
        auth: Option<&RegistryAuthentication>,
        login: Option<&RegistryLogin>,
    ) -> Result<(), PullError> {
        let mut backoff = self.retry.start();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let creds = self.credentials_for(image, task_arn, auth, login).await?;
                self.runtime
                    .pull(image, creds, self.limits)
                    .await
                    .map_err(PullError::from)
            }
            .await;
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_retryable() && attempt < PULL_ATTEMPTS => {
                    let delay = backoff.next_delay();
                    debug!(image, attempt, error = %e, ?delay, "Pull attempt failed; retrying.");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn credentials_for(
        &self,
        image: &str,
        task_arn: &str,
        auth: Option<&RegistryAuthentication>,
        login: Option<&RegistryLogin>,
    ) -> Result<Option<DockerCredentials>, PullError> {
        // `repositoryCredentials`: the login the engine fetched from Secrets Manager, for this
        // pull only (task-credentials.md §9.2).
        if auth.is_some_and(|a| a.kind.as_deref() == Some("asm")) {
            let login = login.ok_or(PullError::NoRegistryLogin)?;
            return Ok(Some(DockerCredentials {
                username: Some(login.username.clone()),
                password: Some(login.password.clone()),
                ..Default::default()
            }));
        }
        if let Some(a) = auth.filter(|a| a.kind.as_deref() == Some("ecr"))
            && let Some(ecr) = &a.ecr_auth_data
        {
            let creds = if ecr.use_execution_role {
                Some(
                    self.credentials
                        .get(task_arn, RoleType::TaskExecution)
                        .ok_or_else(|| PullError::NoExecutionCredentials(task_arn.to_owned()))?,
                )
            } else {
                None
            };
            let region = ecr
                .region
                .clone()
                .or_else(|| self.region.clone())
                .unwrap_or_else(|| "us-east-1".into());
            let token = self
                .ecr
                .token(
                    &region,
                    ecr.registry_id.as_deref(),
                    ecr.endpoint_override.as_deref(),
                    creds,
                )
                .await?;
            return Ok(Some(token));
        }
        Ok(self.engine_auth.get(&registry_of(image)).cloned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Mutex;

    use crate::engine::model::EcrAuthData;
    use crate::engine::runtime::FakeRuntime;

    /// One `EcrTokens::token` call as the fake saw it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct TokenCall {
        region: String,
        registry_id: Option<String>,
        endpoint: Option<String>,
        /// Access key id of the credentials passed (None: the instance role).
        access_key_id: Option<String>,
    }

    /// Records calls and answers `AWS:<password>` for `https://<registry>`.
    #[derive(Default)]
    struct FakeEcr {
        calls: Mutex<Vec<TokenCall>>,
    }

    #[async_trait::async_trait]
    impl EcrTokens for FakeEcr {
        async fn token(
            &self,
            region: &str,
            registry_id: Option<&str>,
            endpoint: Option<&str>,
            creds: Option<RoleCredentials>,
        ) -> Result<DockerCredentials, PullError> {
            self.calls.lock().unwrap().push(TokenCall {
                region: region.to_owned(),
                registry_id: registry_id.map(str::to_owned),
                endpoint: endpoint.map(str::to_owned),
                access_key_id: creds.map(|c| c.access_key_id),
            });
            Ok(DockerCredentials {
                username: Some("AWS".into()),
                password: Some("ecr-password".into()),
                serveraddress: Some("https://123456789012.dkr.ecr.eu-west-1.amazonaws.com".into()),
                ..Default::default()
            })
        }
    }

    fn role(key: &str) -> RoleCredentials {
        RoleCredentials {
            credentials_id: "c".into(),
            role_arn: "arn:aws:iam::1:role/exec".into(),
            access_key_id: key.into(),
            secret_access_key: "s".into(),
            session_token: "t".into(),
            expiration: String::new(),
        }
    }

    /// One GetAuthorizationToken per registry and principal within the reuse time; another
    /// principal, or the time passing, asks again.
    #[tokio::test(start_paused = true)]
    async fn ecr_tokens_are_reused_per_registry_and_principal() {
        let fake = Arc::new(FakeEcr::default());
        let cached = CachedEcr::new(fake.clone(), Duration::from_secs(60));
        for _ in 0..3 {
            let t = cached
                .token("eu-west-1", Some("1"), None, Some(role("ASIAEXEC")))
                .await
                .unwrap();
            assert_eq!(t.password.as_deref(), Some("ecr-password"));
        }
        assert_eq!(fake.calls.lock().unwrap().len(), 1);
        cached
            .token("eu-west-1", Some("1"), None, None)
            .await
            .unwrap();
        cached
            .token("eu-west-1", Some("1"), None, Some(role("ASIAOTHER")))
            .await
            .unwrap();
        assert_eq!(fake.calls.lock().unwrap().len(), 3);
        tokio::time::advance(Duration::from_secs(61)).await;
        cached
            .token("eu-west-1", Some("1"), None, Some(role("ASIAEXEC")))
            .await
            .unwrap();
        assert_eq!(fake.calls.lock().unwrap().len(), 4);
    }

    const TASK: &str = "arn:aws:ecs:eu-west-1:123456789012:task/c/t1";
    const ECR_IMAGE: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/app:1";

    fn puller(engine_auth: HashMap<String, DockerCredentials>) -> (Puller, Arc<FakeEcr>) {
        let ecr = Arc::new(FakeEcr::default());
        let p = Puller {
            runtime: Arc::new(FakeRuntime::default()),
            behavior: PullBehavior::Always,
            limits: PullLimits {
                inactivity: Duration::from_secs(60),
                first_progress: FIRST_PROGRESS,
                total: Duration::from_secs(600),
            },
            engine_auth,
            credentials: Arc::new(CredentialsStore::default()),
            ecr: ecr.clone(),
            region: Some("us-west-2".into()),
            retry: Policy::new(Duration::from_millis(1), Duration::from_millis(1), 1.0, 0.0),
        };
        (p, ecr)
    }

    fn ecr_auth(use_execution_role: bool, region: Option<&str>) -> RegistryAuthentication {
        RegistryAuthentication {
            asm_auth_data: None,
            kind: Some("ecr".into()),
            ecr_auth_data: Some(EcrAuthData {
                region: region.map(str::to_owned),
                registry_id: Some("123456789012".into()),
                endpoint_override: Some("http://127.0.0.1:9".into()),
                use_execution_role,
            }),
        }
    }

    fn execution_creds() -> RoleCredentials {
        RoleCredentials {
            credentials_id: "cid".into(),
            role_arn: "arn:aws:iam::123456789012:role/exec".into(),
            access_key_id: "ASIAEXECUTION".into(),
            secret_access_key: "exec-secret".into(),
            session_token: "exec-session".into(),
            expiration: "2030-01-01T00:00:00.000+0000".into(),
        }
    }

    #[tokio::test]
    async fn ecr_with_the_execution_role_uses_its_credentials() {
        let (p, ecr) = puller(HashMap::new());
        p.credentials
            .set(TASK, RoleType::TaskExecution, execution_creds());
        let auth = ecr_auth(true, Some("eu-west-1"));
        let c = p
            .credentials_for(ECR_IMAGE, TASK, Some(&auth), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.username.as_deref(), Some("AWS"));
        assert_eq!(c.password.as_deref(), Some("ecr-password"));
        assert_eq!(
            *ecr.calls.lock().unwrap(),
            vec![TokenCall {
                region: "eu-west-1".into(),
                registry_id: Some("123456789012".into()),
                endpoint: Some("http://127.0.0.1:9".into()),
                access_key_id: Some("ASIAEXECUTION".into()),
            }]
        );
    }

    #[tokio::test]
    async fn ecr_with_the_execution_role_missing_is_a_clear_error_without_an_ecr_call() {
        let (p, ecr) = puller(HashMap::new());
        // Another task's execution role and this task's application role do not count.
        p.credentials.set(
            "arn:aws:ecs:eu-west-1:123456789012:task/c/other",
            RoleType::TaskExecution,
            execution_creds(),
        );
        p.credentials
            .set(TASK, RoleType::TaskApplication, execution_creds());
        let auth = ecr_auth(true, Some("eu-west-1"));
        let err = p
            .credentials_for(ECR_IMAGE, TASK, Some(&auth), None)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::NoExecutionCredentials(ref t) if t == TASK));
        assert!(err.is_retryable(), "ACS may still deliver them");
        assert!(ecr.calls.lock().unwrap().is_empty());
        // Through the whole pull: every attempt fails the same way; the reason names it.
        let reason = p
            .ensure(ECR_IMAGE, TASK, Some(&auth), None)
            .await
            .unwrap_err();
        assert_eq!(
            reason,
            format!("CannotPullContainerError: no execution role credentials for task {TASK}")
        );
        assert!(ecr.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn ecr_without_the_execution_role_uses_the_instance_role_and_region() {
        let (p, ecr) = puller(HashMap::new());
        // Execution credentials present but not asked for: still the instance role.
        p.credentials
            .set(TASK, RoleType::TaskExecution, execution_creds());
        let auth = ecr_auth(false, None);
        p.credentials_for(ECR_IMAGE, TASK, Some(&auth), None)
            .await
            .unwrap()
            .unwrap();
        let calls = ecr.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].access_key_id, None, "instance role");
        assert_eq!(
            calls[0].region, "us-west-2",
            "the instance's region by default"
        );
        // The pull really carries the ECR credentials.
        assert!(p.ensure(ECR_IMAGE, TASK, Some(&auth), None).await.is_ok());
    }

    #[tokio::test]
    async fn basic_auth_from_engine_auth_data_when_not_ecr() {
        let engine_auth = parse_engine_auth(
            Some("docker"),
            Some(r#"{"https://127.0.0.1:5000":{"username":"u","password":"p"}}"#),
        )
        .unwrap();
        let (p, ecr) = puller(engine_auth);
        let c = p
            .credentials_for("127.0.0.1:5000/app:1", TASK, None, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("u"), Some("p"))
        );
        // Another registry: anonymous.
        assert!(
            p.credentials_for("127.0.0.1:5001/app:1", TASK, None, None)
                .await
                .unwrap()
                .is_none()
        );
        // `repositoryCredentials` (asm): the login the engine fetched wins over static
        // credentials for the same registry; without one the pull cannot go on.
        let asm = RegistryAuthentication {
            kind: Some("asm".into()),
            ecr_auth_data: None,
            asm_auth_data: None,
        };
        let login = RegistryLogin {
            username: "from-asm".into(),
            password: "asm-password".into(),
        };
        let c = p
            .credentials_for("127.0.0.1:5000/app:1", TASK, Some(&asm), Some(&login))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("from-asm"), Some("asm-password"))
        );
        let err = p
            .credentials_for("127.0.0.1:5000/app:1", TASK, Some(&asm), None)
            .await
            .unwrap_err();
        assert!(matches!(err, PullError::NoRegistryLogin), "{err}");
        assert!(!err.is_retryable());
        assert!(ecr.calls.lock().unwrap().is_empty());
        // ECR auth wins over static credentials for the same registry.
        let auth = ecr_auth(false, Some("eu-west-1"));
        let c = p
            .credentials_for("127.0.0.1:5000/app:1", TASK, Some(&auth), None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(c.password.as_deref(), Some("ecr-password"));
    }

    #[test]
    fn ecr_refusals_are_final_and_outages_retried() {
        use crate::aws::{ApiError, ErrorKind};
        let err = |kind, code: &str| {
            PullError::EcrApi(ApiError {
                operation: "GetAuthorizationToken",
                kind,
                code: Some(code.into()),
                message: "m".into(),
            })
        };
        let denied = err(ErrorKind::Client, "AccessDeniedException");
        assert!(!denied.is_retryable());
        assert_eq!(
            denied.to_string(),
            "cannot get an ECR authorization token: GetAuthorizationToken: AccessDeniedException: m"
        );
        assert!(err(ErrorKind::Server, "ServerException").is_retryable());
        assert!(err(ErrorKind::Throttled, "ThrottlingException").is_retryable());
        assert!(err(ErrorKind::Transport, "x").is_retryable());
    }

    #[test]
    fn docker_and_dockercfg_formats_parse() {
        let m = parse_engine_auth(
            Some("docker"),
            Some(r#"{"https://127.0.0.1:5000":{"username":"u","password":"p","email":"e@x"}}"#),
        )
        .unwrap();
        let c = &m["127.0.0.1:5000"];
        assert_eq!(c.username.as_deref(), Some("u"));
        assert_eq!(c.password.as_deref(), Some("p"));
        let auth = base64::engine::general_purpose::STANDARD.encode("user:pa:ss");
        let m = parse_engine_auth(
            Some("dockercfg"),
            Some(&format!(
                r#"{{"https://index.docker.io/v1/":{{"auth":"{auth}","email":"e"}}}}"#
            )),
        )
        .unwrap();
        let c = &m["docker.io"];
        assert_eq!(c.username.as_deref(), Some("user"));
        assert_eq!(c.password.as_deref(), Some("pa:ss"));
        assert!(parse_engine_auth(Some("dockercfg"), Some(r#"{"r":{"auth":"!!"}}"#)).is_err());
        assert!(parse_engine_auth(Some("weird"), Some(r#"{"r":{}}"#)).is_err());
        assert!(parse_engine_auth(Some("docker"), Some("not json")).is_err());
        assert!(parse_engine_auth(None, None).unwrap().is_empty());
    }

    #[test]
    fn ecr_token_decodes() {
        let t = base64::engine::general_purpose::STANDARD.encode("AWS:secret-pass");
        let c = decode_ecr_token(&t, Some("https://1.dkr.ecr.us-east-1.amazonaws.com")).unwrap();
        assert_eq!(c.username.as_deref(), Some("AWS"));
        assert_eq!(c.password.as_deref(), Some("secret-pass"));
        assert!(decode_ecr_token("%%%", None).is_err());
    }

    #[test]
    fn registry_keys_normalise() {
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(normalize_registry("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(registry_of("127.0.0.1:5000/busybox:1"), "127.0.0.1:5000");
        assert_eq!(registry_of("library/busybox"), "docker.io");
        assert_eq!(registry_of("busybox"), "docker.io");
    }
}
