//! `ecs-hostd check`: pre-flight checks an operator (or user-data) runs before starting the agent.
//! One line per check, `ok` or `FAIL` with the reason; any failure makes the command exit 1.
//!
//! Checks: configuration (strict: every malformed line or value), Docker reachable, IMDSv2
//! reachable, AWS credentials available, the cluster exists. It reads and asks; it never
//! registers, writes state or changes Docker.

use std::time::Duration;

use aws_credential_types::provider::ProvideCredentials;

use crate::config::{Config, ConfigError, LoadOptions};
use crate::ecs::EcsApi;
use crate::ecs::sdk::SdkEcs;
use crate::imds::{self, ImdsClient, InstanceMetadata};

/// Upper bound for each network check, so `check` finishes quickly on a broken host.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// Check name.
    pub name: &'static str,
    /// Passed?
    pub ok: bool,
    /// What was found.
    pub detail: String,
}

impl std::fmt::Display for Line {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(f, "{mark} {}: {}", self.name, self.detail)
    }
}

fn line(name: &'static str, ok: bool, detail: impl Into<String>) -> Line {
    Line {
        name,
        ok,
        detail: detail.into(),
    }
}

/// Runs every check. Later checks still run when earlier ones fail, so the operator sees every
/// problem at once.
pub async fn run(opts: &LoadOptions) -> Vec<Line> {
    let mut out = Vec::new();
    let strict = LoadOptions {
        strict: true,
        ..opts.clone()
    };
    let config = match Config::load(&strict) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                out.push(line("config", true, format!("warning: {w}")));
            }
            let files: Vec<_> = loaded
                .files_read
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            out.push(line(
                "config",
                true,
                if files.is_empty() {
                    "no configuration files; defaults and environment".to_owned()
                } else {
                    format!("valid ({})", files.join(", "))
                },
            ));
            loaded.config
        }
        Err(ConfigError::Invalid(errs)) => {
            for e in &errs {
                out.push(line("config", false, e.to_string()));
            }
            // Go on with what a lenient load gives, to check the rest of the world.
            Config::load(&LoadOptions {
                strict: false,
                ..opts.clone()
            })
            .map(|l| l.config)
            .unwrap_or_default()
        }
        Err(e) => {
            out.push(line("config", false, e.to_string()));
            Config::default()
        }
    };

    out.push(check_docker(&config).await);

    let imds = ImdsClient::with_limits(
        &config.imds_endpoint,
        Duration::from_secs(2),
        CHECK_TIMEOUT,
        2,
    );
    let identity = match imds.identity().await {
        Ok(id) => {
            out.push(line(
                "imds",
                true,
                format!(
                    "IMDSv2 at {}: instance {} ({}) in {}",
                    imds.endpoint(),
                    id.document.instance_id,
                    id.document.instance_type,
                    id.document.availability_zone
                ),
            ));
            Some(id)
        }
        Err(imds::Error::V2Unavailable { status, .. }) => {
            out.push(line(
                "imds",
                false,
                format!("IMDS at {} refused an IMDSv2 token (HTTP {status}): IMDSv1 only or disabled; ecs-hostd needs IMDSv2", imds.endpoint()),
            ));
            None
        }
        Err(e) => {
            out.push(line("imds", false, format!("unreachable: {e}")));
            None
        }
    };

    let Some(region) = config
        .region
        .clone()
        .or_else(|| identity.as_ref().map(|i| i.document.region.clone()))
    else {
        out.push(line(
            "credentials",
            false,
            "skipped: no region (set AWS_DEFAULT_REGION or fix IMDS)",
        ));
        out.push(line("cluster", false, "skipped: no region"));
        return out;
    };
    let sdk = match crate::aws::sdk_config(&region).await {
        Ok(sdk) => sdk,
        Err(e) => {
            out.push(line("credentials", false, e));
            out.push(line("cluster", false, "skipped: no TLS root certificates"));
            return out;
        }
    };
    let creds_ok = match sdk.credentials_provider() {
        None => {
            out.push(line(
                "credentials",
                false,
                "no credentials provider configured",
            ));
            false
        }
        Some(p) => match tokio::time::timeout(CHECK_TIMEOUT, p.provide_credentials()).await {
            Ok(Ok(c)) => {
                let id = c.access_key_id();
                let shown = &id[..id.len().min(4)];
                out.push(line(
                    "credentials",
                    true,
                    format!("found (access key {shown}…)"),
                ));
                true
            }
            Ok(Err(e)) => {
                out.push(line(
                    "credentials",
                    false,
                    format!(
                        "none found: {}",
                        aws_sdk_ecs::error::DisplayErrorContext(&e)
                    ),
                ));
                false
            }
            Err(_) => {
                out.push(line(
                    "credentials",
                    false,
                    format!("no answer within {CHECK_TIMEOUT:?}"),
                ));
                false
            }
        },
    };
    if !creds_ok {
        out.push(line("cluster", false, "skipped: no credentials"));
        return out;
    }
    let ecs = SdkEcs::new(&sdk, config.ecs_endpoint.as_deref());
    let cluster = &config.cluster;
    out.push(
        match tokio::time::timeout(CHECK_TIMEOUT, ecs.cluster_status(cluster)).await {
            Ok(Ok(Some(status))) if status == "ACTIVE" => {
                line("cluster", true, format!("{cluster} is ACTIVE in {region}"))
            }
            Ok(Ok(Some(status))) => line(
                "cluster",
                false,
                format!("{cluster} is {status} in {region}; create it or fix ECS_CLUSTER"),
            ),
            Ok(Ok(None)) if cluster == "default" => line(
                "cluster",
                true,
                format!("default does not exist in {region} yet; ecs-hostd creates it at registration, as the official agent"),
            ),
            Ok(Ok(None)) => line(
                "cluster",
                false,
                format!("{cluster} does not exist in {region}; create it or fix ECS_CLUSTER"),
            ),
            Ok(Err(e)) => line("cluster", false, format!("cannot ask ECS: {e}")),
            Err(_) => line("cluster", false, format!("ECS did not answer within {CHECK_TIMEOUT:?}")),
        },
    );
    out
}

async fn check_docker(config: &Config) -> Line {
    let ep = crate::docker::endpoint(config.docker_host.as_deref());
    let docker = match crate::docker::connect(config.docker_host.as_deref()) {
        Ok(d) => d,
        Err(e) => return line("docker", false, e.to_string()),
    };
    match crate::docker::ping(&docker, &ep).await {
        Ok(info) => line(
            "docker",
            true,
            format!("Docker {} (API {}) at {ep}", info.version, info.api_version),
        ),
        Err(e) => line("docker", false, e.to_string()),
    }
}
