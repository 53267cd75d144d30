//! The host NAT of task-credentials.md §6 on a real kernel with the real `iptables` (whichever
//! back-end this host's `iptables` is), inside a private network namespace: the test re-runs
//! itself under `unshare --net` and never touches the shared host's tables or sysctls.
//!
//! Inside: a stand-in for the task endpoint on 127.0.0.1:51679, a stand-in for the local API on
//! 0.0.0.0:51678, and a "container": a second network namespace behind a veth pair, as a bridge
//! container sits behind docker0. The rules must make `169.254.170.2:80` reach the endpoint from
//! the host's own processes (OUTPUT REDIRECT) and from the container (PREROUTING DNAT with
//! route_localnet), keep 51678 away from the container, add nothing when installed twice, and
//! take every path away again when removed.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use ecs_hostd::engine::net::host_nat::{Host, HostNat, NatSettings};
use netns::sh;

#[path = "common/netns.rs"]
mod netns;

/// Runs the real test inside a fresh network namespace (as root, like the rest of the suite).
#[test]
fn host_nat_makes_169_254_170_2_reach_the_endpoint_and_is_removed_cleanly() {
    if netns::inside() {
        return inside();
    }
    netns::rerun_in_own_netns(
        "host_nat_makes_169_254_170_2_reach_the_endpoint_and_is_removed_cleanly",
    );
}

/// The same with `iptables` and `ip6tables` resolving to the legacy (x_tables) back-end, the
/// other one Docker supports: the agent calls `iptables` from PATH, as Docker does, so it uses
/// whichever the host's alternatives (here: PATH) name.
#[test]
fn host_nat_works_with_the_legacy_iptables_backend_too() {
    if netns::inside() {
        return inside();
    }
    let bin = tempfile::tempdir().unwrap();
    for tool in ["iptables", "ip6tables"] {
        std::os::unix::fs::symlink(format!("/usr/sbin/{tool}-legacy"), bin.path().join(tool))
            .unwrap();
    }
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    netns::rerun_in_own_netns_with(
        "host_nat_works_with_the_legacy_iptables_backend_too",
        &[("PATH", path), (BACKEND, "legacy".into())],
    );
}

/// The back-end a re-run must find `iptables` to be (`legacy`; unset: whatever the host has).
const BACKEND: &str = "ECS_HOSTD_TEST_IPTABLES_BACKEND";

/// Serves `body` to every connection on `addr` (one thread, for the life of the test).
fn serve(addr: &str, body: &'static str) {
    let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// `wget` from the network namespace of `pid` (None = this one); the body, or None on failure.
fn get(pid: Option<u32>, url: &str) -> Option<String> {
    let mut c = match pid {
        Some(p) => {
            let mut c = Command::new("nsenter");
            c.args(["-t", &p.to_string(), "--net", "wget"]);
            c
        }
        None => Command::new("wget"),
    };
    let out = c
        .args(["-qO-", "-T", "2", "-t", "1", url])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn inside() {
    if let Ok(backend) = std::env::var(BACKEND) {
        let version = sh("iptables --version");
        assert!(version.contains(&format!("({backend})")), "{version}");
    }
    // This namespace is the "host".
    sh("ip link set lo up");
    // The "container": its own namespace behind a veth pair, the host side playing docker0.
    let container = Kill(
        Command::new("unshare")
            .args(["--net", "sleep", "infinity"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = container.0.id();
    std::thread::sleep(Duration::from_millis(200));
    sh(&format!(
        "ip link add br-test type veth peer name eth0 netns /proc/{pid}/ns/net && \
         ip addr add 198.51.100.1/24 dev br-test && ip link set br-test up"
    ));
    let ns = |cmd: &str| sh(&format!("nsenter -t {pid} --net sh -c '{cmd}'"));
    ns(
        "ip link set lo up && ip addr add 198.51.100.2/24 dev eth0 && ip link set eth0 up && ip route add default via 198.51.100.1",
    );
    // A default route, as every instance has: locally generated packets need a route before
    // OUTPUT's NAT sees them.
    sh("ip route add default via 198.51.100.2 dev br-test");

    // The veth's carrier takes a moment.
    std::thread::sleep(Duration::from_secs(1));
    serve("127.0.0.1:51679", "endpoint");
    serve("0.0.0.0:51678", "introspection");
    let endpoint = "http://169.254.170.2/v2/credentials/x";
    // Before: nothing answers on 169.254.170.2; the container reaches 51678 on the host side.
    assert_eq!(get(None, endpoint), None);
    assert_eq!(get(Some(pid), endpoint), None);
    assert_eq!(
        get(Some(pid), "http://198.51.100.1:51678/").as_deref(),
        Some("introspection")
    );

    let settings = NatSettings {
        endpoint_port: 51679,
        api_port: 51678,
        skip_localhost_filter: false,
        allow_offhost_introspection: false,
        docker_bridge: None,
        ipv6: false,
        block_imds: false,
    };
    let nat = HostNat::new(&settings, Box::new(Host::default()));
    assert_eq!(nat.install().unwrap(), nat.rules().len());
    let before = sh("iptables -w -t nat -S; iptables -w -t filter -S");
    // A second start (after a crash, say) adds nothing.
    assert_eq!(nat.install().unwrap(), 0);
    assert_eq!(
        sh("iptables -w -t nat -S; iptables -w -t filter -S"),
        before
    );
    assert_eq!(
        sh("cat /proc/sys/net/ipv4/conf/all/route_localnet").trim(),
        "1"
    );

    // Host processes (and dockerd, and host-network containers): OUTPUT REDIRECT.
    assert_eq!(get(None, endpoint).as_deref(), Some("endpoint"));
    // A bridge container: PREROUTING DNAT, routed to 127.0.0.1 thanks to route_localnet and
    // let through the 127/8 filter because it was DNATed.
    assert_eq!(get(Some(pid), endpoint).as_deref(), Some("endpoint"));
    // The introspection API is loopback-only now.
    assert_eq!(get(Some(pid), "http://198.51.100.1:51678/"), None);
    assert_eq!(
        get(None, "http://127.0.0.1:51678/").as_deref(),
        Some("introspection")
    );

    // What the 127/8 filter is for: with route_localnet on, a neighbour (here the container,
    // routing 127.0.0.1 through its gateway as an attacker on the link would) could reach the
    // endpoint on 127.0.0.1 without going through 169.254.170.2.
    // (Policy routing sends 127.0.0.1 out of eth0: the local table's rule moves behind ours.)
    ns("sysctl -qw net.ipv4.conf.eth0.route_localnet=1 && \
        ip route add 127.0.0.1/32 via 198.51.100.1 dev eth0 table 100 && \
        ip rule add pref 10 to 127.0.0.1 lookup 100 && \
        ip rule del pref 0 lookup local && ip rule add pref 100 lookup local");
    let direct = || get(Some(pid), "http://127.0.0.1:51679/");
    assert_eq!(
        direct(),
        None,
        "the 127/8 filter let a direct packet through"
    );
    // Control: without that one rule the same request is answered, so the None above is the rule.
    let filter = sh("iptables -w -t filter -S INPUT")
        .lines()
        .find(|l| l.contains("127.0.0.0/8") && l.contains("DROP"))
        .unwrap_or_else(|| panic!("no 127/8 filter installed"))
        .replacen("-A ", "-D ", 1);
    sh(&format!("iptables -w -t filter {filter}"));
    assert_eq!(direct().as_deref(), Some("endpoint"));
    sh(&format!(
        "iptables -w -t filter {}",
        filter.replacen("-D ", "-I ", 1)
    ));
    assert_eq!(direct(), None);
    ns("ip rule del pref 10 && ip rule add pref 0 lookup local && ip rule del pref 100");

    nat.remove().unwrap();
    let left = sh("iptables -w -t nat -S; iptables -w -t filter -S");
    assert!(
        !left.contains("169.254.170.2") && !left.contains("51678"),
        "{left}"
    );
    assert_eq!(
        sh("cat /proc/sys/net/ipv4/conf/all/route_localnet").trim(),
        sh("cat /proc/sys/net/ipv4/conf/default/route_localnet").trim()
    );
    assert_eq!(get(None, endpoint), None);
    assert_eq!(get(Some(pid), endpoint), None);
    drop(container);
}

/// Kills the child when dropped, pass or fail (a lingering child would hold the parent's pipes).
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The agent itself installs the rules right after Docker answers (before it even has its
/// identity) and removes them on a clean stop: run in a network namespace of its own, where IMDS
/// does not answer, so it waits at phase 3 until SIGTERM.
#[test]
fn the_agent_installs_the_nat_at_start_and_removes_it_on_a_clean_stop() {
    let holder = Kill(
        Command::new("unshare")
            .args(["--net", "sleep", "infinity"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("unshare"),
    );
    let ns = holder.0.id().to_string();
    std::thread::sleep(Duration::from_millis(200));
    let rules = || {
        let out = Command::new("nsenter")
            .args(["-t", &ns, "--net", "sh", "-c"])
            .arg("iptables -w -t nat -S; iptables -w -t filter -S")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(!rules().contains("169.254.170.2"));
    let data = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(data.path().join("agent.log")).unwrap();
    let mut agent = Command::new("nsenter")
        .args(["-t", &ns, "--net"])
        .arg(env!("CARGO_BIN_EXE_ecs-hostd"))
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ECS_CLUSTER", "nat")
        .env("ECS_DATADIR", data.path())
        .env("ECS_HOSTD_API_ADDR", "127.0.0.1:51678")
        .env("ECS_HOSTD_METRICS", "false")
        .env("ECS_HOSTD_DOCKER_WATCHDOG", "false")
        // Nothing listens here: the agent waits for IMDS, NAT already in place.
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:9")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let agent_log = || std::fs::read_to_string(data.path().join("agent.log")).unwrap_or_default();
    // The agent adds its rules one `iptables` call at a time: wait for the whole set (a
    // loaded machine was seen between the PREROUTING DNAT and the OUTPUT REDIRECT).
    let expected = [
        "-A PREROUTING -d 169.254.170.2/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 127.0.0.1:51679",
        "-A OUTPUT -d 169.254.170.2/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 51679",
        "--dport 51678 -j DROP",
    ];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let installed = rules();
        if expected.iter().all(|r| installed.contains(r)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not every NAT rule after 30 s (want {expected:?}):\n{installed}\n{}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Command::new("kill")
        .args(["-TERM", &agent.id().to_string()])
        .status()
        .unwrap();
    let status = agent.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", agent_log());
    let left = rules();
    assert!(
        !left.contains("169.254.170.2") && !left.contains("51678"),
        "rules left after a clean stop:\n{left}\n{}",
        agent_log()
    );
    drop(holder);
}
