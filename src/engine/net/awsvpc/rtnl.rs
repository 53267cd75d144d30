//! rtnetlink on the wire, only the little awsvpc needs: links (list, create a bridge or a veth
//! pair, set name, alias, namespace, controller and up, delete), addresses (list, add, delete)
//! and IPv4 routes (list, add, delete) over one blocking `netlink-sys` socket, with
//! `netlink-packet-core` for the netlink framing and the attribute iterator.
//!
//! Owns the byte layouts (`ifinfomsg`, `ifaddrmsg`, `rtmsg` and their attributes, constants from
//! the kernel's uapi headers) and the request/acknowledge exchange. Never decides what to change
//! (`netlink` does) and never reads an attribute it does not need: the typed catalogue of
//! `netlink-packet-route` cost 0.6 MB of the 15 MB binary budget for parsers of every link kind,
//! queueing discipline and statistic the kernel can send, so the dozen fields used here are read
//! by hand (see Cargo.toml).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable,
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

pub(super) use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};

// linux/rtnetlink.h: message types.
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
// linux/rtnetlink.h: the multicast group of link announcements.
const RTMGRP_LINK: u32 = 1;
// linux/netlink.h: the size of `nlmsghdr`.
const NLMSG_HDRLEN: usize = 16;
// linux/if_link.h: link attributes.
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_IFALIAS: u16 = 20;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
// linux/veth.h
const VETH_INFO_PEER: u16 = 1;
// linux/if.h
const IFF_UP: u32 = 0x1;
const IFF_LOOPBACK: u32 = 0x8;
// linux/if_addr.h
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x2;
// linux/rtnetlink.h: route attributes and header values.
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
/// A route to a gateway or a directly connected network.
pub(super) const RTN_UNICAST: u8 = 1;
/// A route that answers "no route to host".
pub(super) const RTN_UNREACHABLE: u8 = 7;
// linux/socket.h
const AF_UNSPEC: u8 = 0;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// What awsvpc needs to know of a link.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// `IFLA_INFO_KIND` (`veth`, `bridge`, ...); `None` for a physical device.
    pub kind: Option<String>,
    pub loopback: bool,
    pub up: bool,
    /// The bridge it is attached to.
    pub controller: Option<u32>,
    /// `IFLA_LINK`: a veth's peer's index (in the peer's namespace).
    pub peer: Option<u32>,
    pub alias: Option<String>,
}

/// Changes of one `RTM_SETLINK`.
#[derive(Debug, Default)]
pub(super) struct LinkChange<'a> {
    /// Set (true) or clear (false) the up flag.
    pub up: Option<bool>,
    pub name: Option<&'a str>,
    /// An empty alias removes it.
    pub alias: Option<&'a str>,
    /// Move into the namespace of this open `/proc/.../ns/net`; with `name`, renamed on the way.
    pub netns_fd: Option<RawFd>,
    pub controller: Option<u32>,
}

/// An IPv4 route of the main table, as awsvpc makes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Route {
    pub dst: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    /// `RTN_UNICAST` or `RTN_UNREACHABLE`.
    pub kind: u8,
}

/// A route as the kernel lists it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct RouteEntry {
    pub family: u8,
    pub table: u32,
    pub prefix: u8,
    pub kind: u8,
    pub dst: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

impl Route {
    /// Whether the kernel's `e` is this route: same destination in the main table, same type,
    /// gateway and (when given) device.
    pub fn matches(&self, e: &RouteEntry) -> bool {
        e.family == AF_INET
            && e.table == u32::from(RT_TABLE_MAIN)
            && e.prefix == self.prefix
            && (self.prefix == 0 || e.dst == Some(self.dst))
            && e.kind == self.kind
            && e.gateway == self.gateway
            && (self.oif.is_none() || e.oif == self.oif)
    }

    fn body(&self) -> Vec<u8> {
        let mut b = vec![
            AF_INET,
            self.prefix,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_STATIC,
            RT_SCOPE_UNIVERSE,
            self.kind,
        ];
        b.extend_from_slice(&0u32.to_ne_bytes());
        if self.prefix > 0 {
            nla(&mut b, RTA_DST, &self.dst.octets());
        }
        if let Some(gw) = self.gateway {
            nla(&mut b, RTA_GATEWAY, &gw.octets());
        }
        if let Some(oif) = self.oif {
            nla(&mut b, RTA_OIF, &oif.to_ne_bytes());
        }
        b
    }
}

/// One rtnetlink message, kept as bytes: the family header and its attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Raw {
    kind: u16,
    body: Vec<u8>,
}

impl NetlinkSerializable for Raw {
    fn message_type(&self) -> u16 {
        self.kind
    }
    fn buffer_len(&self) -> usize {
        self.body.len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.body);
    }
}

impl NetlinkDeserializable for Raw {
    type Error = io::Error;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, io::Error> {
        Ok(Raw {
            kind: header.message_type,
            body: payload.to_vec(),
        })
    }
}

/// Appends one attribute (4-byte header, value, padding to 4).
fn nla(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

/// A NUL-terminated string attribute value.
fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// `ifinfomsg`: family, type, index, flags and the change mask.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> Vec<u8> {
    let mut b = vec![AF_UNSPEC, 0, 0, 0];
    b.extend_from_slice(&index.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&change.to_ne_bytes());
    b
}

fn bad(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed {what} from the kernel"),
    )
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The attributes after a family header of `header_len` bytes: (type, value).
fn attributes(body: &[u8], header_len: usize) -> io::Result<Vec<(u16, &[u8])>> {
    nlas(body.get(header_len..).ok_or_else(|| bad("message"))?)
}

/// Splits a run of attributes (4-byte header: length, type; value; padding to 4).
fn nlas(mut rest: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    // The type's top two bits are the nested and byte-order flags.
    const TYPE_MASK: u16 = 0x3fff;
    let mut out = Vec::new();
    while rest.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & TYPE_MASK;
        let value = rest.get(4..len).ok_or_else(|| bad("attribute"))?;
        out.push((kind, value));
        rest = rest.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(out)
}

fn string(v: &[u8]) -> String {
    String::from_utf8_lossy(v.split(|&c| c == 0).next().unwrap_or_default()).into_owned()
}

fn ipv4(v: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from)
}

fn parse_link(body: &[u8]) -> io::Result<Link> {
    let flags = u32_at(body, 8).ok_or_else(|| bad("link"))?;
    let mut l = Link {
        index: u32_at(body, 4).ok_or_else(|| bad("link"))?,
        loopback: flags & IFF_LOOPBACK != 0,
        up: flags & IFF_UP != 0,
        ..Default::default()
    };
    for (kind, v) in attributes(body, 16)? {
        match kind {
            IFLA_IFNAME => l.name = string(v),
            IFLA_ADDRESS => l.mac = <[u8; 6]>::try_from(v).ok(),
            IFLA_MASTER => l.controller = u32_at(v, 0),
            IFLA_LINK => l.peer = u32_at(v, 0),
            IFLA_IFALIAS => l.alias = Some(string(v)),
            IFLA_LINKINFO => {
                for (k, v) in nlas(v)? {
                    if k == IFLA_INFO_KIND {
                        l.kind = Some(string(v));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(l)
}

fn address_body(index: u32, ip: IpAddr, prefix: u8) -> Vec<u8> {
    let family = if ip.is_ipv4() { AF_INET } else { AF_INET6 };
    let mut b = vec![family, prefix, 0, RT_SCOPE_UNIVERSE];
    b.extend_from_slice(&index.to_ne_bytes());
    let octets = match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    nla(&mut b, IFA_LOCAL, &octets);
    nla(&mut b, IFA_ADDRESS, &octets);
    if ip.is_ipv6() {
        // Usable at once: the VPC hands out unique addresses, so duplicate detection would only
        // delay the task.
        nla(&mut b, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    }
    b
}

/// (link index, address, prefix) of an `ifaddrmsg`.
fn parse_address(body: &[u8]) -> io::Result<Option<(u32, IpAddr, u8)>> {
    let (family, prefix) = match body {
        [f, p, ..] => (*f, *p),
        _ => return Err(bad("address")),
    };
    let index = u32_at(body, 4).ok_or_else(|| bad("address"))?;
    let (mut local, mut address) = (None, None);
    for (kind, v) in attributes(body, 8)? {
        let ip = match family {
            AF_INET => ipv4(v).map(IpAddr::V4),
            AF_INET6 => <[u8; 16]>::try_from(v)
                .ok()
                .map(|o| IpAddr::V6(Ipv6Addr::from(o))),
            _ => None,
        };
        match kind {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            _ => {}
        }
    }
    Ok(local.or(address).map(|ip| (index, ip, prefix)))
}

fn parse_route(body: &[u8]) -> io::Result<RouteEntry> {
    let [family, prefix, _, _, table, _, _, kind, ..] = *body else {
        return Err(bad("route"));
    };
    let mut e = RouteEntry {
        family,
        prefix,
        table: u32::from(table),
        kind,
        ..Default::default()
    };
    for (k, v) in attributes(body, 12)? {
        match k {
            RTA_DST => e.dst = ipv4(v),
            RTA_GATEWAY => e.gateway = ipv4(v),
            RTA_OIF => e.oif = u32_at(v, 0),
            RTA_TABLE => e.table = u32_at(v, 0).unwrap_or(e.table),
            _ => {}
        }
    }
    Ok(e)
}

/// One blocking rtnetlink socket, in the namespace its thread was in when it was opened.
pub(super) struct Rtnl {
    socket: Socket,
    seq: u32,
}

impl Rtnl {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, seq: 0 })
    }

    /// Sends one request and collects the answer: the messages of a dump, or nothing for an
    /// acknowledged change (the kernel's refusal as its errno).
    fn request(&mut self, kind: u16, body: Vec<u8>, flags: u16) -> io::Result<Vec<Raw>> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet =
            NetlinkMessage::new(header, NetlinkPayload::InnerMessage(Raw { kind, body }));
        packet.finalize();
        let mut buf = vec![0; packet.header.length as usize];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0)?;
        let mut out = Vec::new();
        loop {
            let (data, _) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < data.len() {
                let reply = NetlinkMessage::<Raw>::deserialize(&data[offset..])
                    .map_err(|_| bad("netlink message"))?;
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

    fn change(&mut self, kind: u16, body: Vec<u8>, flags: u16) -> io::Result<()> {
        self.request(kind, body, NLM_F_ACK | flags).map(|_| ())
    }

    fn dump(&mut self, kind: u16, body: Vec<u8>, want: u16) -> io::Result<Vec<Vec<u8>>> {
        Ok(self
            .request(kind, body, NLM_F_DUMP)?
            .into_iter()
            .filter(|m| m.kind == want)
            .map(|m| m.body)
            .collect())
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        self.dump(RTM_GETLINK, ifinfomsg(0, 0, 0), RTM_NEWLINK)?
            .iter()
            .map(|b| parse_link(b))
            .collect()
    }

    pub fn set_link(&mut self, index: u32, c: &LinkChange) -> io::Result<()> {
        let (flags, mask) = match c.up {
            Some(true) => (IFF_UP, IFF_UP),
            Some(false) => (0, IFF_UP),
            None => (0, 0),
        };
        let mut b = ifinfomsg(index, flags, mask);
        if let Some(fd) = c.netns_fd {
            nla(&mut b, IFLA_NET_NS_FD, &fd.to_ne_bytes());
        }
        if let Some(n) = c.name {
            nla(&mut b, IFLA_IFNAME, &cstr(n));
        }
        if let Some(a) = c.alias {
            // Without a terminating NUL: the kernel takes the attribute's length as the alias's.
            nla(&mut b, IFLA_IFALIAS, a.as_bytes());
        }
        if let Some(m) = c.controller {
            nla(&mut b, IFLA_MASTER, &m.to_ne_bytes());
        }
        self.change(RTM_SETLINK, b, 0)
    }

    pub fn new_bridge(&mut self, name: &str) -> io::Result<()> {
        let mut info = Vec::new();
        nla(&mut info, IFLA_INFO_KIND, &cstr("bridge"));
        let mut b = ifinfomsg(0, 0, 0);
        nla(&mut b, IFLA_IFNAME, &cstr(name));
        nla(&mut b, IFLA_LINKINFO, &info);
        self.change(RTM_NEWLINK, b, NLM_F_CREATE | NLM_F_EXCL)
    }

    /// A veth pair: `name` here, `peer` created directly in the namespace of `peer_ns_fd`.
    pub fn new_veth(&mut self, name: &str, peer: &str, peer_ns_fd: RawFd) -> io::Result<()> {
        let mut p = ifinfomsg(0, 0, 0);
        nla(&mut p, IFLA_IFNAME, &cstr(peer));
        nla(&mut p, IFLA_NET_NS_FD, &peer_ns_fd.to_ne_bytes());
        let mut data = Vec::new();
        nla(&mut data, VETH_INFO_PEER, &p);
        let mut info = Vec::new();
        nla(&mut info, IFLA_INFO_KIND, &cstr("veth"));
        nla(&mut info, IFLA_INFO_DATA, &data);
        let mut b = ifinfomsg(0, 0, 0);
        nla(&mut b, IFLA_IFNAME, &cstr(name));
        nla(&mut b, IFLA_LINKINFO, &info);
        self.change(RTM_NEWLINK, b, NLM_F_CREATE | NLM_F_EXCL)
    }

    pub fn del_link(&mut self, index: u32) -> io::Result<()> {
        self.change(RTM_DELLINK, ifinfomsg(index, 0, 0), 0)
    }

    /// The addresses of link `index`.
    pub fn addresses(&mut self, index: u32) -> io::Result<Vec<(IpAddr, u8)>> {
        let mut out = Vec::new();
        for b in self.dump(
            RTM_GETADDR,
            vec![AF_UNSPEC, 0, 0, 0, 0, 0, 0, 0],
            RTM_NEWADDR,
        )? {
            if let Some((i, ip, p)) = parse_address(&b)?
                && i == index
            {
                out.push((ip, p));
            }
        }
        Ok(out)
    }

    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        self.change(
            RTM_NEWADDR,
            address_body(index, ip, prefix),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    pub fn del_address(&mut self, index: u32, ip: IpAddr, prefix: u8) -> io::Result<()> {
        self.change(RTM_DELADDR, address_body(index, ip, prefix), 0)
    }

    /// The IPv4 routes of every table.
    pub fn routes(&mut self) -> io::Result<Vec<RouteEntry>> {
        let mut q = vec![AF_INET, 0, 0, 0, 0, 0, 0, 0];
        q.extend_from_slice(&0u32.to_ne_bytes());
        self.dump(RTM_GETROUTE, q, RTM_NEWROUTE)?
            .iter()
            .map(|b| parse_route(b))
            .collect()
    }

    /// Adds `r`, replacing a route to the same destination when `flags` has `NLM_F_REPLACE`.
    pub fn add_route(&mut self, r: &Route, flags: u16) -> io::Result<()> {
        self.change(RTM_NEWROUTE, r.body(), flags)
    }

    pub fn del_route(&mut self, r: &Route) -> io::Result<()> {
        self.change(RTM_DELROUTE, r.body(), 0)
    }
}

/// A socket subscribed to the kernel's link announcements (`RTMGRP_LINK`) in the namespace its
/// thread was in when it was opened. It only listens: it sends nothing and asks for nothing.
pub(super) struct LinkMonitor {
    socket: Socket,
}

impl LinkMonitor {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&SocketAddr::new(0, RTMGRP_LINK))?;
        Ok(Self { socket })
    }

    /// Blocks until the kernel announces something, then says how many links appeared or
    /// changed (`RTM_NEWLINK`; removals count 0). Announcements the kernel dropped because we
    /// were slow (`ENOBUFS`) count as one change: something happened that we did not see.
    pub fn wait(&mut self) -> io::Result<u64> {
        match self.socket.recv_from_full() {
            Ok((data, _)) => count_new_links(&data),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOBUFS.raw_os_error()) => Ok(1),
            Err(e) => Err(e),
        }
    }
}

/// The `RTM_NEWLINK` messages in one datagram of netlink messages.
fn count_new_links(mut data: &[u8]) -> io::Result<u64> {
    let mut n = 0;
    while !data.is_empty() {
        let len = u32_at(data, 0).ok_or_else(|| bad("link announcement"))? as usize;
        let kind = data
            .get(4..6)
            .map(|b| u16::from_ne_bytes([b[0], b[1]]))
            .ok_or_else(|| bad("link announcement"))?;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(bad("link announcement"));
        }
        if kind == RTM_NEWLINK {
            n += 1;
        }
        data = data.get(len.next_multiple_of(4)..).unwrap_or_default();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes_and_read_back() {
        let mut b = ifinfomsg(7, IFF_UP, IFF_UP);
        nla(&mut b, IFLA_IFNAME, &cstr("eth0"));
        nla(&mut b, IFLA_ADDRESS, &[0x0a, 0x58, 0x0a, 0, 1, 0x17]);
        let mut info = Vec::new();
        nla(&mut info, IFLA_INFO_KIND, &cstr("veth"));
        nla(&mut b, IFLA_LINKINFO, &info);
        nla(&mut b, IFLA_MASTER, &3u32.to_ne_bytes());
        assert_eq!(b.len() % 4, 0);
        let l = parse_link(&b).unwrap();
        assert_eq!(
            l,
            Link {
                index: 7,
                name: "eth0".into(),
                mac: Some([0x0a, 0x58, 0x0a, 0, 1, 0x17]),
                kind: Some("veth".into()),
                loopback: false,
                up: true,
                controller: Some(3),
                peer: None,
                alias: None,
            }
        );
    }

    #[test]
    fn routes_read_back_as_written_and_match_only_themselves() {
        let r = Route {
            dst: Ipv4Addr::new(169, 254, 170, 2),
            prefix: 32,
            gateway: Some(Ipv4Addr::new(169, 254, 172, 1)),
            oif: Some(7),
            kind: RTN_UNICAST,
        };
        let e = parse_route(&r.body()).unwrap();
        assert_eq!(e.dst, Some(r.dst));
        assert!(r.matches(&e));
        assert!(!Route { oif: Some(8), ..r }.matches(&e));
        let unreachable = Route {
            kind: RTN_UNREACHABLE,
            gateway: None,
            oif: None,
            ..r
        };
        assert!(!unreachable.matches(&e));
        assert!(unreachable.matches(&parse_route(&unreachable.body()).unwrap()));
        let default = Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix: 0,
            gateway: Some(Ipv4Addr::new(10, 0, 1, 1)),
            oif: None,
            kind: RTN_UNICAST,
        };
        assert!(default.matches(&parse_route(&default.body()).unwrap()));
        assert!(!default.matches(&e));
    }

    #[test]
    fn addresses_read_back_for_both_families_and_truncated_messages_are_errors() {
        let v4 = address_body(3, "10.0.1.23".parse().unwrap(), 24);
        assert_eq!(
            parse_address(&v4).unwrap(),
            Some((3, "10.0.1.23".parse().unwrap(), 24))
        );
        let v6 = address_body(4, "2001:db8::5".parse().unwrap(), 128);
        assert_eq!(
            parse_address(&v6).unwrap(),
            Some((4, "2001:db8::5".parse().unwrap(), 128))
        );
        assert!(parse_address(&[2]).is_err());
        assert!(parse_link(&[0; 8]).is_err());
        assert!(parse_route(&[0; 6]).is_err());
    }

    /// A netlink message header and `body`.
    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let mut m = ((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes().to_vec();
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(body);
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    #[test]
    fn only_new_link_announcements_are_counted_and_a_truncated_one_is_an_error() {
        let link = ifinfomsg(7, IFF_UP, 0);
        let mut data = message(RTM_NEWLINK, &link);
        data.extend(message(RTM_DELLINK, &link));
        data.extend(message(RTM_NEWLINK, &[1, 2, 3]));
        data.extend(message(RTM_NEWADDR, &link));
        assert_eq!(count_new_links(&data).unwrap(), 2);
        assert_eq!(count_new_links(&[]).unwrap(), 0);
        assert!(count_new_links(&data[..data.len() - 4]).is_err());
        assert!(count_new_links(&[0; 3]).is_err());
        let mut short = message(RTM_NEWLINK, &link);
        short[..4].copy_from_slice(&4u32.to_ne_bytes());
        assert!(
            count_new_links(&short).is_err(),
            "a length below the header"
        );
    }
}
