//! The awsvpc network mode (issue 22, spec `awsvpc.md`): a task's elastic network interface moved
//! into the network namespace of its pause container, plus a veth to the host bridge so the task
//! reaches the task endpoint at 169.254.170.2.
//!
//! Owns the seam between the engine and the kernel ([`TaskNetwork`]), the shapes both sides
//! speak ([`Eni`], [`TaskNetConfig`], [`Provisioned`]) and the pure choice of a task's bridge
//! address ([`bridge_address`]). Never talks to Docker or ECS, never decides when a task's
//! network is made or unmade (the engine does), and never shells out per step: the kernel is
//! reached over netlink.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};

use async_trait::async_trait;

pub mod netlink;
mod rtnl;

/// The host bridge task namespaces reach 169.254.170.2 through.
pub const BRIDGE_NAME: &str = "ecs-bridge";
/// The bridge's own address (the tasks' gateway to 169.254.170.2): the first of the /22.
pub const BRIDGE_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 172, 1);
/// The bridge subnet: 169.254.172.0/22.
pub const BRIDGE_NETWORK: Ipv4Addr = Ipv4Addr::new(169, 254, 172, 0);
/// Its prefix length.
pub const BRIDGE_PREFIX: u8 = 22;
/// The ENI's name inside the task namespace.
pub const TASK_ENI_NAME: &str = "eth0";
/// The task end of the veth inside the task namespace.
pub const TASK_VETH_NAME: &str = "ecs-eth0";

/// An IPv4 address with its prefix length (`10.0.1.23/24`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ipv4Cidr {
    /// The address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0–32.
    pub prefix: u8,
}

/// A task ENI as ACS describes it (`elasticNetworkInterfaces[]`, awsvpc.md §2).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Eni {
    /// `attachmentArn`: what ATTACHED is reported for.
    pub attachment_arn: String,
    /// `ec2Id` (`eni-...`).
    pub ec2_id: String,
    /// `macAddress`, lower case `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// IPv4 addresses, the primary first, with the subnet's prefix length.
    pub ipv4: Vec<Ipv4Cidr>,
    /// IPv6 addresses (`/128` unless the subnet says otherwise).
    pub ipv6: Vec<String>,
    /// The subnet's gateway (`subnetGatewayIpv4Address` without its prefix).
    pub gateway_ipv4: Option<Ipv4Addr>,
    /// `domainNameServers`.
    pub dns_servers: Vec<IpAddr>,
    /// `domainName` (search domains).
    pub dns_search: Vec<String>,
    /// `privateDnsName`: the task's hostname.
    pub private_dns_name: Option<String>,
}

/// What [`TaskNetwork::provision`] makes for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskNetConfig {
    /// The task id (the last part of its ARN): names the host veth end.
    pub task_id: String,
    /// The ENI.
    pub eni: Eni,
    /// A process of the pause container: its `/proc/<pid>/ns/net` is the task namespace.
    pub netns_pid: u32,
    /// The task's address on the host bridge ([`bridge_address`]).
    pub bridge_ipv4: Ipv4Addr,
    /// `ECS_AWSVPC_BLOCK_IMDS`: 169.254.169.254 unreachable inside the namespace.
    pub block_imds: bool,
}

/// What was made, for the task's record (and for [`TaskNetwork::release`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Provisioned {
    /// The ENI's name in the host namespace before it moved (it gets it back on release).
    pub host_ifname: String,
    /// The host end of the task's veth.
    pub host_veth: String,
}

/// Why the kernel could not do it.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// No link with the ENI's MAC address (in the host namespace, nor already in the task's).
    #[error("no network interface with MAC address {0} on this instance")]
    EniNotFound(String),
    /// The pause container's namespace is gone (it stopped).
    #[error("the task's network namespace (process {0}) is gone")]
    NamespaceGone(u32),
    /// A netlink or system call failed.
    #[error("{what}: {source}")]
    Kernel {
        /// The step.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The kernel side of awsvpc, behind a trait so the engine's tests need no root.
#[async_trait]
pub trait TaskNetwork: Send + Sync {
    /// The name of the host-namespace link with `mac`, when there is one that may be an ENI
    /// (a physical device; any link kind with the test-only setting that accepts virtual links).
    async fn find(&self, mac: &str) -> Result<Option<String>, NetError>;
    /// Makes the task's network: the ENI into the namespace of `cfg.netns_pid` as [`TASK_ENI_NAME`]
    /// with its addresses, up, a default route via the subnet gateway; a veth from the bridge
    /// ([`BRIDGE_NAME`], created when absent) with `cfg.bridge_ipv4` and a route for
    /// 169.254.170.2 via [`BRIDGE_GATEWAY`]; IMDS unreachable when `cfg.block_imds`. Idempotent:
    /// a second call after a crash half-way finishes the job.
    async fn provision(&self, cfg: &TaskNetConfig) -> Result<Provisioned, NetError>;
    /// Undoes [`TaskNetwork::provision`]: the ENI back into the host namespace under
    /// `made.host_ifname`, the veth removed. Idempotent; fine when the namespace is already gone
    /// (the veth went with it; the ENI is then looked up by MAC in the host namespace).
    async fn release(
        &self,
        eni: &Eni,
        netns_pid: Option<u32>,
        made: &Provisioned,
    ) -> Result<(), NetError>;
    /// Host link events: a counter bumped whenever a link appears or changes in the host
    /// namespace (`RTM_NEWLINK`), so a waiting ENI is looked for at once (awsvpc.md §2 step 2).
    /// `None`: no events are offered and the engine polls. A receiver whose sender is gone
    /// means the events stopped; the engine then polls again.
    fn link_events(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
}

/// The lowest free address of the bridge subnet for a new task: not the network, the gateway or
/// the broadcast address, nor any address in `taken`. `None` when all 1021 are used.
pub fn bridge_address(taken: &HashSet<Ipv4Addr>) -> Option<Ipv4Addr> {
    let base = u32::from(BRIDGE_NETWORK);
    let size = 1u32 << (32 - BRIDGE_PREFIX);
    (2..size - 1)
        .map(|i| Ipv4Addr::from(base + i))
        .find(|a| !taken.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bridge_addresses_skip_the_gateway_and_taken_ones_and_run_out() {
        let mut taken = HashSet::new();
        assert_eq!(
            bridge_address(&taken),
            Some(Ipv4Addr::new(169, 254, 172, 2))
        );
        taken.insert(Ipv4Addr::new(169, 254, 172, 2));
        assert_eq!(
            bridge_address(&taken),
            Some(Ipv4Addr::new(169, 254, 172, 3))
        );
        let all: HashSet<Ipv4Addr> = (2..1023)
            .map(|i| Ipv4Addr::from(u32::from(BRIDGE_NETWORK) + i))
            .collect();
        assert_eq!(all.len(), 1021);
        assert_eq!(bridge_address(&all), None);
        assert!(!all.contains(&BRIDGE_GATEWAY));
        assert!(!all.contains(&Ipv4Addr::new(169, 254, 175, 255)));
    }
}
