//! Registration: turns (configuration, IMDS identity, host facts, saved state) into a registered
//! container instance whose ARN is persisted, following protocol spec §2 steps 3–7 and §3.
//!
//! - Same EC2 instance and cluster as the saved state: re-register with the saved ARN, so running
//!   tasks stay attached across restarts and reboots.
//! - A different EC2 instance id (an AMI baked from a registered machine): the saved state is
//!   discarded, loudly, and the instance registers fresh.
//! - A different cluster, a deregistered ARN, refused attributes: terminal ([`Error::is_terminal`],
//!   exit 5) with a message telling the operator what to do.
//! - Throttling, server errors and no answer: retried with capped exponential backoff and jitter
//!   (a fleet of thousands boots at once) for up to an hour.
//!
//! This module never talks to Docker; the caller passes the daemon's API version.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::attributes::{self, Features};
use super::{ApiError, Attribute, EcsApi, RegisterRequest, Resources};
use crate::backoff::Policy;
use crate::config::Config;
use crate::host::HostFacts;
use crate::imds::{Identity, InstanceMetadata};
use crate::store::{INSTANCE, Store};

/// Key of the registration record in the `instance` table.
pub const REGISTRATION_KEY: &str = "registration";

/// Registration retry backoff (protocol spec §3.5: 3 s → 192 s, ×2, jitter 0.2).
pub const REGISTER_RETRY: Policy =
    Policy::new(Duration::from_secs(3), Duration::from_secs(192), 2.0, 0.2);
/// Give up (exit 1, systemd restarts us) after this long without success.
pub const REGISTER_GIVE_UP: Duration = Duration::from_secs(3600);
/// IMDS retry backoff while the identity document cannot be read (keep trying, spec §3.1).
const IMDS_RETRY: Policy = Policy::new(Duration::from_secs(1), Duration::from_secs(60), 2.0, 0.2);

/// What is persisted about the registration (protocol spec §15).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The container instance ARN.
    pub container_instance_arn: String,
    /// Cluster as configured when registering.
    pub cluster: String,
    /// EC2 instance id the ARN belongs to.
    pub ec2_instance_id: String,
    /// Availability zone.
    pub availability_zone: String,
    /// Region.
    pub region: String,
    /// Agent version that registered.
    pub agent_version: String,
    /// Unix seconds of the last successful registration.
    pub registered_at: u64,
}

/// Registration errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Needs an operator; the process exits 5 and systemd leaves it down.
    #[error("{0}")]
    Terminal(String),
    /// ECS kept failing for the whole retry budget.
    #[error(
        "registration did not succeed in {elapsed:?} ({attempts} attempts); last error: {last}"
    )]
    GaveUp {
        /// Time spent.
        elapsed: Duration,
        /// Attempts made.
        attempts: u32,
        /// Last error.
        last: ApiError,
    },
    /// ECS refused in a way that may be fixed without touching this host (e.g. IAM).
    #[error("registration failed: {0}")]
    Api(ApiError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// Shutdown was requested while waiting.
    #[error("registration cancelled by shutdown")]
    Cancelled,
}

impl Error {
    /// Whether this needs an operator (exit 5).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Error::Terminal(_))
    }
}

/// Everything registration depends on.
pub struct Registrar<'a> {
    /// Configuration.
    pub config: &'a Config,
    /// The instance identity (see [`read_identity`]).
    pub identity: &'a Identity,
    /// ECS.
    pub ecs: &'a dyn EcsApi,
    /// Durable store.
    pub store: &'a Store,
    /// Host facts.
    pub host: &'a HostFacts,
    /// Docker daemon API version, e.g. `1.41`.
    pub docker_api_version: Option<String>,
    /// Features advertised.
    pub features: Features,
    /// Enabled Docker volume plugins (`GET /plugins`, volumedriver), advertised by name.
    pub volume_plugins: Vec<String>,
    /// The instance's VPC from IMDS, advertised as `ecs.vpc-id` / `ecs.subnet-id`.
    pub vpc: Option<crate::imds::VpcFacts>,
    /// Retry backoff for ECS.
    pub retry: Policy,
    /// Retry budget for ECS.
    pub give_up_after: Duration,
}

/// The last path segment of a cluster ARN, or the name itself.
fn cluster_name(cluster: &str) -> &str {
    cluster.rsplit('/').next().unwrap_or(cluster)
}

/// Reads the saved registration, if any.
pub fn saved(store: &Store) -> Result<Option<Registration>, crate::store::Error> {
    store.get(INSTANCE, REGISTRATION_KEY)
}

impl Registrar<'_> {
    /// Registers (or re-registers) and persists the result.
    pub async fn register(&self, cancel: &CancellationToken) -> Result<Registration, Error> {
        let identity = self.identity;
        let doc = &identity.document;
        let region = self
            .config
            .region
            .clone()
            .unwrap_or_else(|| doc.region.clone());

        let mut saved = saved(self.store)?;
        if let Some(s) = &saved {
            if s.ec2_instance_id != doc.instance_id {
                warn!(
                    saved.instance_id = %s.ec2_instance_id,
                    instance_id = %doc.instance_id,
                    saved.arn = %s.container_instance_arn,
                    "Saved state belongs to another EC2 instance (image baked from a registered host?); discarding it and registering as a new container instance."
                );
                self.store.remove(INSTANCE, REGISTRATION_KEY)?;
                saved = None;
            } else if cluster_name(&s.cluster) != cluster_name(&self.config.cluster) {
                return Err(Error::Terminal(format!(
                    "this instance is registered in cluster {:?} as {}, but ECS_CLUSTER is {:?}. \
                     To move it: deregister it from {:?}, delete {} and start ecs-hostd again; \
                     or set ECS_CLUSTER={} to stay",
                    s.cluster,
                    s.container_instance_arn,
                    self.config.cluster,
                    s.cluster,
                    self.store.path().display(),
                    s.cluster
                )));
            }
        }

        let memory = self
            .host
            .registrable_memory_mib(self.config.reserved_memory_mib)
            .ok_or_else(|| {
                Error::Terminal(format!(
                    "ECS_RESERVED_MEMORY={} MiB is more than this host's {} MiB",
                    self.config.reserved_memory_mib,
                    self.host.mem_total_bytes / (1024 * 1024)
                ))
            })?;
        let first = saved.is_none();
        let mut sent_attributes = attributes::attributes(
            self.config,
            &self.host.os_detailed,
            self.docker_api_version.as_deref(),
            self.features,
            first,
        );
        sent_attributes.extend(attributes::volume_plugins(
            &self.volume_plugins,
            self.features,
        ));
        sent_attributes.extend(attributes::vpc(self.vpc.as_ref()));
        let mut req = RegisterRequest {
            cluster: self.config.cluster.clone(),
            container_instance_arn: saved.as_ref().map(|s| s.container_instance_arn.clone()),
            identity_document: identity.raw_document.clone(),
            identity_signature: identity.signature.clone(),
            resources: Resources {
                cpu: self.host.cpu_units(),
                memory_mib: memory,
                ports: self.config.reserved_ports.clone(),
                ports_udp: self.config.reserved_ports_udp.clone(),
            },
            attributes: sent_attributes.clone(),
            tags: self.config.container_instance_tags.clone(),
            client_token: String::new(),
        };

        let started = Instant::now();
        let mut backoff = self.retry.start();
        let mut attempts = 0u32;
        let mut created_cluster = false;
        let registered = loop {
            attempts += 1;
            req.client_token = uuid::Uuid::new_v4().to_string();
            let err = match self.ecs.register_container_instance(&req).await {
                Ok(r) => break r,
                Err(e) => e,
            };
            let cluster_missing = err.has_code("ClusterNotFoundException")
                || err.message.contains("Cluster not found");
            if cluster_missing && self.config.cluster == "default" && !created_cluster {
                info!(
                    "Cluster \"default\" does not exist; creating it, as the official agent does."
                );
                created_cluster = true;
                if let Err(e) = self.ecs.create_cluster("default").await {
                    warn!(error = %e, "Could not create the default cluster.");
                }
                continue;
            }
            if cluster_missing {
                return Err(Error::Terminal(format!(
                    "cluster {:?} does not exist in region {region}: create it, or set ECS_CLUSTER in /etc/ecs/ecs.config to an existing cluster ({err})",
                    self.config.cluster
                )));
            }
            if err.has_code("ClientException") && err.message.contains("inactive") {
                return Err(Error::Terminal(format!(
                    "container instance {} was deregistered from ECS ({err}). To register this host again as a new container instance, delete {} and start ecs-hostd again",
                    req.container_instance_arn.as_deref().unwrap_or("?"),
                    self.store.path().display()
                )));
            }
            if err.has_code("ClientException") || err.has_code("InvalidParameterException") {
                return Err(Error::Terminal(format!(
                    "ECS refused the registration: {err}. Check ECS_INSTANCE_ATTRIBUTES, ECS_CONTAINER_INSTANCE_TAGS and ECS_CLUSTER"
                )));
            }
            if !err.is_retryable() {
                return Err(Error::Api(err));
            }
            let delay = backoff.next_delay();
            if started.elapsed() + delay > self.give_up_after {
                return Err(Error::GaveUp {
                    elapsed: started.elapsed(),
                    attempts,
                    last: err,
                });
            }
            warn!(error = %err, attempt = attempts, retry_in = ?delay, "Registration failed; retrying.");
            tokio::select! {
                _ = cancel.cancelled() => return Err(Error::Cancelled),
                _ = tokio::time::sleep(delay) => {}
            }
        };

        check_attributes_echoed(&sent_attributes, &registered.attributes)?;
        let availability_zone = registered
            .attributes
            .iter()
            .find(|a| a.name == "ecs.availability-zone")
            .and_then(|a| a.value.clone())
            .unwrap_or_else(|| doc.availability_zone.clone());
        let record = Registration {
            container_instance_arn: registered.arn,
            cluster: self.config.cluster.clone(),
            ec2_instance_id: doc.instance_id.clone(),
            availability_zone,
            region,
            agent_version: env!("CARGO_PKG_VERSION").into(),
            registered_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        if let Some(old) = &saved
            && old.container_instance_arn != record.container_instance_arn
        {
            warn!(saved.arn = %old.container_instance_arn, arn = %record.container_instance_arn,
                "ECS returned a different container instance ARN on re-registration.");
        }
        self.store.put(INSTANCE, REGISTRATION_KEY, &record)?;
        info!(
            instance.arn = %record.container_instance_arn,
            cluster = %record.cluster,
            instance_id = %record.ec2_instance_id,
            reregistered = !first,
            attempts,
            "Registered container instance."
        );
        Ok(record)
    }
}

/// Reads the identity document, retrying with backoff until it succeeds or shutdown is requested
/// (protocol spec §3.1: the agent should keep retrying rather than register without it).
pub async fn read_identity(
    imds: &dyn InstanceMetadata,
    cancel: &CancellationToken,
) -> Result<Identity, Error> {
    let mut backoff = IMDS_RETRY.start();
    loop {
        match imds.identity().await {
            Ok(id) => return Ok(id),
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "Cannot read the instance identity document; retrying.");
                tokio::select! {
                    _ = cancel.cancelled() => return Err(Error::Cancelled),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Every attribute sent must come back with the same value (protocol spec §3.4).
fn check_attributes_echoed(sent: &[Attribute], got: &[Attribute]) -> Result<(), Error> {
    let missing: Vec<String> = sent
        .iter()
        .filter(|a| !got.contains(a))
        .map(|a| match &a.value {
            Some(v) => format!("{}={v}", a.name),
            None => a.name.clone(),
        })
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::Terminal(format!(
            "ECS did not accept these attributes: {}. Fix ECS_INSTANCE_ATTRIBUTES (names and values must be valid ECS attributes)",
            missing.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests;
