//! The real [`TaskNetwork`]: the kernel's rtnetlink, spoken directly (`netlink-packet-route`
//! messages over a blocking `netlink-sys` socket), no `ip` per step and no CNI binaries.
//!
//! Owns the links, addresses and routes of awsvpc: the ENI moved into the task's namespace as
//! `eth0` and back, the host bridge `ecs-bridge` and its 169.254.172.1/22, one veth per task
//! (host end named from the task id by [`host_veth_name`], task end `ecs-eth0`), `lo` up, and the
//! IMDS block (an `unreachable` route for 169.254.169.254/32 inside the namespace). Every step
//! looks at what is already there first, so a second call after a crash half-way finishes the
//! job and a release of what is already released is a success. Never decides when a task's
//! network is made (the engine does), never touches a link that is not the task's ENI, veth or
//! the bridge, and never installs firewall rules inside a task namespace.
//!
//! Namespaces. A network namespace belongs to a thread, and a netlink socket to the namespace
//! its thread was in when it was opened. Each `provision` and `release` runs on a short-lived
//! `std::thread` of its own: it opens its host socket, enters the task namespace
//! (`setns` through rustix), opens the task socket there, goes back to the host namespace at
//! once, and then drives both sockets; links cross namespaces with `IFLA_NET_NS_FD`. A tokio
//! worker or a blocking-pool thread never enters another namespace (a pool thread that failed to
//! come back would run unrelated work in the task's network), and a thread that cannot return
//! ends with the operation. `find` reads only the host namespace, on the blocking pool.
//!
//! The ENI's host name travels with it: before the move its `ifalias` is set to that name, so a
//! provision that resumes after a crash (the ENI already `eth0` in the task namespace) still
//! reports it, and `release` clears it again. An alias the ENI had before is lost (real ENIs
//! have none).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};

use async_trait::async_trait;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE, NLM_F_REQUEST, NetlinkHeader,
    NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
use rustix::io::Errno;
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use super::{
    BRIDGE_GATEWAY, BRIDGE_NAME, BRIDGE_NETWORK, BRIDGE_PREFIX, Eni, NetError, Provisioned,
    TASK_ENI_NAME, TASK_VETH_NAME, TaskNetConfig, TaskNetwork,
};

/// The task endpoint's address, routed through the bridge from inside the task namespace.
const TASK_ENDPOINT: Ipv4Addr = Ipv4Addr::new(169, 254, 170, 2);
/// The instance metadata service's address, unreachable inside the namespace with `block_imds`.
const IMDS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
/// Linux's limit on an interface name (IFNAMSIZ less the terminating NUL).
const IFNAME_MAX: usize = 15;

/// [`TaskNetwork`] over rtnetlink.
#[derive(Clone, Copy, Debug, Default)]
pub struct NetlinkTaskNetwork {
    /// Test-only: a link of any kind (veth, dummy) may be an ENI. On EC2 only physical devices
    /// (no `IFLA_INFO_KIND`, not loopback) are, as the official agent's ENI watcher decides.
    pub accept_virtual_links: bool,
}

impl NetlinkTaskNetwork {
    /// The real thing; `accept_virtual_links` only for tests (see the field).
    pub fn new(accept_virtual_links: bool) -> Self {
        Self {
            accept_virtual_links,
        }
    }
}

#[async_trait]
impl TaskNetwork for NetlinkTaskNetwork {
    async fn find(&self, mac: &str) -> Result<Option<String>, NetError> {
        let mac = parse_mac(mac)?;
        let accept = self.accept_virtual_links;
        tokio::task::spawn_blocking(move || {
            let mut host = Rtnl::open("opening a netlink socket")?;
            Ok(host
                .links()?
                .into_iter()
                .find(|l| l.mac == Some(mac) && may_be_eni(l, accept))
                .map(|l| l.name))
        })
        .await
        .map_err(|e| kernel("the netlink lookup", std::io::Error::other(e)))?
    }

    async fn provision(&self, cfg: &TaskNetConfig) -> Result<Provisioned, NetError> {
        let plan = Plan::new(cfg)?;
        let accept = self.accept_virtual_links;
        on_own_thread(move || plan.provision(accept)).await
    }

    async fn release(
        &self,
        eni: &Eni,
        netns_pid: Option<u32>,
        made: &Provisioned,
    ) -> Result<(), NetError> {
        let mac = parse_mac(&eni.mac)?;
        check_ifname(&made.host_ifname)?;
        check_ifname(&made.host_veth)?;
        let (made, accept) = (made.clone(), self.accept_virtual_links);
        on_own_thread(move || release(mac, netns_pid, &made, accept)).await
    }
}

/// The host end of a task's veth: `veth` and 11 hex digits of a 64-bit FNV-1a hash of the task
/// id (15 characters, Linux's limit; the same name for the same task in every version).
pub fn host_veth_name(task_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in task_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("veth{:011x}", h & 0x0fff_ffff_ffff)
}

/// Whether a link may be a task ENI: never loopback; only a physical device (no link kind)
/// unless virtual links are accepted (tests).
fn may_be_eni(link: &Link, accept_virtual_links: bool) -> bool {
    !link.loopback && (accept_virtual_links || link.kind.is_none())
}

/// Runs `work` on a dedicated thread (it may enter another network namespace and dies with it).
async fn on_own_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, NetError> + Send + 'static,
) -> Result<T, NetError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("awsvpc-netns".into())
        .spawn(move || {
            let _ = tx.send(work());
        })
        .map_err(|e| kernel("starting the namespace thread", e))?;
    rx.await.unwrap_or_else(|_| {
        Err(kernel(
            "the namespace thread",
            std::io::Error::other("ended without an answer"),
        ))
    })
}

fn kernel(what: impl Into<String>, source: std::io::Error) -> NetError {
    NetError::Kernel {
        what: what.into(),
        source,
    }
}

/// Bad input: refused before anything is touched.
fn invalid(what: String) -> NetError {
    kernel(
        what,
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid input"),
    )
}

/// Whether `a` may be a task's address on the bridge: inside the /22, not its network, gateway or
/// broadcast address.
fn bridge_host_address(a: Ipv4Addr) -> bool {
    let (base, a) = (u32::from(BRIDGE_NETWORK), u32::from(a));
    let size = 1u32 << (32 - BRIDGE_PREFIX);
    a > base && a < base + size - 1 && a != u32::from(BRIDGE_GATEWAY)
}

/// `aa:bb:cc:dd:ee:ff` (either case).
fn parse_mac(mac: &str) -> Result<[u8; 6], NetError> {
    let bad = || {
        invalid(format!(
            "MAC address {mac:?} is not of the form aa:bb:cc:dd:ee:ff"
        ))
    };
    let mut out = [0u8; 6];
    let mut parts = mac.split(':');
    for b in &mut out {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

fn check_ifname(name: &str) -> Result<(), NetError> {
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(format!(
            "{name:?} is not a valid interface name (1 to {IFNAME_MAX} characters, no '/', ':' or blanks)"
        )));
    }
    Ok(())
}

/// An IPv6 address as ACS sends it: `addr` (a /128) or `addr/len`.
fn parse_ipv6(s: &str) -> Result<(Ipv6Addr, u8), NetError> {
    let bad = || {
        invalid(format!(
            "IPv6 address {s:?} is not of the form addr or addr/len"
        ))
    };
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
        None => (s, 128),
    };
    if prefix > 128 {
        return Err(bad());
    }
    Ok((addr.parse().map_err(|_| bad())?, prefix))
}

/// A [`TaskNetConfig`] checked and parsed: nothing is touched for a config that does not parse.
struct Plan {
    task_id: String,
    mac: [u8; 6],
    netns_pid: u32,
    ipv4: Vec<(Ipv4Addr, u8)>,
    ipv6: Vec<(Ipv6Addr, u8)>,
    gateway: Option<Ipv4Addr>,
    bridge_ipv4: Ipv4Addr,
    block_imds: bool,
    host_veth: String,
}

impl Plan {
    fn new(cfg: &TaskNetConfig) -> Result<Self, NetError> {
        let eni = &cfg.eni;
        if cfg.task_id.is_empty() {
            return Err(invalid("the task id is empty".into()));
        }
        if cfg.netns_pid == 0 {
            return Err(invalid("the pause container's process id is 0".into()));
        }
        if eni.ipv4.is_empty() {
            return Err(invalid(format!(
                "the ENI {} has no IPv4 address",
                eni.ec2_id
            )));
        }
        if let Some(c) = eni.ipv4.iter().find(|c| c.prefix > 32) {
            return Err(invalid(format!(
                "the ENI {}'s address {}/{} has a prefix longer than 32",
                eni.ec2_id, c.addr, c.prefix
            )));
        }
        if !bridge_host_address(cfg.bridge_ipv4) {
            return Err(invalid(format!(
                "the bridge address {} is not a host address of {BRIDGE_NETWORK}/{BRIDGE_PREFIX} other than its gateway {BRIDGE_GATEWAY}",
                cfg.bridge_ipv4
            )));
        }
        Ok(Self {
            task_id: cfg.task_id.clone(),
            mac: parse_mac(&eni.mac)?,
            netns_pid: cfg.netns_pid,
            ipv4: eni.ipv4.iter().map(|c| (c.addr, c.prefix)).collect(),
            ipv6: eni
                .ipv6
                .iter()
                .map(|s| parse_ipv6(s))
                .collect::<Result<_, _>>()?,
            gateway: eni.gateway_ipv4,
            bridge_ipv4: cfg.bridge_ipv4,
            block_imds: cfg.block_imds,
            host_veth: host_veth_name(&cfg.task_id),
        })
    }

    /// The whole of `provision`, on the namespace thread.
    fn provision(&self, accept_virtual_links: bool) -> Result<Provisioned, NetError> {
        let ns = Namespaces::open(self.netns_pid)?;
        let (mut host, mut task) = (ns.host, ns.task);

        // (a) The ENI: already in the task namespace (a second call), or moved there now.
        let host_ifname = match task.links()?.into_iter().find(|l| l.mac == Some(self.mac)) {
            Some(eni) => {
                if eni.name != TASK_ENI_NAME {
                    task.set_link(
                        eni.index,
                        Some(false),
                        vec![LinkAttribute::IfName(TASK_ENI_NAME.into())],
                        &format!("renaming the ENI {} to {TASK_ENI_NAME}", eni.name),
                    )?;
                }
                eni.alias.filter(|a| !a.is_empty()).unwrap_or(eni.name)
            }
            None => {
                let Some(eni) = host
                    .links()?
                    .into_iter()
                    .find(|l| l.mac == Some(self.mac) && may_be_eni(l, accept_virtual_links))
                else {
                    return Err(NetError::EniNotFound(fmt_mac(&self.mac)));
                };
                host.set_link(
                    eni.index,
                    None,
                    vec![LinkAttribute::IfAlias(eni.name.clone())],
                    &format!("recording the ENI {}'s host name in its alias", eni.name),
                )?;
                // The move and the new name in one message: the kernel renames while moving.
                host.set_link(
                    eni.index,
                    None,
                    vec![
                        LinkAttribute::NetNsFd(ns.task_fd.as_raw_fd()),
                        LinkAttribute::IfName(TASK_ENI_NAME.into()),
                    ],
                    &format!(
                        "moving the ENI {} into the namespace of process {} as {TASK_ENI_NAME}",
                        eni.name, self.netns_pid
                    ),
                )?;
                eni.name
            }
        };
        let eni = task.link_named(TASK_ENI_NAME)?.ok_or_else(|| {
            kernel(
                format!(
                    "the ENI after its move into process {}'s namespace",
                    self.netns_pid
                ),
                std::io::Error::new(std::io::ErrorKind::NotFound, "eth0 is not there"),
            )
        })?;
        for &(a, p) in &self.ipv4 {
            task.ensure_address(eni.index, IpAddr::V4(a), p, TASK_ENI_NAME)?;
        }
        for &(a, p) in &self.ipv6 {
            task.ensure_address(eni.index, IpAddr::V6(a), p, TASK_ENI_NAME)?;
        }
        task.ensure_up(&eni)?;
        if let Some(gw) = self.gateway {
            task.ensure_route(
                Route {
                    dst: Ipv4Addr::UNSPECIFIED,
                    prefix: 0,
                    gateway: Some(gw),
                    oif: Some(eni.index),
                    kind: RouteType::Unicast,
                },
                "the default route via the subnet gateway",
            )?;
        }

        // (b) The bridge and the task's veth.
        let bridge = host.ensure_bridge()?;
        let veth = self.ensure_veth(&mut host, &mut task, &ns.task_fd)?;
        if veth.controller != Some(bridge.index) {
            host.set_link(
                veth.index,
                None,
                vec![LinkAttribute::Controller(bridge.index)],
                &format!("attaching {} to {BRIDGE_NAME}", veth.name),
            )?;
        }
        host.ensure_up(&veth)?;
        let inner = task.link_named(TASK_VETH_NAME)?.ok_or_else(|| {
            kernel(
                format!("{TASK_VETH_NAME} in process {}'s namespace", self.netns_pid),
                std::io::Error::new(std::io::ErrorKind::NotFound, "gone after creation"),
            )
        })?;
        for (a, p) in task.addresses(inner.index)? {
            let stale = matches!(a, IpAddr::V4(v4) if v4 != self.bridge_ipv4);
            if stale {
                task.del_address(inner.index, a, p, TASK_VETH_NAME)?;
            }
        }
        task.ensure_address(
            inner.index,
            IpAddr::V4(self.bridge_ipv4),
            BRIDGE_PREFIX,
            TASK_VETH_NAME,
        )?;
        task.ensure_up(&inner)?;
        task.ensure_route(
            Route {
                dst: TASK_ENDPOINT,
                prefix: 32,
                gateway: Some(BRIDGE_GATEWAY),
                oif: Some(inner.index),
                kind: RouteType::Unicast,
            },
            "the route to the task endpoint via the bridge",
        )?;

        // (c) Loopback.
        if let Some(lo) = task.link_named("lo")? {
            task.ensure_up(&lo)?;
        }

        // (d) IMDS.
        let imds = Route {
            dst: IMDS,
            prefix: 32,
            gateway: None,
            oif: None,
            kind: RouteType::Unreachable,
        };
        if self.block_imds {
            task.ensure_route(imds, "the unreachable route for IMDS")?;
        } else {
            task.remove_route(imds, "the unreachable route for IMDS")?;
        }

        tracing::debug!(
            task.id = %self.task_id,
            eni = %host_ifname,
            veth = %self.host_veth,
            "Task network provisioned."
        );
        Ok(Provisioned {
            host_ifname,
            host_veth: self.host_veth.clone(),
        })
    }

    /// The veth pair, made when either end is missing or they are not each other's peer.
    fn ensure_veth(
        &self,
        host: &mut Rtnl,
        task: &mut Rtnl,
        task_fd: &File,
    ) -> Result<Link, NetError> {
        let outer = host.link_named(&self.host_veth)?;
        let inner = task.link_named(TASK_VETH_NAME)?;
        if let (Some(o), Some(i)) = (&outer, &inner)
            && o.kind.as_deref() == Some("veth")
            && i.peer == Some(o.index)
        {
            return Ok(o.clone());
        }
        if let Some(o) = outer {
            host.del_link(o.index, &o.name)?;
        }
        if let Some(i) = task.link_named(TASK_VETH_NAME)? {
            task.del_link(i.index, TASK_VETH_NAME)?;
        }
        let mut peer = LinkMessage::default();
        peer.attributes = vec![
            LinkAttribute::IfName(TASK_VETH_NAME.into()),
            LinkAttribute::NetNsFd(task_fd.as_raw_fd()),
        ];
        let mut msg = LinkMessage::default();
        msg.attributes = vec![
            LinkAttribute::IfName(self.host_veth.clone()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
            ]),
        ];
        host.ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("creating the veth {} / {TASK_VETH_NAME}", self.host_veth),
        )?;
        host.link_named(&self.host_veth)?.ok_or_else(|| {
            kernel(
                format!("the veth {}", self.host_veth),
                std::io::Error::new(std::io::ErrorKind::NotFound, "gone after creation"),
            )
        })
    }
}

/// The whole of `release`, on the namespace thread.
fn release(
    mac: [u8; 6],
    netns_pid: Option<u32>,
    made: &Provisioned,
    accept_virtual_links: bool,
) -> Result<(), NetError> {
    let opened = match netns_pid {
        Some(pid) => match Namespaces::open(pid) {
            Ok(ns) => Some(ns),
            Err(NetError::NamespaceGone(_)) => None,
            Err(e) => return Err(e),
        },
        None => None,
    };
    let mut host = match opened {
        Some(ns) => {
            let (mut host, mut task) = (ns.host, ns.task);
            if let Some(eni) = task.links()?.into_iter().find(|l| l.mac == Some(mac)) {
                host_name_free(&mut host, &made.host_ifname, mac)?;
                task.set_link(
                    eni.index,
                    None,
                    vec![
                        LinkAttribute::NetNsFd(ns.host_fd.as_raw_fd()),
                        LinkAttribute::IfName(made.host_ifname.clone()),
                    ],
                    &format!(
                        "moving the ENI {} back to the host namespace as {}",
                        eni.name, made.host_ifname
                    ),
                )?;
            }
            host
        }
        // The namespace is gone: its veth went with it, a physical ENI came back by itself.
        None => Rtnl::open("opening a netlink socket")?,
    };
    if let Some(v) = host.link_named(&made.host_veth)? {
        host.del_link(v.index, &v.name)?;
    }
    if let Some(eni) = host
        .links()?
        .into_iter()
        .find(|l| l.mac == Some(mac) && may_be_eni(l, accept_virtual_links))
    {
        if eni.name != made.host_ifname {
            host_name_free(&mut host, &made.host_ifname, mac)?;
            host.set_link(
                eni.index,
                Some(false),
                vec![LinkAttribute::IfName(made.host_ifname.clone())],
                &format!("renaming the ENI {} back to {}", eni.name, made.host_ifname),
            )?;
        }
        if eni.alias.as_deref().is_some_and(|a| !a.is_empty()) {
            host.set_link(
                eni.index,
                None,
                vec![LinkAttribute::IfAlias(String::new())],
                &format!("clearing the alias of the ENI {}", made.host_ifname),
            )?;
        }
    }
    Ok(())
}

/// Fails clearly when another link already holds the ENI's host name.
fn host_name_free(host: &mut Rtnl, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
    match host.link_named(name)? {
        Some(other) if other.mac != Some(mac) => Err(kernel(
            format!("giving the ENI {} its host name back", fmt_mac(&mac)),
            std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("another link is named {name}"),
            ),
        )),
        _ => Ok(()),
    }
}

fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The namespace thread's two sockets: one in the host namespace (where it started), one in the
/// task's, and the namespace files links move to.
struct Namespaces {
    host: Rtnl,
    task: Rtnl,
    host_fd: File,
    task_fd: File,
}

impl Namespaces {
    /// Call only on a thread of its own (see the module doc): it passes through the task's
    /// namespace to open a socket there and comes back.
    fn open(pid: u32) -> Result<Self, NetError> {
        let host_fd = File::open("/proc/thread-self/ns/net")
            .map_err(|e| kernel("opening this thread's network namespace", e))?;
        let task_fd = match File::open(format!("/proc/{pid}/ns/net")) {
            Ok(f) => f,
            Err(e)
                if [Errno::NOENT, Errno::SRCH]
                    .iter()
                    .any(|n| e.raw_os_error() == Some(n.raw_os_error())) =>
            {
                return Err(NetError::NamespaceGone(pid));
            }
            Err(e) => {
                return Err(kernel(
                    format!("opening process {pid}'s network namespace"),
                    e,
                ));
            }
        };
        let host = Rtnl::open("opening a netlink socket")?;
        move_into_link_name_space(task_fd.as_fd(), Some(LinkNameSpaceType::Network)).map_err(
            |e| {
                kernel(
                    format!("entering process {pid}'s network namespace"),
                    e.into(),
                )
            },
        )?;
        let task = Rtnl::open("opening a netlink socket in the task namespace");
        let back = move_into_link_name_space(host_fd.as_fd(), Some(LinkNameSpaceType::Network));
        if let Err(e) = back {
            // The thread stays where it is and ends with this operation; report it.
            return Err(kernel("returning to the host namespace", e.into()));
        }
        Ok(Self {
            host,
            task: task?,
            host_fd,
            task_fd,
        })
    }
}

/// What this module needs to know of a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Link {
    index: u32,
    name: String,
    mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, ...); `None` for a physical device.
    kind: Option<String>,
    loopback: bool,
    up: bool,
    /// The bridge it is attached to.
    controller: Option<u32>,
    /// A veth's peer's index (in the peer's namespace).
    peer: Option<u32>,
    alias: Option<String>,
}

impl Link {
    fn from_message(m: &LinkMessage) -> Self {
        let mut l = Link {
            index: m.header.index,
            loopback: m.header.flags.contains(LinkFlags::Loopback),
            up: m.header.flags.contains(LinkFlags::Up),
            ..Default::default()
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(b) if b.len() == 6 => {
                    let mut mac = [0u8; 6];
                    mac.copy_from_slice(b);
                    l.mac = Some(mac);
                }
                LinkAttribute::Controller(i) => l.controller = Some(*i),
                LinkAttribute::Link(i) => l.peer = Some(*i),
                LinkAttribute::IfAlias(s) => l.alias = Some(s.clone()),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }
}

/// A route this module makes (main table, IPv4).
#[derive(Clone, Copy, Debug)]
struct Route {
    dst: Ipv4Addr,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    oif: Option<u32>,
    kind: RouteType,
}

impl Route {
    fn message(&self) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.destination_prefix_length = self.prefix;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Static;
        m.header.scope = RouteScope::Universe;
        m.header.kind = self.kind;
        if self.prefix > 0 {
            m.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(self.dst)));
        }
        if let Some(gw) = self.gateway {
            m.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(gw)));
        }
        if let Some(oif) = self.oif {
            m.attributes.push(RouteAttribute::Oif(oif));
        }
        m
    }

    /// Whether the kernel's `m` is this route: same destination in the main table, same type,
    /// gateway and device.
    fn matches(&self, m: &RouteMessage) -> bool {
        self.same_destination(m)
            && m.header.kind == self.kind
            && route_gateway(m) == self.gateway
            && (self.oif.is_none() || route_oif(m) == self.oif)
    }

    fn same_destination(&self, m: &RouteMessage) -> bool {
        m.header.address_family == AddressFamily::Inet
            && route_table(m) == u32::from(RouteHeader::RT_TABLE_MAIN)
            && m.header.destination_prefix_length == self.prefix
            && (self.prefix == 0 || route_dst(m) == Some(self.dst))
    }
}

fn route_table(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn route_dst(m: &RouteMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
        _ => None,
    })
}

fn route_gateway(m: &RouteMessage) -> Option<Ipv4Addr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
        _ => None,
    })
}

fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(o) => Some(*o),
        _ => None,
    })
}

/// One blocking rtnetlink socket, in the namespace its thread was in when it was opened.
struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    fn open(what: &str) -> Result<Self, NetError> {
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| kernel(what, e))?;
        socket.bind_auto().map_err(|e| kernel(what, e))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(|e| kernel(what, e))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and collects the answer: the messages of a dump, or nothing for an
    /// acknowledged change.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> std::io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut buf = vec![0; packet.header.length as usize];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                let len = reply.header.length as usize;
                if len == 0 {
                    break;
                }
                offset += len;
                if reply.header.sequence_number != self.seq {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(e.to_io()),
                        };
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }

    /// A change the kernel must acknowledge.
    fn ack(&mut self, msg: RouteNetlinkMessage, flags: u16, what: &str) -> Result<(), NetError> {
        self.request(msg, NLM_F_ACK | flags)
            .map(|_| ())
            .map_err(|e| kernel(what, e))
    }

    fn links(&mut self) -> Result<Vec<Link>, NetError> {
        let got = self
            .request(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| kernel("listing links", e))?;
        Ok(got
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(Link::from_message(l)),
                _ => None,
            })
            .collect())
    }

    fn link_named(&mut self, name: &str) -> Result<Option<Link>, NetError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    /// RTM_SETLINK on `index` with `attrs`, and the up flag set or cleared when `up` says so.
    fn set_link(
        &mut self,
        index: u32,
        up: Option<bool>,
        attrs: Vec<LinkAttribute>,
        what: &str,
    ) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if let Some(up) = up {
            m.header.change_mask = LinkFlags::Up;
            if up {
                m.header.flags = LinkFlags::Up;
            }
        }
        m.attributes = attrs;
        self.ack(RouteNetlinkMessage::SetLink(m), 0, what)
    }

    fn ensure_up(&mut self, link: &Link) -> Result<(), NetError> {
        if link.up {
            return Ok(());
        }
        self.set_link(
            link.index,
            Some(true),
            Vec::new(),
            &format!("setting {} up", link.name),
        )
    }

    fn del_link(&mut self, index: u32, name: &str) -> Result<(), NetError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.ack(
            RouteNetlinkMessage::DelLink(m),
            0,
            &format!("removing {name}"),
        ) {
            // Gone meanwhile (a veth's peer, a namespace that died): what we wanted.
            Err(NetError::Kernel { source, .. })
                if source.raw_os_error() == Some(Errno::NODEV.raw_os_error()) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// The bridge, created when absent (another task's provision may race us to it), with its
    /// gateway address, up.
    fn ensure_bridge(&mut self) -> Result<Link, NetError> {
        let bridge = match self.link_named(BRIDGE_NAME)? {
            Some(b) => b,
            None => {
                let mut m = LinkMessage::default();
                m.attributes = vec![
                    LinkAttribute::IfName(BRIDGE_NAME.into()),
                    LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
                ];
                match self.ack(
                    RouteNetlinkMessage::NewLink(m),
                    NLM_F_CREATE | NLM_F_EXCL,
                    &format!("creating the bridge {BRIDGE_NAME}"),
                ) {
                    Err(NetError::Kernel { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists => {}
                    other => other?,
                }
                self.link_named(BRIDGE_NAME)?.ok_or_else(|| {
                    kernel(
                        format!("the bridge {BRIDGE_NAME}"),
                        std::io::Error::new(std::io::ErrorKind::NotFound, "gone after creation"),
                    )
                })?
            }
        };
        if bridge.kind.as_deref() != Some("bridge") {
            return Err(kernel(
                format!("the bridge {BRIDGE_NAME}"),
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "a link of kind {} has that name",
                        bridge.kind.as_deref().unwrap_or("device")
                    ),
                ),
            ));
        }
        self.ensure_address(
            bridge.index,
            IpAddr::V4(BRIDGE_GATEWAY),
            BRIDGE_PREFIX,
            BRIDGE_NAME,
        )?;
        self.ensure_up(&bridge)?;
        Ok(bridge)
    }

    fn addresses(&mut self, index: u32) -> Result<Vec<(IpAddr, u8)>, NetError> {
        let got = self
            .request(
                RouteNetlinkMessage::GetAddress(AddressMessage::default()),
                NLM_F_DUMP,
            )
            .map_err(|e| kernel("listing addresses", e))?;
        Ok(got
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) if a.header.index == index => {
                    a.attributes.iter().find_map(|at| match at {
                        AddressAttribute::Address(ip) => Some((*ip, a.header.prefix_len)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn address_message(index: u32, ip: IpAddr, prefix: u8) -> AddressMessage {
        let mut m = AddressMessage::default();
        m.header.index = index;
        m.header.prefix_len = prefix;
        m.header.family = match ip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Address(ip));
        if ip.is_ipv6() {
            // Usable at once: the VPC hands out unique addresses, so duplicate detection only
            // delays the task.
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        m
    }

    fn ensure_address(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
        dev: &str,
    ) -> Result<(), NetError> {
        if self.addresses(index)?.contains(&(ip, prefix)) {
            return Ok(());
        }
        match self.ack(
            RouteNetlinkMessage::NewAddress(Self::address_message(index, ip, prefix)),
            NLM_F_CREATE | NLM_F_EXCL,
            &format!("adding {ip}/{prefix} to {dev}"),
        ) {
            Err(NetError::Kernel { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                Ok(())
            }
            other => other,
        }
    }

    fn del_address(
        &mut self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
        dev: &str,
    ) -> Result<(), NetError> {
        self.ack(
            RouteNetlinkMessage::DelAddress(Self::address_message(index, ip, prefix)),
            0,
            &format!("removing the stale {ip}/{prefix} from {dev}"),
        )
    }

    fn routes(&mut self) -> Result<Vec<RouteMessage>, NetError> {
        let mut q = RouteMessage::default();
        q.header.address_family = AddressFamily::Inet;
        let got = self
            .request(RouteNetlinkMessage::GetRoute(q), NLM_F_DUMP)
            .map_err(|e| kernel("listing routes", e))?;
        Ok(got
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => Some(r),
                _ => None,
            })
            .collect())
    }

    /// The route, replacing one to the same destination that differs.
    fn ensure_route(&mut self, route: Route, what: &str) -> Result<(), NetError> {
        let routes = self.routes()?;
        if routes.iter().any(|m| route.matches(m)) {
            return Ok(());
        }
        self.ack(
            RouteNetlinkMessage::NewRoute(route.message()),
            NLM_F_CREATE | NLM_F_REPLACE,
            &format!("adding {what}"),
        )
    }

    /// Removes the route when it is there.
    fn remove_route(&mut self, route: Route, what: &str) -> Result<(), NetError> {
        let routes = self.routes()?;
        if !routes.iter().any(|m| route.matches(m)) {
            return Ok(());
        }
        self.ack(
            RouteNetlinkMessage::DelRoute(route.message()),
            0,
            &format!("removing {what}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_names_are_deterministic_short_and_distinct() {
        let a = host_veth_name("0123456789abcdef0123456789abcdef");
        assert_eq!(a, host_veth_name("0123456789abcdef0123456789abcdef"));
        assert_eq!(a.len(), IFNAME_MAX);
        assert!(a.starts_with("veth"));
        assert!(a[4..].chars().all(|c| c.is_ascii_hexdigit()));
        // Pinned: a rename between versions would orphan the veths of running tasks.
        assert_eq!(host_veth_name(""), "veth84222325");
        assert_ne!(a, host_veth_name("0123456789abcdef0123456789abcdee"));
        let many: std::collections::HashSet<String> = (0..10_000)
            .map(|i| host_veth_name(&format!("task-{i}")))
            .collect();
        assert_eq!(many.len(), 10_000);
        check_ifname(&a).unwrap();
    }

    #[test]
    fn macs_parse_in_either_case_and_bad_ones_are_named() {
        assert_eq!(
            parse_mac("0A:58:0a:00:01:17").unwrap(),
            [0x0a, 0x58, 0x0a, 0x00, 0x01, 0x17]
        );
        assert_eq!(
            fmt_mac(&parse_mac("0A:58:0a:00:01:17").unwrap()),
            "0a:58:0a:00:01:17"
        );
        for bad in [
            "",
            "0a:58:0a:00:01",
            "0a:58:0a:00:01:17:00",
            "0a-58-0a-00-01-17",
            "zz:58:0a:00:01:17",
            "a:58:0a:00:01:17",
        ] {
            let e = parse_mac(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }

    #[test]
    fn ipv6_addresses_default_to_128_and_bad_ones_are_refused() {
        assert_eq!(
            parse_ipv6("2001:db8::1").unwrap(),
            ("2001:db8::1".parse().unwrap(), 128)
        );
        assert_eq!(parse_ipv6("2001:db8::1/64").unwrap().1, 64);
        for bad in ["2001:db8::1/129", "10.0.0.1", "2001:db8::1/x", ""] {
            assert!(parse_ipv6(bad).unwrap_err().to_string().contains(bad));
        }
    }

    #[test]
    fn only_physical_non_loopback_links_are_enis_unless_virtual_ones_are_accepted() {
        let phys = Link {
            name: "ens6".into(),
            ..Default::default()
        };
        let veth = Link {
            kind: Some("veth".into()),
            ..phys.clone()
        };
        let lo = Link {
            loopback: true,
            ..phys.clone()
        };
        assert!(may_be_eni(&phys, false));
        assert!(!may_be_eni(&veth, false));
        assert!(may_be_eni(&veth, true));
        assert!(!may_be_eni(&lo, false));
        assert!(!may_be_eni(&lo, true));
    }

    #[test]
    fn interface_names_are_checked() {
        for ok in ["eth0", "eni0", "ens5", "veth0123456789a"] {
            check_ifname(ok).unwrap();
        }
        for bad in ["", "veth0123456789ab", "a/b", "a:b", "a b", ".", ".."] {
            assert!(check_ifname(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn routes_match_on_destination_type_gateway_and_device() {
        let r = Route {
            dst: TASK_ENDPOINT,
            prefix: 32,
            gateway: Some(BRIDGE_GATEWAY),
            oif: Some(7),
            kind: RouteType::Unicast,
        };
        let m = r.message();
        assert!(r.matches(&m));
        let other_dev = Route { oif: Some(8), ..r };
        assert!(!other_dev.matches(&m));
        let unreachable = Route {
            kind: RouteType::Unreachable,
            gateway: None,
            oif: None,
            ..r
        };
        assert!(!unreachable.matches(&m));
        assert!(unreachable.matches(&unreachable.message()));
        let default = Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
            oif: None,
            kind: RouteType::Unicast,
        };
        assert!(default.matches(&default.message()));
        assert!(!default.matches(&m));
    }
}
