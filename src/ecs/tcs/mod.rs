//! TCS, the telemetry websocket through which ECS receives task metrics, container health and
//! the instance status (tcs.md): what service auto scaling, the console's utilisation graphs
//! and the `AWS/ECS` CloudWatch metrics are computed from.
//!
//! - [`messages`]: the outbound requests, their paging, the signed text frame, inbound parsing
//!   (pure).
//! - [`session`]: collections every publish interval into a bounded queue, the connection
//!   (the signed upgrade of [`crate::ecs::ws`]), liveness, lifetime and reconnection.
//!
//! Data flow: cgroup samples ([`crate::stats`]) + the engine's snapshot + the health board ─►
//! [`Source`] ─► collection ─► queue ─► signed frames ─► TCS.
//!
//! This module never talks to Docker, never reads cgroups and never logs frames or signatures.

pub mod messages;
pub mod session;

pub use session::{
    ContainerView, Source, TaskView, TcsConfig, TcsCounters, TcsParts, TcsSession, Timing,
};
