//! A stand-in for an ENI and the VPC behind it, for awsvpc tests (issue 22), built from network
//! namespaces and veth pairs.
//!
//! Owns: [`Netns`], a network namespace held by a sleeping process (`unshare -n sleep`, so nothing
//! is written to the shared `/run/netns`, unlike `ip netns add`), with the processes a test runs
//! in it; and [`Vpc`], such a namespace holding a bridge with the subnet's gateway address, where
//! [`Vpc::plug_eni`] plugs one end of a veth pair whose other end, in the caller's namespace, has
//! the ENI's MAC and name and is down without an address, as an attached ENI looks. Several plugged
//! ENIs share the subnet: moved into task namespaces and given addresses, they reach each other
//! and the gateway, and traffic really flows.
//!
//! Never touches the namespace it is called from except to create the ENI ends (and remove them
//! again when plugging fails): call it from a test that runs in a private network namespace of
//! its own (`tests/common/netns.rs`). Needs root, iproute2 and util-linux (`unshare`, `nsenter`).
//! Dropping a [`Netns`] or [`Vpc`] kills its processes, and the kernel then removes the namespace
//! with its links (a veth pair goes with either end).

use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The bridge in the VPC namespace that holds the gateway address.
pub const BRIDGE: &str = "br0";
/// Longest Linux interface name (IFNAMSIZ - 1).
const MAX_IFNAME: usize = 15;

/// A network namespace of its own, held by a sleeping process.
pub struct Netns {
    holder: Child,
    spawned: Vec<Child>,
}

impl Netns {
    /// A new, empty network namespace (loopback up), held until drop.
    pub fn new() -> Netns {
        let holder = Command::new("unshare")
            .args(["--net", "--", "sleep", "infinity"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare (util-linux) must be installed; the suite runs as root");
        let ns = Netns {
            holder,
            spawned: Vec::new(),
        };
        ns.wait_until_unshared();
        ns.exec("ip link set lo up");
        ns
    }

    /// `unshare` execs `sleep` in the same process once the namespace exists; until then the
    /// holder still shares the caller's namespace.
    fn wait_until_unshared(&self) {
        let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let theirs = std::fs::read_link(self.path());
            if matches!(&theirs, Ok(link) if *link != ours) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the namespace holder {} did not unshare its network namespace ({theirs:?})",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The holder's pid: `ip link set <link> netns <pid>` moves a link in here.
    pub fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// `/proc/<pid>/ns/net`, for `nsenter --net=` or `setns`.
    pub fn path(&self) -> String {
        format!("/proc/{}/ns/net", self.pid())
    }

    /// Runs `cmd` with `sh -c` in this namespace and waits for it (whatever it exits with).
    pub fn output(&self, cmd: &str) -> Output {
        Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(["--", "sh", "-c", cmd])
            .output()
            .expect("nsenter (util-linux) must be installed")
    }

    /// Runs `cmd` with `sh -c` in this namespace; its stdout. Panics, with its stderr, if it fails.
    pub fn exec(&self, cmd: &str) -> String {
        let out = self.output(cmd);
        assert!(
            out.status.success(),
            "in netns {}: `{cmd}` failed ({}): {}",
            self.pid(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `cmd` with `sh -c` in this namespace in the background (e.g. a listener); it is
    /// killed on drop. Returns its pid.
    pub fn spawn(&mut self, cmd: &str) -> u32 {
        let child = Command::new("nsenter")
            .arg(format!("--net={}", self.path()))
            .args(["--", "sh", "-c", &format!("exec {cmd}")])
            .stdin(Stdio::null())
            .spawn()
            .expect("nsenter (util-linux) must be installed");
        let pid = child.id();
        self.spawned.push(child);
        pid
    }
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in self
            .spawned
            .iter_mut()
            .chain(std::iter::once(&mut self.holder))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A "VPC" subnet: a namespace with a bridge holding the gateway address, and the ENIs plugged
/// into it.
pub struct Vpc {
    ns: Netns,
    gateway: Ipv4Addr,
    prefix_len: u8,
    /// Bridge ports made so far (their names in the VPC namespace are `p0`, `p1`, ...).
    ports: usize,
}

impl Vpc {
    /// Starts the VPC namespace with the gateway `gateway_cidr` (`10.0.1.1/24`, what ec2sim
    /// sends as `subnetGatewayIpv4Address`) on its bridge. Panics on a malformed CIDR.
    pub fn start(gateway_cidr: &str) -> Vpc {
        let (gateway, prefix_len) =
            parse_gateway_cidr(gateway_cidr).unwrap_or_else(|e| panic!("{e}"));
        let ns = Netns::new();
        ns.exec(&format!(
            "ip link add {BRIDGE} type bridge && ip addr add {gateway}/{prefix_len} dev {BRIDGE} \
             && ip link set {BRIDGE} up"
        ));
        Vpc {
            ns,
            gateway,
            prefix_len,
            ports: 0,
        }
    }

    /// The gateway address (on the bridge).
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// The subnet's prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// The pid holding the VPC namespace.
    pub fn pid(&self) -> u32 {
        self.ns.pid()
    }

    /// The VPC namespace itself (to run or spawn more in it).
    pub fn netns(&mut self) -> &mut Netns {
        &mut self.ns
    }

    /// Runs `cmd` in the VPC namespace and waits; its stdout (panics if it fails).
    pub fn exec(&self, cmd: &str) -> String {
        self.ns.exec(cmd)
    }

    /// Starts `cmd` in the VPC namespace in the background (e.g. a listener on the gateway
    /// address); killed on drop. Returns its pid.
    pub fn spawn(&mut self, cmd: &str) -> u32 {
        self.ns.spawn(cmd)
    }

    /// Plugs a stand-in ENI: a veth pair whose end `host_ifname` with address `mac` stays in the
    /// caller's namespace (down, no address) and whose other end is a port of the VPC's bridge.
    /// Panics with the reason if that cannot be done (see [`Vpc::try_plug_eni`]).
    pub fn plug_eni(&mut self, mac: &str, host_ifname: &str) {
        self.try_plug_eni(mac, host_ifname)
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// [`Vpc::plug_eni`], or why not: a malformed or multicast MAC, a bad interface name, or what
    /// `ip` said (e.g. the name is taken). A failure leaves no link behind on either side.
    pub fn try_plug_eni(&mut self, mac: &str, host_ifname: &str) -> Result<(), String> {
        let mac = parse_unicast_mac(mac)?;
        check_ifname(host_ifname)?;
        let port = format!("p{}", self.ports);
        let out = Command::new("ip")
            .args(["link", "add", host_ifname, "address", &mac, "type", "veth"])
            .args(["peer", "name", &port, "netns", &self.pid().to_string()])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot create ENI {host_ifname} ({mac}): ip: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        self.ports += 1;
        let out = self
            .ns
            .output(&format!("ip link set {port} master {BRIDGE} up"));
        if !out.status.success() {
            let _ = Command::new("ip")
                .args(["link", "del", host_ifname])
                .status();
            return Err(format!(
                "cannot bridge ENI {host_ifname} ({mac}) into the VPC: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }
}

/// `10.0.1.1/24` → (10.0.1.1, 24): a host address of the subnet (neither its network nor its
/// broadcast address) and a prefix length 1..=30.
pub fn parse_gateway_cidr(cidr: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = |why: &str| {
        format!(
            "gateway {cidr:?} is not an IPv4 host address with a prefix length like 10.0.1.1/24: {why}"
        )
    };
    let (addr, prefix) = cidr.split_once('/').ok_or_else(|| bad("no /prefix"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("bad address"))?;
    let prefix: u8 = prefix.parse().map_err(|_| bad("bad prefix length"))?;
    if !(1..=30).contains(&prefix) {
        return Err(bad("prefix length must be 1..=30"));
    }
    let mask = u32::MAX << (32 - prefix);
    let host = u32::from(addr) & !mask;
    if host == 0 || host == !mask {
        return Err(bad("that is the subnet's network or broadcast address"));
    }
    Ok((addr, prefix))
}

/// A MAC as `ip` wants it (lower case): six hex octets, unicast (the I/G bit of the first octet
/// clear), like an ENI's.
pub fn parse_unicast_mac(mac: &str) -> Result<String, String> {
    let octets: Vec<&str> = mac.split(':').collect();
    let well_formed = octets.len() == 6
        && octets
            .iter()
            .all(|o| o.len() == 2 && o.chars().all(|c| c.is_ascii_hexdigit()));
    if !well_formed {
        return Err(format!(
            "MAC {mac:?} is not six hex octets like 0a:1b:2c:3d:4e:5f"
        ));
    }
    if u8::from_str_radix(octets[0], 16).unwrap() & 1 == 1 {
        return Err(format!(
            "MAC {mac:?} is a multicast address; an ENI's is unicast"
        ));
    }
    Ok(mac.to_ascii_lowercase())
}

fn check_ifname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_IFNAME
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "interface name {name:?} must be 1..={MAX_IFNAME} printable characters without '/' or ':'"
        ))
    }
}
