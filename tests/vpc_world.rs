//! The awsvpc test world's stand-in for ENIs and their VPC (`tests/common/vpc.rs`, issue 22) on
//! a real kernel: the test re-runs itself under `unshare --net` and never touches the shared
//! host's links.
//!
//! Inside: a VPC with gateway 10.0.1.1/24 and two plugged ENIs. Each is checked as the kernel
//! shows it (MAC, down, no address), moved by hand into a "task" namespace of its own with an
//! address and a default route, and then must reach the gateway (an HTTP listener on it, in the
//! VPC namespace) and the other task, with ARP resolving the other ENI's MAC across the bridge.
//! Bad input is refused with a reason and leaves nothing behind, and dropping the VPC removes
//! its namespace and with it the ENIs.

mod common;
#[path = "common/netns.rs"]
mod netns;

use std::time::{Duration, Instant};

use common::vpc::{BRIDGE, Netns, Vpc, parse_gateway_cidr, parse_unicast_mac};
use netns::sh;
use serde_json::Value;

const TEST: &str = "two_plugged_enis_reach_the_gateway_and_each_other";
const MAC_A: &str = "0a:11:22:33:44:01";
const MAC_B: &str = "0A:11:22:33:44:02";

#[test]
fn two_plugged_enis_reach_the_gateway_and_each_other() {
    if netns::inside() {
        return inside();
    }
    netns::rerun_in_own_netns(TEST);
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("ip -j said {text:?}: {e}"))
}

/// The names of the links of the caller's namespace, as the kernel lists them.
fn links_here() -> Vec<String> {
    json(&sh("ip -j link show"))
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_owned())
        .collect()
}

/// The ports of the VPC's bridge.
fn bridge_ports(vpc: &Vpc) -> usize {
    json(&vpc.exec(&format!("ip -j link show master {BRIDGE}")))
        .as_array()
        .unwrap()
        .len()
}

/// Fetches `url` with busybox wget from namespace `ns`, retrying briefly while a listener starts.
fn fetch(ns: &Netns, url: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.output(&format!("timeout 3 busybox wget -q -O - {url}"));
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "{url} from netns {}: {}",
            ns.pid(),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A directory with `index.html` holding `token`, for busybox httpd.
fn site(token: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), token).unwrap();
    dir
}

/// Moves the ENI `ifname` into `task` and configures it as the agent would: address, up,
/// default route via the gateway.
fn take_eni(task: &Netns, ifname: &str, cidr: &str) {
    sh(&format!("ip link set {ifname} netns {}", task.pid()));
    task.exec(&format!(
        "ip addr add {cidr} dev {ifname} && ip link set {ifname} up \
         && ip route add default via 10.0.1.1"
    ));
}

fn inside() {
    sh("ip link set lo up");
    let mut vpc = Vpc::start("10.0.1.1/24");
    assert_eq!(vpc.gateway().to_string(), "10.0.1.1");
    let bridge = json(&vpc.exec(&format!("ip -j addr show dev {BRIDGE}")));
    let gateway = &bridge[0]["addr_info"][0];
    assert_eq!(
        (gateway["local"].as_str(), gateway["prefixlen"].as_u64()),
        (Some("10.0.1.1"), Some(24))
    );

    vpc.plug_eni(MAC_A, "eni-a");
    vpc.plug_eni(MAC_B, "eni-b");
    assert_eq!(bridge_ports(&vpc), 2);
    // What the kernel shows of the ENI ends here: the MAC asked for, down, no address.
    for (name, mac) in [("eni-a", MAC_A), ("eni-b", MAC_B)] {
        let link = json(&sh(&format!("ip -j addr show dev {name}")))[0].clone();
        assert_eq!(link["address"].as_str(), Some(mac.to_lowercase().as_str()));
        assert_eq!(link["operstate"].as_str(), Some("DOWN"), "{link}");
        assert!(
            !link["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{link}"
        );
        assert_eq!(
            link["addr_info"].as_array().map(Vec::len),
            Some(0),
            "{link}"
        );
    }

    // Bad input: a reason, and nothing left behind on either side.
    sh("ip link add eni-c type veth peer name eni-c-peer");
    let before = (links_here(), bridge_ports(&vpc));
    let taken = vpc.try_plug_eni("0a:11:22:33:44:03", "eni-c").unwrap_err();
    assert!(
        taken.contains("eni-c") && taken.contains("exists"),
        "{taken}"
    );
    let multicast = vpc.try_plug_eni("0b:11:22:33:44:03", "eni-d").unwrap_err();
    assert!(multicast.contains("multicast"), "{multicast}");
    let long = vpc
        .try_plug_eni("0a:11:22:33:44:03", "eni-much-too-long")
        .unwrap_err();
    assert!(long.contains("eni-much-too-long"), "{long}");
    assert_eq!((links_here(), bridge_ports(&vpc)), before);
    sh("ip link del eni-c");

    // Two tasks, each with its ENI, as the agent will set them up.
    let mut task_a = Netns::new();
    let mut task_b = Netns::new();
    take_eni(&task_a, "eni-a", "10.0.1.10/24");
    take_eni(&task_b, "eni-b", "10.0.1.11/24");
    assert!(!links_here().iter().any(|l| l.starts_with("eni-")));

    // The gateway answers both (a listener in the VPC namespace, on the gateway address).
    let gateway_site = site("gateway-7f3a");
    vpc.spawn(&format!(
        "busybox httpd -f -p 10.0.1.1:8080 -h {}",
        gateway_site.path().display()
    ));
    assert_eq!(fetch(&task_a, "http://10.0.1.1:8080/"), "gateway-7f3a");
    assert_eq!(fetch(&task_b, "http://10.0.1.1:8080/"), "gateway-7f3a");

    // The tasks reach each other, in both directions, across the bridge.
    let b_site = site("task-b-91c2");
    task_b.spawn(&format!(
        "busybox httpd -f -p 10.0.1.11:8081 -h {}",
        b_site.path().display()
    ));
    let a_site = site("task-a-04d8");
    task_a.spawn(&format!(
        "busybox httpd -f -p 10.0.1.10:8081 -h {}",
        a_site.path().display()
    ));
    assert_eq!(fetch(&task_a, "http://10.0.1.11:8081/"), "task-b-91c2");
    assert_eq!(fetch(&task_b, "http://10.0.1.10:8081/"), "task-a-04d8");
    // ARP on each side resolved the other ENI's own MAC: they share one L2 subnet.
    let neighbour = |ns: &Netns, ip: &str| {
        json(&ns.exec(&format!("ip -j neigh show {ip}")))[0]["lladdr"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(
        neighbour(&task_a, "10.0.1.11").as_deref(),
        Some("0a:11:22:33:44:02")
    );
    assert_eq!(neighbour(&task_b, "10.0.1.10").as_deref(), Some(MAC_A));
    assert_eq!(neighbour(vpc.netns(), "10.0.1.10").as_deref(), Some(MAC_A));
    // An address outside the subnet goes to the gateway, which routes nowhere: no answer.
    let out = task_a.output("timeout 2 busybox wget -q -O - http://10.0.2.5:8080/");
    assert!(!out.status.success());

    // Dropping the VPC kills its holder and listener; the kernel then removes the namespace
    // and with it both veth pairs, so the tasks' ENIs vanish.
    let holder = vpc.pid();
    drop(vpc);
    assert!(!std::path::Path::new(&format!("/proc/{holder}")).exists());
    let deadline = Instant::now() + Duration::from_secs(10);
    while task_a.output("ip link show eni-a").status.success()
        || task_b.output("ip link show eni-b").status.success()
    {
        assert!(Instant::now() < deadline, "the ENIs outlived their VPC");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn gateway_cidrs_and_macs_are_checked() {
    assert_eq!(
        parse_gateway_cidr("10.0.1.1/24").unwrap(),
        ("10.0.1.1".parse().unwrap(), 24)
    );
    assert_eq!(parse_gateway_cidr("10.9.4.1/22").unwrap().1, 22);
    for (bad, why) in [
        ("10.0.1.1", "no /prefix"),
        ("10.0.1/24", "bad address"),
        ("10.0.1.1/33", "1..=30"),
        ("10.0.1.1/x", "bad prefix length"),
        ("10.0.1.0/24", "network or broadcast"),
        ("10.0.1.255/24", "network or broadcast"),
    ] {
        let err = parse_gateway_cidr(bad).unwrap_err();
        assert!(err.contains(bad) && err.contains(why), "{bad}: {err}");
    }
    assert_eq!(
        parse_unicast_mac("0A:1b:2C:3d:4E:5f").unwrap(),
        "0a:1b:2c:3d:4e:5f"
    );
    for bad in [
        "0a:1b:2c:3d:4e",
        "0a:1b:2c:3d:4e:5g",
        "0a-1b-2c-3d-4e-5f",
        "0a:1b:2c:3d:4e:5f0",
    ] {
        assert!(
            parse_unicast_mac(bad)
                .unwrap_err()
                .contains("six hex octets"),
            "{bad}"
        );
    }
    assert!(
        parse_unicast_mac("01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast")
    );
}
