//! The awsvpc kernel side (`engine::net::awsvpc::netlink`, issue 22) on a real kernel, inside a
//! private network namespace: every test re-runs itself under `unshare --net` and never touches
//! the shared host's links or routes.
//!
//! Inside, the test's namespace is the "instance". A "VPC" namespace (held by a sleeping
//! process, never `ip netns add`) holds the subnet's gateway 10.0.1.1/24 on a bridge; each
//! "ENI" is a veth whose far end is in the VPC and whose near end, in the instance, carries the
//! MAC ACS would send. A "pause container" is another sleeping process in a namespace of its own.
//! What `provision` and `release` did is read back with `ip -j` through `nsenter`, and proved by
//! traffic: ping of the gateway, a TCP connection to a listener on the bridge, `ip route get`
//! and a connect to IMDS.

#[path = "common/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ecs_hostd::engine::net::awsvpc::netlink::{NetlinkTaskNetwork, host_veth_name};
use ecs_hostd::engine::net::awsvpc::{
    BRIDGE_GATEWAY, Eni, Ipv4Cidr, NetError, Provisioned, TaskNetConfig, TaskNetwork,
};
use netns::sh;
use serde_json::Value;

const MAC1: &str = "0a:58:0a:00:01:17";
const MAC2: &str = "0a:58:0a:00:01:18";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);

/// Runs `body` in a fresh network namespace (the re-run of test `name`).
fn in_own_netns<F: std::future::Future<Output = ()>>(name: &str, body: impl FnOnce() -> F) {
    if netns::inside() {
        sh("ip link set lo up");
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(body());
    }
    netns::rerun_in_own_netns(name);
}

/// A process holding a network namespace of its own; killed on drop.
struct Holder(Child);

impl Holder {
    fn start() -> Self {
        let child = Command::new("unshare")
            .args(["--net", "sleep", "3600"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare (util-linux)");
        let h = Holder(child);
        // `unshare` enters its namespace and then execs sleep: wait until it has.
        let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_link(format!("/proc/{}/ns/net", h.pid())).ok() == Some(mine.clone()) {
            assert!(
                Instant::now() < deadline,
                "unshare never left our namespace"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        h
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// `sh -c cmd` inside this namespace; fails the test if it fails.
    fn sh(&self, cmd: &str) -> String {
        sh(&format!("nsenter -t {} --net sh -c '{cmd}'", self.pid()))
    }

    /// `cmd` inside this namespace: (success, stdout + stderr).
    fn try_sh(&self, cmd: &str) -> (bool, String) {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid().to_string(), "--net", "sh", "-c", cmd])
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn json(&self, cmd: &str) -> Value {
        serde_json::from_str(&self.sh(cmd)).unwrap_or_else(|e| panic!("{cmd}: {e}"))
    }

    fn kill(mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The subnet: a namespace with the gateway 10.0.1.1/24 on a bridge the "ENIs" plug into.
struct Vpc(Holder);

impl Vpc {
    fn start() -> Self {
        let h = Holder::start();
        h.sh("ip link set lo up && ip link add vpcbr type bridge && \
             ip addr add 10.0.1.1/24 dev vpcbr && ip link set vpcbr up");
        Vpc(h)
    }

    /// An "ENI" in the instance namespace: `name` with `mac` and `mtu`, its far end on the VPC
    /// bridge.
    fn eni(&self, name: &str, mac: &str, mtu: u32) {
        let far = format!("gw-{name}");
        sh(&format!(
            "ip link add {name} address {mac} mtu {mtu} type veth peer name {far} netns /proc/{}/ns/net",
            self.0.pid()
        ));
        self.0.sh(&format!(
            "ip link set {far} mtu {mtu} && ip link set {far} master vpcbr && ip link set {far} up"
        ));
    }
}

fn eni(mac: &str, addr: Ipv4Addr) -> Eni {
    Eni {
        attachment_arn: "arn:aws:ecs:us-west-2:123456789012:attachment/a1".into(),
        ec2_id: "eni-0123456789abcdef0".into(),
        mac: mac.into(),
        ipv4: vec![Ipv4Cidr { addr, prefix: 24 }],
        ipv6: vec![],
        gateway_ipv4: Some(GATEWAY),
        dns_servers: vec![],
        dns_search: vec![],
        private_dns_name: None,
    }
}

fn config(task_id: &str, eni: Eni, pause: &Holder, bridge: Ipv4Addr, block: bool) -> TaskNetConfig {
    TaskNetConfig {
        task_id: task_id.into(),
        eni,
        netns_pid: pause.pid(),
        bridge_ipv4: bridge,
        block_imds: block,
    }
}

/// `ip -j` in this (the instance's) namespace.
fn host_json(cmd: &str) -> Value {
    serde_json::from_str(&sh(cmd)).unwrap_or_else(|e| panic!("{cmd}: {e}"))
}

/// The IPv4 addresses `ip -j addr` shows for the only link it lists, as `a.b.c.d/len`.
fn ipv4_of(addr: &Value) -> Vec<String> {
    addr[0]["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["family"] == "inet")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
        .collect()
}

/// What the kernel says the task namespace and the instance look like after `provision`.
fn assert_provisioned(
    pause: &Holder,
    mac: &str,
    addr: &str,
    mtu: u64,
    bridge: Ipv4Addr,
    made: &Provisioned,
    block: bool,
) {
    // (a) the ENI, as eth0, with its MAC, MTU, address, up, and the default route.
    let eth0 = pause.json("ip -j addr show dev eth0");
    assert_eq!(eth0[0]["address"], mac, "{eth0}");
    assert_eq!(eth0[0]["mtu"], mtu, "{eth0}");
    assert!(
        eth0[0]["flags"].as_array().unwrap().contains(&"UP".into()),
        "{eth0}"
    );
    assert_eq!(ipv4_of(&eth0), vec![addr.to_string()]);
    let default = pause.json("ip -j route show default");
    assert_eq!(default.as_array().unwrap().len(), 1, "{default}");
    assert_eq!(default[0]["gateway"], GATEWAY.to_string(), "{default}");
    assert_eq!(default[0]["dev"], "eth0", "{default}");
    let ping = pause.try_sh("/bin/busybox ping -c 1 -W 3 10.0.1.1");
    assert!(ping.0, "ping of the gateway from the task: {}", ping.1);

    // (b) ecs-eth0 with the task's bridge address and the task endpoint's route.
    let inner = pause.json("ip -j addr show dev ecs-eth0");
    assert_eq!(ipv4_of(&inner), vec![format!("{bridge}/22")]);
    assert!(
        inner[0]["flags"].as_array().unwrap().contains(&"UP".into()),
        "{inner}"
    );
    let ep = pause.json("ip -j route show 169.254.170.2/32");
    assert_eq!(ep.as_array().unwrap().len(), 1, "{ep}");
    assert_eq!(ep[0]["gateway"], BRIDGE_GATEWAY.to_string(), "{ep}");
    assert_eq!(ep[0]["dev"], "ecs-eth0", "{ep}");
    // The bridge and the host end of the veth, in the instance.
    let br = host_json("ip -j -d addr show dev ecs-bridge");
    assert_eq!(br[0]["linkinfo"]["info_kind"], "bridge", "{br}");
    assert_eq!(ipv4_of(&br), vec!["169.254.172.1/22".to_string()]);
    assert!(
        br[0]["flags"].as_array().unwrap().contains(&"UP".into()),
        "{br}"
    );
    let veth = host_json(&format!("ip -j -d link show dev {}", made.host_veth));
    assert_eq!(veth[0]["linkinfo"]["info_kind"], "veth", "{veth}");
    assert_eq!(veth[0]["master"], "ecs-bridge", "{veth}");
    assert!(
        veth[0]["flags"].as_array().unwrap().contains(&"UP".into()),
        "{veth}"
    );

    // (c) loopback.
    let lo = pause.json("ip -j link show dev lo");
    assert!(
        lo[0]["flags"].as_array().unwrap().contains(&"UP".into()),
        "{lo}"
    );

    // (d) IMDS: unreachable with the block, routed through the ENI without.
    let (routed, how) = pause.try_sh("ip route get 169.254.169.254");
    let connect = pause.try_sh(
        "python3 -c \"import socket; socket.create_connection((\\\"169.254.169.254\\\", 80), 2)\"",
    );
    if block {
        assert!(!routed, "IMDS routed despite the block: {how}");
        assert!(!connect.0, "connect to IMDS succeeded: {}", connect.1);
        assert!(
            connect.1.contains("No route to host") || connect.1.contains("unreachable"),
            "{}",
            connect.1
        );
    } else {
        assert!(routed, "{how}");
        assert!(how.contains("via 10.0.1.1 dev eth0"), "{how}");
    }
}

/// A listener on the bridge's gateway in the instance answers a connection from the task
/// namespace, which arrives from the task's bridge address.
fn assert_bridge_reachable(pause: &Holder, bridge: Ipv4Addr) {
    let l = TcpListener::bind((BRIDGE_GATEWAY, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut s, peer) = l.accept().unwrap();
        s.write_all(b"bridged").unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        peer.ip()
    });
    let out = pause.sh(&format!(
        "python3 -c \"import socket; s = socket.create_connection((\\\"169.254.172.1\\\", {port}), 3); print(s.recv(16).decode())\""
    ));
    assert_eq!(out.trim(), "bridged");
    assert_eq!(server.join().unwrap(), bridge);
}

/// IPv4 addresses and routes of a namespace (IPv6 link-local ones come and go on their own).
fn snapshot(pause: &Holder) -> (String, String, String) {
    (
        pause.sh("ip -4 addr show"),
        pause.sh("ip -4 route show table all"),
        sh("ip -4 addr show; ip -4 route show table all; ip -o link show master ecs-bridge"),
    )
}

#[test]
fn provision_moves_the_eni_in_and_wires_the_bridge_and_release_undoes_it() {
    in_own_netns(
        "provision_moves_the_eni_in_and_wires_the_bridge_and_release_undoes_it",
        || async {
            let vpc = Vpc::start();
            vpc.eni("eni0", MAC1, 9001);
            let pause = Holder::start();
            let net = NetlinkTaskNetwork::new(true);
            let bridge = Ipv4Addr::new(169, 254, 172, 2);
            let cfg = config(
                "task-one",
                eni(MAC1, Ipv4Addr::new(10, 0, 1, 23)),
                &pause,
                bridge,
                true,
            );

            assert_eq!(net.find(MAC1).await.unwrap().as_deref(), Some("eni0"));
            let made = net.provision(&cfg).await.unwrap();
            assert_eq!(
                made,
                Provisioned {
                    host_ifname: "eni0".into(),
                    host_veth: host_veth_name("task-one"),
                }
            );
            // The ENI left the instance.
            assert!(
                Command::new("ip")
                    .args(["link", "show", "eni0"])
                    .output()
                    .unwrap()
                    .status
                    .code()
                    != Some(0)
            );
            assert_eq!(net.find(MAC1).await.unwrap(), None);
            assert_provisioned(&pause, MAC1, "10.0.1.23/24", 9001, bridge, &made, true);
            assert_bridge_reachable(&pause, bridge);

            // A second call changes nothing and reports the same.
            let before = snapshot(&pause);
            assert_eq!(net.provision(&cfg).await.unwrap(), made);
            assert_eq!(snapshot(&pause), before);

            net.release(&cfg.eni, Some(pause.pid()), &made)
                .await
                .unwrap();
            let back = host_json("ip -j addr show dev eni0");
            assert_eq!(back[0]["address"], MAC1, "{back}");
            assert_eq!(back[0]["mtu"], 9001, "{back}");
            assert!(back[0].get("ifalias").is_none(), "{back}");
            assert!(ipv4_of(&back).is_empty(), "{back}");
            let gone = Command::new("ip")
                .args(["link", "show", &made.host_veth])
                .output()
                .unwrap();
            assert!(!gone.status.success(), "the veth is still there");
            let (eth0, _) = pause.try_sh("ip link show eth0");
            let (inner, _) = pause.try_sh("ip link show ecs-eth0");
            assert!(
                !eth0 && !inner,
                "the task namespace still has eth0 or ecs-eth0"
            );
            assert_eq!(net.find(MAC1).await.unwrap().as_deref(), Some("eni0"));
            // Released twice: nothing left to do, still fine.
            net.release(&cfg.eni, Some(pause.pid()), &made)
                .await
                .unwrap();
            assert_eq!(net.find(MAC1).await.unwrap().as_deref(), Some("eni0"));
        },
    );
}

#[test]
fn imds_is_routed_without_the_block_and_the_block_follows_the_setting() {
    in_own_netns(
        "imds_is_routed_without_the_block_and_the_block_follows_the_setting",
        || async {
            let vpc = Vpc::start();
            vpc.eni("eni0", MAC1, 1500);
            let pause = Holder::start();
            let net = NetlinkTaskNetwork::new(true);
            let bridge = Ipv4Addr::new(169, 254, 172, 9);
            let mut cfg = config(
                "task-imds",
                eni(MAC1, Ipv4Addr::new(10, 0, 1, 23)),
                &pause,
                bridge,
                false,
            );
            let made = net.provision(&cfg).await.unwrap();
            assert_provisioned(&pause, MAC1, "10.0.1.23/24", 1500, bridge, &made, false);
            cfg.block_imds = true;
            net.provision(&cfg).await.unwrap();
            assert_provisioned(&pause, MAC1, "10.0.1.23/24", 1500, bridge, &made, true);
            cfg.block_imds = false;
            net.provision(&cfg).await.unwrap();
            assert_provisioned(&pause, MAC1, "10.0.1.23/24", 1500, bridge, &made, false);
        },
    );
}

#[test]
fn two_tasks_at_once_get_their_own_namespaces_and_addresses() {
    in_own_netns(
        "two_tasks_at_once_get_their_own_namespaces_and_addresses",
        || async {
            let vpc = Vpc::start();
            vpc.eni("eni0", MAC1, 1500);
            vpc.eni("eni1", MAC2, 1500);
            let (p1, p2) = (Holder::start(), Holder::start());
            let net = NetlinkTaskNetwork::new(true);
            let (b1, b2) = (
                Ipv4Addr::new(169, 254, 172, 2),
                Ipv4Addr::new(169, 254, 172, 3),
            );
            let c1 = config(
                "task-a",
                eni(MAC1, Ipv4Addr::new(10, 0, 1, 23)),
                &p1,
                b1,
                true,
            );
            let c2 = config(
                "task-b",
                eni(MAC2, Ipv4Addr::new(10, 0, 1, 24)),
                &p2,
                b2,
                true,
            );
            // Both at once: they race to create the bridge and its address.
            let (m1, m2) = tokio::join!(net.provision(&c1), net.provision(&c2));
            let (m1, m2) = (m1.unwrap(), m2.unwrap());
            assert_ne!(m1.host_veth, m2.host_veth);
            assert_eq!(
                (m1.host_ifname.as_str(), m2.host_ifname.as_str()),
                ("eni0", "eni1")
            );
            assert_ne!(
                std::fs::read_link(format!("/proc/{}/ns/net", p1.pid())).unwrap(),
                std::fs::read_link(format!("/proc/{}/ns/net", p2.pid())).unwrap()
            );
            assert_provisioned(&p1, MAC1, "10.0.1.23/24", 1500, b1, &m1, true);
            assert_provisioned(&p2, MAC2, "10.0.1.24/24", 1500, b2, &m2, true);
            assert_bridge_reachable(&p1, b1);
            assert_bridge_reachable(&p2, b2);
            // Each task reaches the other through the VPC (its ENI), as tasks in one subnet do.
            let (ok, out) = p1.try_sh("/bin/busybox ping -c 1 -W 3 10.0.1.24");
            assert!(ok, "{out}");
            let ports = sh("ip -o link show master ecs-bridge");
            assert!(
                ports.contains(&m1.host_veth) && ports.contains(&m2.host_veth),
                "{ports}"
            );

            net.release(&c1.eni, Some(p1.pid()), &m1).await.unwrap();
            // The other task is untouched.
            assert_provisioned(&p2, MAC2, "10.0.1.24/24", 1500, b2, &m2, true);
            net.release(&c2.eni, Some(p2.pid()), &m2).await.unwrap();
            sh("ip link show eni0 && ip link show eni1");
        },
    );
}

#[test]
fn a_provision_interrupted_half_way_is_finished_by_the_next_call() {
    in_own_netns(
        "a_provision_interrupted_half_way_is_finished_by_the_next_call",
        || async {
            let vpc = Vpc::start();
            vpc.eni("eni0", MAC1, 1500);
            let pause = Holder::start();
            let net = NetlinkTaskNetwork::new(true);
            let bridge = Ipv4Addr::new(169, 254, 172, 2);
            let cfg = config(
                "task-crash",
                eni(MAC1, Ipv4Addr::new(10, 0, 1, 23)),
                &pause,
                bridge,
                true,
            );
            // Crashed right after the move: the ENI is eth0 in the task namespace, down, bare,
            // with its host name in its alias, and nothing else exists.
            sh(&format!(
                "ip link set eni0 alias eni0 && ip link set eni0 netns /proc/{}/ns/net name eth0",
                pause.pid()
            ));
            let made = net.provision(&cfg).await.unwrap();
            assert_eq!(made.host_ifname, "eni0");
            assert_provisioned(&pause, MAC1, "10.0.1.23/24", 1500, bridge, &made, true);

            // Crashed later, with parts undone: the veth gone, the ENI down and routes missing.
            sh(&format!("ip link del {}", made.host_veth));
            pause
                .sh("ip link set eth0 down && ip route del unreachable 169.254.169.254/32 || true");
            pause.sh("ip link set lo down");
            assert_eq!(net.provision(&cfg).await.unwrap(), made);
            assert_provisioned(&pause, MAC1, "10.0.1.23/24", 1500, bridge, &made, true);
            assert_bridge_reachable(&pause, bridge);

            // The bridge without its address and down (another host tool, a crash while making it).
            sh("ip addr flush dev ecs-bridge && ip link set ecs-bridge down");
            assert_eq!(net.provision(&cfg).await.unwrap(), made);
            assert_provisioned(&pause, MAC1, "10.0.1.23/24", 1500, bridge, &made, true);
            net.release(&cfg.eni, Some(pause.pid()), &made)
                .await
                .unwrap();
            let back = host_json("ip -j link show dev eni0");
            assert_eq!(back[0]["address"], MAC1);
        },
    );
}

#[test]
fn release_after_the_pause_process_died_is_ok() {
    in_own_netns("release_after_the_pause_process_died_is_ok", || async {
        let vpc = Vpc::start();
        vpc.eni("eni0", MAC1, 1500);
        let pause = Holder::start();
        let pid = pause.pid();
        let net = NetlinkTaskNetwork::new(true);
        let cfg = config(
            "task-dead",
            eni(MAC1, Ipv4Addr::new(10, 0, 1, 23)),
            &pause,
            Ipv4Addr::new(169, 254, 172, 2),
            true,
        );
        let made = net.provision(&cfg).await.unwrap();
        pause.kill();
        net.release(&cfg.eni, Some(pid), &made).await.unwrap();
        // The veth went with the namespace or with the release; either way it is not here.
        let deadline = Instant::now() + Duration::from_secs(5);
        while Command::new("ip")
            .args(["link", "show", &made.host_veth])
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "the host veth outlived the namespace"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // A virtual "ENI" dies with its namespace (a physical one would come back by itself).
        net.release(&cfg.eni, None, &made).await.unwrap();
        net.release(&cfg.eni, Some(pid), &made).await.unwrap();
    });
}

#[test]
fn find_takes_virtual_links_only_when_told_and_never_loopback() {
    in_own_netns(
        "find_takes_virtual_links_only_when_told_and_never_loopback",
        || async {
            // A bridge stands in for any other virtual kind (the dummy module is absent here).
            sh("ip link add br9 address 0a:58:0a:00:01:30 type bridge");
            sh("ip link add eni0 address 0a:58:0a:00:01:31 type veth peer name eni0p");
            let strict = NetlinkTaskNetwork::new(false);
            let lax = NetlinkTaskNetwork::new(true);
            for mac in ["0a:58:0a:00:01:30", "0a:58:0a:00:01:31"] {
                assert_eq!(strict.find(mac).await.unwrap(), None, "{mac}");
            }
            assert_eq!(
                lax.find("0a:58:0a:00:01:30").await.unwrap().as_deref(),
                Some("br9")
            );
            assert_eq!(
                lax.find("0A:58:0A:00:01:31").await.unwrap().as_deref(),
                Some("eni0")
            );
            assert_eq!(lax.find("0a:58:0a:00:01:99").await.unwrap(), None);
            // lo's MAC is all zeros: never an ENI, whatever the setting.
            assert_eq!(lax.find("00:00:00:00:00:00").await.unwrap(), None);
            assert_eq!(strict.find("00:00:00:00:00:00").await.unwrap(), None);
            let e = lax.find("0a:58:0a:00:01").await.unwrap_err().to_string();
            assert!(e.contains("\"0a:58:0a:00:01\""), "{e}");
        },
    );
}

#[test]
fn bad_input_and_missing_things_are_refused_before_anything_changes() {
    in_own_netns(
        "bad_input_and_missing_things_are_refused_before_anything_changes",
        || async {
            let vpc = Vpc::start();
            vpc.eni("eni0", MAC1, 1500);
            let pause = Holder::start();
            let strict = NetlinkTaskNetwork::new(false);
            let net = NetlinkTaskNetwork::new(true);
            let good = config(
                "task-bad",
                eni(MAC1, Ipv4Addr::new(10, 0, 1, 23)),
                &pause,
                Ipv4Addr::new(169, 254, 172, 2),
                true,
            );
            let before = (
                sh("ip -o link show"),
                pause.sh("ip -o link show; ip -4 route show table all"),
            );

            let mut bad_mac = good.clone();
            bad_mac.eni.mac = "0a:58:0a:00:01:1g".into();
            let e = net.provision(&bad_mac).await.unwrap_err().to_string();
            assert!(e.contains("\"0a:58:0a:00:01:1g\""), "{e}");

            let mut bad_prefix = good.clone();
            bad_prefix.eni.ipv4[0].prefix = 33;
            let e = net.provision(&bad_prefix).await.unwrap_err().to_string();
            assert!(e.contains("10.0.1.23/33"), "{e}");

            let mut bad_bridge = good.clone();
            bad_bridge.bridge_ipv4 = BRIDGE_GATEWAY;
            let e = net.provision(&bad_bridge).await.unwrap_err().to_string();
            assert!(e.contains("169.254.172.1"), "{e}");

            let mut bad_v6 = good.clone();
            bad_v6.eni.ipv6 = vec!["2001:db8::zz".into()];
            let e = net.provision(&bad_v6).await.unwrap_err().to_string();
            assert!(e.contains("2001:db8::zz"), "{e}");

            let mut unknown = good.clone();
            unknown.eni.mac = "0a:58:0a:00:01:99".into();
            let e = net.provision(&unknown).await.unwrap_err();
            assert!(
                matches!(e, NetError::EniNotFound(ref m) if m == "0a:58:0a:00:01:99"),
                "{e}"
            );

            // On EC2 settings a veth is no ENI.
            let e = strict.provision(&good).await.unwrap_err();
            assert!(matches!(e, NetError::EniNotFound(_)), "{e}");

            let dead = Holder::start();
            let dead_pid = dead.pid();
            dead.kill();
            let mut gone = good.clone();
            gone.netns_pid = dead_pid;
            let e = net.provision(&gone).await.unwrap_err();
            assert!(
                matches!(e, NetError::NamespaceGone(p) if p == dead_pid),
                "{e}"
            );

            let e = net
                .release(
                    &good.eni,
                    Some(pause.pid()),
                    &Provisioned {
                        host_ifname: "a-name-far-too-long".into(),
                        host_veth: "vethx".into(),
                    },
                )
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("a-name-far-too-long"), "{e}");

            assert_eq!(
                (
                    sh("ip -o link show"),
                    pause.sh("ip -o link show; ip -4 route show table all")
                ),
                before,
                "a refused call changed something"
            );
            // And the good config still works after all that.
            let made = net.provision(&good).await.unwrap();
            assert_provisioned(
                &pause,
                MAC1,
                "10.0.1.23/24",
                1500,
                good.bridge_ipv4,
                &made,
                true,
            );
        },
    );
}

/// The thread ids of this process named `name`, with their voluntary context switches.
fn threads_named(name: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = t.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .map(|v| v.trim().parse().unwrap())
            .unwrap();
        out.push((
            dir.file_name().unwrap().to_string_lossy().into_owned(),
            switches,
        ));
    }
    out
}

#[test]
fn link_events_move_when_a_link_appears_here_and_only_here() {
    in_own_netns(
        "link_events_move_when_a_link_appears_here_and_only_here",
        || async {
            let net = NetlinkTaskNetwork::new(true);
            let mut rx = net.link_events().expect("link events are offered");
            let start = *rx.borrow_and_update();

            // One thread, shared by every subscriber (and clones), asleep in recv: while nothing
            // happens it is not woken at all.
            let mut again = net.clone().link_events().expect("a second subscriber");
            // Let the new thread reach its first `recv` (that first sleep is a switch too).
            tokio::time::sleep(Duration::from_millis(300)).await;
            let threads = threads_named("awsvpc-links");
            assert_eq!(threads.len(), 1, "{threads:?}");
            tokio::time::sleep(Duration::from_millis(1500)).await;
            assert_eq!(
                threads_named("awsvpc-links"),
                threads,
                "the idle thread woke up"
            );
            assert!(!rx.has_changed().unwrap(), "the counter moved by itself");

            // A link in another namespace (a task's) is not the host's business.
            let other = Holder::start();
            other.sh("ip link add ev0 address 0a:58:0a:00:01:40 type veth peer name ev0p");
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert!(
                !rx.has_changed().unwrap(),
                "an event from another namespace"
            );

            // A link with a MAC appears here: the counter moves within 1 s, the link is found.
            let before = Instant::now();
            sh("ip link add eni5 address 0a:58:0a:00:01:41 type veth peer name eni5p");
            tokio::time::timeout(Duration::from_secs(1), rx.changed())
                .await
                .expect("the counter moved within 1 s")
                .expect("the events still run");
            let took = before.elapsed();
            println!(
                "link event seen {} ms after `ip link add` began",
                took.as_millis()
            );
            assert!(*rx.borrow_and_update() > start);
            tokio::time::timeout(Duration::from_secs(1), again.changed())
                .await
                .expect("every subscriber sees it")
                .unwrap();
            assert_eq!(
                net.find("0a:58:0a:00:01:41").await.unwrap().as_deref(),
                Some("eni5")
            );
            // A change of an existing link (up) is announced too; a removal is not counted.
            let seen = *rx.borrow_and_update();
            sh("ip link set eni5 up");
            tokio::time::timeout(Duration::from_secs(1), rx.changed())
                .await
                .expect("link up announced")
                .unwrap();
            assert!(*rx.borrow_and_update() > seen);
            assert_eq!(threads_named("awsvpc-links").len(), 1);
        },
    );
}
