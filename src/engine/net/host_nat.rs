//! `169.254.170.2` → the task endpoint, and the filters that keep the loopback services local
//! (task-credentials.md §6), plus the opt-in IMDS block for bridge containers (§7).
//!
//! [`rules`] is the pure list for given settings; [`HostNat`] applies it through a
//! [`Commands`] runner (the real one runs `iptables -w`), checking each rule with `-C` before
//! adding it, so a restart after a crash adds nothing twice, and deleting exactly those rules
//! on [`HostNat::remove`]. `route_localnet` is set on `all` and restored from `default` on
//! removal, as ecs-init does.

use std::path::PathBuf;
use std::process::Command;

use tracing::{debug, info, warn};

/// The link-local address containers use for credentials and metadata.
pub const ENDPOINT_IP: &str = "169.254.170.2";
/// The instance metadata service.
pub const IMDS_IP: &str = "169.254.169.254";

/// What decides the rule set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatSettings {
    /// Port the task endpoint listens on (127.0.0.1).
    pub endpoint_port: u16,
    /// Port of the local introspection API (51678).
    pub api_port: u16,
    /// `ECS_SKIP_LOCALHOST_TRAFFIC_FILTER`: leave out the filter that drops non-loopback traffic
    /// aimed at 127.0.0.0/8 (rule 2).
    pub skip_localhost_filter: bool,
    /// `ECS_ALLOW_OFFHOST_INTROSPECTION_ACCESS`: leave out rules 3 and 4.
    pub allow_offhost_introspection: bool,
    /// The default Docker bridge's interface (`docker0`), when known.
    pub docker_bridge: Option<String>,
    /// Also write the IPv6 introspection rules (ip6tables present and IPv6 on).
    pub ipv6: bool,
    /// `ECS_HOSTD_BLOCK_IMDS`: drop traffic from bridge containers to IMDS.
    pub block_imds: bool,
}

/// One rule: the command, its table, and the rule spec (after `-A`/`-I`/`-C`/`-D` and chain).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// `iptables` or `ip6tables`.
    pub program: &'static str,
    /// `nat` or `filter`.
    pub table: &'static str,
    /// Chain.
    pub chain: String,
    /// Insert at the top (`-I`) rather than append (`-A`).
    pub insert: bool,
    /// The match and target.
    pub spec: Vec<String>,
}

impl Rule {
    fn args(&self, op: &str) -> Vec<String> {
        let mut a = vec![
            "-w".to_owned(),
            "-t".to_owned(),
            self.table.to_owned(),
            op.to_owned(),
            self.chain.clone(),
        ];
        a.extend(self.spec.iter().cloned());
        a
    }

    /// How it reads in `iptables -S`-like text, for logs.
    pub fn describe(&self) -> String {
        format!(
            "{} -t {} {} {} {}",
            self.program,
            self.table,
            if self.insert { "-I" } else { "-A" },
            self.chain,
            self.spec.join(" ")
        )
    }
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_owned).collect()
}

/// The rules for `s`, in the order ecs-init installs them (§6 table), then the IMDS block.
pub fn rules(s: &NatSettings) -> Vec<Rule> {
    let rule = |program, table, chain: &str, insert, spec: String| Rule {
        program,
        table,
        chain: chain.to_owned(),
        insert,
        spec: words(&spec),
    };
    let mut out = vec![rule(
        "iptables",
        "nat",
        "PREROUTING",
        false,
        format!(
            "-p tcp -d {ENDPOINT_IP} --dport 80 -j DNAT --to-destination 127.0.0.1:{}",
            s.endpoint_port
        ),
    )];
    if !s.skip_localhost_filter {
        out.push(rule(
            "iptables",
            "filter",
            "INPUT",
            true,
            "--dst 127.0.0.0/8 ! --src 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP".into(),
        ));
    }
    if !s.allow_offhost_introspection {
        let programs: &[&'static str] = if s.ipv6 {
            &["iptables", "ip6tables"]
        } else {
            &["iptables"]
        };
        for p in programs {
            out.push(rule(
                p,
                "filter",
                "INPUT",
                true,
                format!("-p tcp --dport {} ! -i lo -j DROP", s.api_port),
            ));
        }
        if let Some(bridge) = &s.docker_bridge {
            for p in programs {
                out.push(rule(
                    p,
                    "filter",
                    "INPUT",
                    true,
                    format!("-p tcp --dport {} -i {bridge} -j ACCEPT", s.api_port),
                ));
            }
        }
    }
    out.push(rule(
        "iptables",
        "nat",
        "OUTPUT",
        false,
        format!(
            "-p tcp -d {ENDPOINT_IP} --dport 80 -j REDIRECT --to-ports {}",
            s.endpoint_port
        ),
    ));
    if s.block_imds {
        let from = s.docker_bridge.clone().unwrap_or_else(|| "docker+".into());
        out.push(rule(
            "iptables",
            "filter",
            "FORWARD",
            true,
            format!("-i {from} -d {IMDS_IP}/32 -j DROP"),
        ));
    }
    out
}

/// Runs the commands (the real host, or a recorder in unit tests).
pub trait Commands: Send + Sync {
    /// Runs `program args`; `Ok(true)` on exit 0, `Ok(false)` on another exit code, `Err` with
    /// its stderr when it could not run or failed in a way `-C` does not explain.
    fn run(&self, program: &str, args: &[String]) -> Result<bool, String>;
    /// Reads a sysctl file under `/proc/sys/` (path relative to it).
    fn read_sysctl(&self, path: &str) -> Result<String, String>;
    /// Writes one.
    fn write_sysctl(&self, path: &str, value: &str) -> Result<(), String>;
}

/// The host itself.
#[derive(Clone, Debug)]
pub struct Host {
    /// Usually `/proc/sys`.
    pub sysctl_root: PathBuf,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            sysctl_root: PathBuf::from("/proc/sys"),
        }
    }
}

impl Commands for Host {
    fn run(&self, program: &str, args: &[String]) -> Result<bool, String> {
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        if out.status.success() {
            return Ok(true);
        }
        match out.status.code() {
            // iptables -C: 1 = no such rule (other failures say so on stderr with other codes,
            // or with "does not exist" for a missing chain, which also means "not there").
            Some(1) => Ok(false),
            _ => Err(format!(
                "{program} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )),
        }
    }
    fn read_sysctl(&self, path: &str) -> Result<String, String> {
        std::fs::read_to_string(self.sysctl_root.join(path))
            .map(|s| s.trim().to_owned())
            .map_err(|e| format!("cannot read {path}: {e}"))
    }
    fn write_sysctl(&self, path: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.sysctl_root.join(path), value)
            .map_err(|e| format!("cannot write {path}: {e}"))
    }
}

/// Errors: which step failed and how.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("host network plumbing: {0}")]
pub struct NatError(pub String);

const ROUTE_LOCALNET: &str = "net/ipv4/conf/all/route_localnet";
const ROUTE_LOCALNET_DEFAULT: &str = "net/ipv4/conf/default/route_localnet";

/// Installs and removes the rule set.
pub struct HostNat {
    rules: Vec<Rule>,
    commands: Box<dyn Commands>,
}

impl HostNat {
    /// For `settings`, through `commands`.
    pub fn new(settings: &NatSettings, commands: Box<dyn Commands>) -> HostNat {
        HostNat {
            rules: rules(settings),
            commands,
        }
    }

    /// The rules it manages.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Sets `route_localnet` and adds every rule that is not there yet. Returns how many rules
    /// it added (0 when a previous run left them all in place).
    pub fn install(&self) -> Result<usize, NatError> {
        self.commands
            .write_sysctl(ROUTE_LOCALNET, "1")
            .map_err(NatError)?;
        let mut added = 0;
        for r in &self.rules {
            if self
                .commands
                .run(r.program, &r.args("-C"))
                .map_err(NatError)?
            {
                debug!(rule = %r.describe(), "Host NAT rule already present.");
                continue;
            }
            let op = if r.insert { "-I" } else { "-A" };
            if !self
                .commands
                .run(r.program, &r.args(op))
                .map_err(NatError)?
            {
                return Err(NatError(format!("{} failed", r.describe())));
            }
            added += 1;
        }
        info!(
            added,
            rules = self.rules.len(),
            "Host network plumbing in place: 169.254.170.2:80 reaches the task endpoint."
        );
        Ok(added)
    }

    /// Deletes the rules (every one attempted; errors combined) and restores `route_localnet`
    /// from the `default` value.
    pub fn remove(&self) -> Result<(), NatError> {
        let mut errors = Vec::new();
        for r in &self.rules {
            match self.commands.run(r.program, &r.args("-C")) {
                Ok(false) => continue,
                Ok(true) => {}
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            }
            match self.commands.run(r.program, &r.args("-D")) {
                Ok(true) => {}
                Ok(false) => errors.push(format!("{} could not be deleted", r.describe())),
                Err(e) => errors.push(e),
            }
        }
        match self.commands.read_sysctl(ROUTE_LOCALNET_DEFAULT) {
            Ok(v) => {
                if let Err(e) = self.commands.write_sysctl(ROUTE_LOCALNET, &v) {
                    errors.push(e);
                }
            }
            Err(e) => errors.push(e),
        }
        if errors.is_empty() {
            info!("Host network plumbing removed.");
            Ok(())
        } else {
            warn!(errors = %errors.join("; "), "Host network plumbing not fully removed.");
            Err(NatError(errors.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashSet};
    use std::sync::{Arc, Mutex};

    /// A fake iptables: a set of (program, table, chain, spec) and a log of every call.
    #[derive(Clone, Default)]
    struct Fake {
        present: Arc<Mutex<HashSet<String>>>,
        calls: Arc<Mutex<Vec<String>>>,
        sysctl: Arc<Mutex<BTreeMap<String, String>>>,
    }

    impl Commands for Fake {
        fn run(&self, program: &str, args: &[String]) -> Result<bool, String> {
            self.calls
                .lock()
                .unwrap()
                .push(format!("{program} {}", args.join(" ")));
            let (op, rest) = (args[3].as_str(), args[4..].join(" "));
            let key = format!("{program} {} {rest}", args[2]);
            let mut p = self.present.lock().unwrap();
            Ok(match op {
                "-C" => p.contains(&key),
                "-A" | "-I" => p.insert(key),
                "-D" => p.remove(&key),
                _ => false,
            })
        }
        fn read_sysctl(&self, path: &str) -> Result<String, String> {
            Ok(self
                .sysctl
                .lock()
                .unwrap()
                .get(path)
                .cloned()
                .unwrap_or("0".into()))
        }
        fn write_sysctl(&self, path: &str, value: &str) -> Result<(), String> {
            self.sysctl
                .lock()
                .unwrap()
                .insert(path.into(), value.into());
            Ok(())
        }
    }

    fn settings() -> NatSettings {
        NatSettings {
            endpoint_port: 51679,
            api_port: 51678,
            skip_localhost_filter: false,
            allow_offhost_introspection: false,
            docker_bridge: Some("docker0".into()),
            ipv6: false,
            block_imds: false,
        }
    }

    #[test]
    fn the_rules_are_ecs_inits_in_order() {
        let got: Vec<String> = rules(&settings()).iter().map(Rule::describe).collect();
        assert_eq!(
            got,
            [
                "iptables -t nat -A PREROUTING -p tcp -d 169.254.170.2 --dport 80 -j DNAT --to-destination 127.0.0.1:51679",
                "iptables -t filter -I INPUT --dst 127.0.0.0/8 ! --src 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP",
                "iptables -t filter -I INPUT -p tcp --dport 51678 ! -i lo -j DROP",
                "iptables -t filter -I INPUT -p tcp --dport 51678 -i docker0 -j ACCEPT",
                "iptables -t nat -A OUTPUT -p tcp -d 169.254.170.2 --dport 80 -j REDIRECT --to-ports 51679",
            ]
        );
    }

    #[test]
    fn settings_leave_rules_out_or_add_them() {
        let mut s = settings();
        s.skip_localhost_filter = true;
        s.allow_offhost_introspection = true;
        s.block_imds = true;
        let got: Vec<String> = rules(&s).iter().map(Rule::describe).collect();
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(
            got[2],
            "iptables -t filter -I FORWARD -i docker0 -d 169.254.169.254/32 -j DROP"
        );
        let mut s = settings();
        s.ipv6 = true;
        s.docker_bridge = None;
        let got: Vec<String> = rules(&s).iter().map(Rule::describe).collect();
        assert!(got.iter().any(|r| r.starts_with("ip6tables -t filter -I INPUT -p tcp --dport 51678 ! -i lo")));
        assert!(
            !got.iter().any(|r| r.contains("ACCEPT")),
            "no bridge, no accept rule"
        );
    }

    #[test]
    fn install_is_idempotent_and_remove_takes_back_exactly_what_it_added() {
        let fake = Fake::default();
        fake.sysctl
            .lock()
            .unwrap()
            .insert(ROUTE_LOCALNET_DEFAULT.into(), "0".into());
        // Someone else's rule in the same chain stays.
        fake.present
            .lock()
            .unwrap()
            .insert("iptables nat PREROUTING -p tcp --dport 8080 -j ACCEPT".into());
        let nat = HostNat::new(&settings(), Box::new(fake.clone()));
        assert_eq!(nat.install().unwrap(), 5);
        assert_eq!(fake.sysctl.lock().unwrap()[ROUTE_LOCALNET], "1");
        assert_eq!(fake.present.lock().unwrap().len(), 6);
        // A second start (after a crash) adds nothing.
        assert_eq!(nat.install().unwrap(), 0);
        assert_eq!(fake.present.lock().unwrap().len(), 6);
        nat.remove().unwrap();
        let left: Vec<String> = fake.present.lock().unwrap().iter().cloned().collect();
        assert_eq!(
            left,
            ["iptables nat PREROUTING -p tcp --dport 8080 -j ACCEPT"]
        );
        assert_eq!(fake.sysctl.lock().unwrap()[ROUTE_LOCALNET], "0");
        // Every call waits for the xtables lock, as Docker's do.
        assert!(
            fake.calls
                .lock()
                .unwrap()
                .iter()
                .all(|c| c.contains(" -w -t "))
        );
    }
}
