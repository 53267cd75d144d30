//! ecs-hostd: the ECS container-instance host agent.
//!
//! How data flows (keep this diagram true; README.md and ARCHITECTURE.md carry it too):
//!
//! ```text
//! IMDS ─► identity ─┐
//! config ───────────┴─► registrar ─► ECS RegisterContainerInstance ─► instance ARN ─► store
//!
//! ACS websocket ─► desired tasks ─┐                      ┌─► Docker (bollard): pull, create, start, stop
//!                                 ├─► task store ─► reconciler ─┤
//! Docker events / inspect ─► actual state ───────────────┘      └─► state changes ─► reporter ─► SubmitTaskStateChange
//!
//! collectors (/proc/meminfo, statvfs) ─► metrics pipeline (batch, spool, retry) ─► PutMetricData
//! docker watchdog (ping, systemd over D-Bus) ─► health ─► restart docker.service, /healthz
//! lifecycle (spot notice, ASG lifecycle state) ─► drain ─► CompleteLifecycleAction
//! local API (axum) ◄── reads registration, health, tasks, metrics
//! ACS credentials ─► credentials (memory) ─► task endpoint :51679 ◄── engine snapshot (metadata by endpoint id)
//! cgroup files ─► stats collector ─► TCS (metrics, health, instance status) ─► ECS; task endpoint /stats; /metrics
//! ```
//!
//! Modules, in the order data flows: [`config`] (all settings, validated), [`imds`] (instance
//! identity), [`host`] (CPU, memory, OS), [`store`] (the one durable database), [`ecs`]
//! (registration, the ACS and TCS sessions and the state reporter), [`tasks`] (the contract between the
//! control plane and the engine), [`credentials`] (task role credentials, memory only),
//! [`engine`] (tasks as Docker containers), [`docker`] (the
//! engine connection), [`metrics`] (host metrics to CloudWatch), [`stats`] (container stats from
//! cgroups, for TCS, task metadata and `/metrics`), [`watchdog`] (Docker health
//! through systemd), [`lifecycle`] (Spot, Auto Scaling and warm-pool life of the instance),
//! [`health`] (the health board), [`api`] (local HTTP), [`task_endpoint`] (credentials and task
//! metadata for containers, 51679), [`supervisor`] (long-running
//! subsystems), [`app`] (the wiring of `run`), [`check`] and [`status`] (the other sub-commands).

#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod aws;
pub mod backoff;
pub mod check;
pub mod clock;
pub mod config;
pub mod credentials;
pub mod docker;
pub mod ecs;
pub mod engine;
pub mod health;
pub mod host;
pub mod imds;
pub mod lifecycle;
pub mod metrics;
pub mod stats;
pub mod status;
pub mod store;
pub mod supervisor;
pub mod systemd;
pub mod task_endpoint;
pub mod tasks;
pub mod telemetry;
pub mod watchdog;

/// The official agent version ecs-hostd is compatible with (reported where ECS may gate features
/// on it).
pub const COMPATIBLE_AGENT_VERSION: &str = "1.105.1";
