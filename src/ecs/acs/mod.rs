//! ACS, the websocket through which ECS delivers tasks to this instance (protocol spec §5).
//!
//! - [`messages`]: the wire format, one typed struct per model shape (pure; fuzzed).
//! - [`handler`]: what each inbound message means: replies, engine calls, credentials (pure
//!   except for the store and the engine it is given).
//! - [`session`]: the connection: endpoint discovery, the signed upgrade ([`crate::ecs::ws`]),
//!   read loop, liveness, lifetime and reconnection.
//!
//! Data flow: ACS frame → [`handler::Handler`] → `TaskControl::deliver` (task JSON without
//! credentials) + `CredentialsStore` (credentials, memory only) → replies (acks) → ACS.
//!
//! This module never talks to Docker and never writes credentials to the store or the log.

pub mod handler;
pub mod messages;
pub mod session;

pub use handler::{Handler, HandlerParts, Identity};
pub use session::{AcsConfig, AcsParts, AcsSession, Timing};

/// Log filter directives the process must apply whatever `RUST_LOG` says: tungstenite logs
/// whole websocket frames at TRACE, and ACS frames carry task credentials.
pub const LOG_DIRECTIVES: &[&str] = &["tungstenite=info", "tokio_tungstenite=info"];

/// The `agentHash` sent to ACS: `ECS_HOSTD_GIT_HASH` at build time, else a stable hex digest of
/// the package version (ACS wants "any stable hex string").
pub fn agent_hash() -> String {
    if let Some(h) = option_env!("ECS_HOSTD_GIT_HASH") {
        return h.to_owned();
    }
    // FNV-1a, 32 bits.
    let mut hash: u32 = 0x811c_9dc5;
    for b in concat!("ecs-hostd-", env!("CARGO_PKG_VERSION")).bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("{hash:08x}")
}
