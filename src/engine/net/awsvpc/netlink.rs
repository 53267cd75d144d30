//! The real [`TaskNetwork`]: the kernel's rtnetlink, spoken directly (the messages of
//! [`super::rtnl`] over a blocking `netlink-sys` socket), no `ip` per step and no CNI binaries.
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
//! Link events ([`TaskNetwork::link_events`]): on first use, one socket subscribed to the host
//! namespace's link announcements is opened on the caller's thread (an engine thread, in the
//! host namespace) and read by one dedicated `awsvpc-links` thread that blocks in `recv`: no
//! wake-up while nothing happens. It bumps a `watch` counter per `RTM_NEWLINK`; when the socket
//! fails it logs, drops the sender and ends (receivers see the sender gone and the engine
//! polls; the next `link_events` call starts a new one).
//!
//! The ENI's host name travels with it: before the move its `ifalias` is set to that name, so a
//! provision that resumes after a crash (the ENI already `eth0` in the task namespace) still
//! reports it, and `release` clears it again. An alias the ENI had before is lost (real ENIs
//! have none).

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use rustix::io::Errno;
use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};

use super::rtnl::{
    Link, LinkChange, LinkMonitor, NLM_F_CREATE, NLM_F_REPLACE, RTN_UNICAST, RTN_UNREACHABLE,
    Route, Rtnl,
};
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
#[derive(Clone, Debug, Default)]
pub struct NetlinkTaskNetwork {
    /// Test-only: a link of any kind (veth, dummy) may be an ENI. On EC2 only physical devices
    /// (no `IFLA_INFO_KIND`, not loopback) are, as the official agent's ENI watcher decides.
    pub accept_virtual_links: bool,
    /// The link-event counter once its thread started (shared by clones).
    links: Arc<Mutex<Option<tokio::sync::watch::Receiver<u64>>>>,
}

impl NetlinkTaskNetwork {
    /// The real thing; `accept_virtual_links` only for tests (see the field).
    pub fn new(accept_virtual_links: bool) -> Self {
        Self {
            accept_virtual_links,
            links: Arc::default(),
        }
    }
}

/// Starts the link-event thread: the socket is opened here, on the caller's thread, so it
/// listens in the caller's namespace; the thread only reads it.
fn start_link_events() -> std::io::Result<tokio::sync::watch::Receiver<u64>> {
    let mut monitor = LinkMonitor::open()?;
    let (tx, rx) = tokio::sync::watch::channel(0u64);
    std::thread::Builder::new()
        .name("awsvpc-links".into())
        .spawn(move || {
            loop {
                match monitor.wait() {
                    Ok(0) => {}
                    Ok(n) => tx.send_modify(|c| *c = c.wrapping_add(n)),
                    Err(e) => {
                        tracing::warn!(error = %e, "Host link events stopped; ENIs are looked for by polling.");
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}

#[async_trait]
impl TaskNetwork for NetlinkTaskNetwork {
    async fn find(&self, mac: &str) -> Result<Option<String>, NetError> {
        let mac = parse_mac(mac)?;
        let accept = self.accept_virtual_links;
        tokio::task::spawn_blocking(move || {
            let mut host = Side::open("opening a netlink socket")?;
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

    fn link_events(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
        // A running thread is shared; one that ended (its sender is gone) is replaced.
        if let Some(rx) = links.as_ref().filter(|rx| rx.has_changed().is_ok()) {
            return Some(rx.clone());
        }
        match start_link_events() {
            Ok(rx) => {
                *links = Some(rx.clone());
                Some(rx)
            }
            Err(e) => {
                tracing::warn!(error = %e, "Cannot subscribe to host link events; ENIs are looked for by polling.");
                *links = None;
                None
            }
        }
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
                    let rename = LinkChange {
                        up: Some(false),
                        name: Some(TASK_ENI_NAME),
                        ..Default::default()
                    };
                    task.set_link(
                        eni.index,
                        &rename,
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
                let alias = LinkChange {
                    alias: Some(&eni.name),
                    ..Default::default()
                };
                host.set_link(
                    eni.index,
                    &alias,
                    &format!("recording the ENI {}'s host name in its alias", eni.name),
                )?;
                // The move and the new name in one message: the kernel renames while moving.
                let into_task = LinkChange {
                    netns_fd: Some(ns.task_fd.as_raw_fd()),
                    name: Some(TASK_ENI_NAME),
                    ..Default::default()
                };
                host.set_link(
                    eni.index,
                    &into_task,
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
                    kind: RTN_UNICAST,
                },
                "the default route via the subnet gateway",
            )?;
        }

        // (b) The bridge and the task's veth.
        let bridge = host.ensure_bridge()?;
        let veth = self.ensure_veth(&mut host, &mut task, &ns.task_fd)?;
        if veth.controller != Some(bridge.index) {
            let attach = LinkChange {
                controller: Some(bridge.index),
                ..Default::default()
            };
            host.set_link(
                veth.index,
                &attach,
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
                task.0.del_address(inner.index, a, p).map_err(|e| {
                    kernel(
                        format!("removing the stale {a}/{p} from {TASK_VETH_NAME}"),
                        e,
                    )
                })?;
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
                kind: RTN_UNICAST,
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
            kind: RTN_UNREACHABLE,
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
        host: &mut Side,
        task: &mut Side,
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
        host.0
            .new_veth(&self.host_veth, TASK_VETH_NAME, task_fd.as_raw_fd())
            .map_err(|e| {
                kernel(
                    format!("creating the veth {} / {TASK_VETH_NAME}", self.host_veth),
                    e,
                )
            })?;
        host.link_named(&self.host_veth)?
            .ok_or_else(|| gone(format!("the veth {}", self.host_veth)))
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
                let home = LinkChange {
                    netns_fd: Some(ns.host_fd.as_raw_fd()),
                    name: Some(&made.host_ifname),
                    ..Default::default()
                };
                task.set_link(
                    eni.index,
                    &home,
                    &format!(
                        "moving the ENI {} back to the host namespace as {}",
                        eni.name, made.host_ifname
                    ),
                )?;
            }
            host
        }
        // The namespace is gone: its veth went with it, a physical ENI came back by itself.
        None => Side::open("opening a netlink socket")?,
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
            let rename = LinkChange {
                up: Some(false),
                name: Some(&made.host_ifname),
                ..Default::default()
            };
            host.set_link(
                eni.index,
                &rename,
                &format!("renaming the ENI {} back to {}", eni.name, made.host_ifname),
            )?;
        }
        if eni.alias.as_deref().is_some_and(|a| !a.is_empty()) {
            let clear = LinkChange {
                alias: Some(""),
                ..Default::default()
            };
            host.set_link(
                eni.index,
                &clear,
                &format!("clearing the alias of the ENI {}", made.host_ifname),
            )?;
        }
    }
    Ok(())
}

/// Fails clearly when another link already holds the ENI's host name.
fn host_name_free(host: &mut Side, name: &str, mac: [u8; 6]) -> Result<(), NetError> {
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
    host: Side,
    task: Side,
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
        let host = Side::open("opening a netlink socket")?;
        move_into_link_name_space(task_fd.as_fd(), Some(LinkNameSpaceType::Network)).map_err(
            |e| {
                kernel(
                    format!("entering process {pid}'s network namespace"),
                    e.into(),
                )
            },
        )?;
        let task = Side::open("opening a netlink socket in the task namespace");
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

/// An [`Rtnl`] whose failures are [`NetError`]s naming the step, and the "ensure" steps.
struct Side(Rtnl);

impl Side {
    fn open(what: &str) -> Result<Self, NetError> {
        Rtnl::open().map(Side).map_err(|e| kernel(what, e))
    }

    fn links(&mut self) -> Result<Vec<Link>, NetError> {
        self.0.links().map_err(|e| kernel("listing links", e))
    }

    fn link_named(&mut self, name: &str) -> Result<Option<Link>, NetError> {
        Ok(self.links()?.into_iter().find(|l| l.name == name))
    }

    fn set_link(&mut self, index: u32, change: &LinkChange, what: &str) -> Result<(), NetError> {
        self.0.set_link(index, change).map_err(|e| kernel(what, e))
    }

    fn ensure_up(&mut self, link: &Link) -> Result<(), NetError> {
        if link.up {
            return Ok(());
        }
        let up = LinkChange {
            up: Some(true),
            ..Default::default()
        };
        self.set_link(link.index, &up, &format!("setting {} up", link.name))
    }

    /// Removes a link; one that is gone meanwhile (a veth's peer, a namespace that died) is
    /// what we wanted.
    fn del_link(&mut self, index: u32, name: &str) -> Result<(), NetError> {
        match self.0.del_link(index) {
            Err(e) if e.raw_os_error() == Some(Errno::NODEV.raw_os_error()) => Ok(()),
            other => other.map_err(|e| kernel(format!("removing {name}"), e)),
        }
    }

    /// The bridge, created when absent (another task's provision may race us to it), with its
    /// gateway address, up.
    fn ensure_bridge(&mut self) -> Result<Link, NetError> {
        let bridge = match self.link_named(BRIDGE_NAME)? {
            Some(b) => b,
            None => {
                match self.0.new_bridge(BRIDGE_NAME) {
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    other => other
                        .map_err(|e| kernel(format!("creating the bridge {BRIDGE_NAME}"), e))?,
                }
                self.link_named(BRIDGE_NAME)?
                    .ok_or_else(|| gone(format!("the bridge {BRIDGE_NAME}")))?
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
        self.0
            .addresses(index)
            .map_err(|e| kernel("listing addresses", e))
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
        match self.0.add_address(index, ip, prefix) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other.map_err(|e| kernel(format!("adding {ip}/{prefix} to {dev}"), e)),
        }
    }

    /// The route, replacing one to the same destination that differs.
    fn ensure_route(&mut self, route: Route, what: &str) -> Result<(), NetError> {
        let routes = self.0.routes().map_err(|e| kernel("listing routes", e))?;
        if routes.iter().any(|e| route.matches(e)) {
            return Ok(());
        }
        self.0
            .add_route(&route, NLM_F_CREATE | NLM_F_REPLACE)
            .map_err(|e| kernel(format!("adding {what}"), e))
    }

    /// Removes the route when it is there.
    fn remove_route(&mut self, route: Route, what: &str) -> Result<(), NetError> {
        let routes = self.0.routes().map_err(|e| kernel("listing routes", e))?;
        if !routes.iter().any(|e| route.matches(e)) {
            return Ok(());
        }
        self.0
            .del_route(&route)
            .map_err(|e| kernel(format!("removing {what}"), e))
    }
}

fn gone(what: String) -> NetError {
    kernel(
        what,
        std::io::Error::new(std::io::ErrorKind::NotFound, "gone right after it was made"),
    )
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
        // Pinned to FNV-1a's published 64-bit vectors ("" → cbf29ce484222325, "a" →
        // af63dc4c8601ec8c): a rename between versions would orphan running tasks' veths.
        assert_eq!(host_veth_name(""), "vethce484222325");
        assert_eq!(host_veth_name("a"), "vethc4c8601ec8c");
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
}
