//! The awsvpc side of a task record: the task's elastic network interface as ACS describes it
//! (`elasticNetworkInterfaces[]`, api-2.json `ElasticNetworkInterface`) turned into the kernel
//! seam's [`Eni`], and the persisted progress of the task's network ([`TaskNet`]: found,
//! bridge address, provisioned, released, ATTACHED reported).
//!
//! Owns: validating an ACS ENI (MAC, addresses, gateway prefix) with errors that name the
//! field, and the pure rules on [`TaskNet`] (does the task still owe a release?).
//! Never performs I/O, never reads a clock, never decides when the network is made (the
//! reconciler does) and never talks to the kernel (`engine::net::awsvpc` does).

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

pub use crate::engine::net::awsvpc::{Eni, Ipv4Cidr, Provisioned};

/// How long the engine waits for a task's ENI when no `AttachTaskNetworkInterfacesMessage`
/// said otherwise (its `waitTimeoutMs` replaces this once it arrives).
pub const DEFAULT_ENI_WAIT_SECS: f64 = 30.0;

/// How often the engine looks for an ENI that has not appeared yet when the task network offers
/// no host link events, seconds (a bounded poll until the attachment expires).
pub const ENI_POLL_SECS: f64 = 1.0;

/// How often the engine looks for a waiting ENI when host link events are offered, seconds:
/// the spec's periodic reconcile (awsvpc.md §2 step 2); each link event looks at once.
pub const ENI_RECONCILE_SECS: f64 = 30.0;

/// An ENI whose ACS description cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("elasticNetworkInterfaces[{index}].{field}: {problem}")]
pub struct EniError {
    /// Position in the list.
    pub index: usize,
    /// The member.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// `IPv4AddressAssignment`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcsIpv4 {
    /// The address.
    #[serde(default)]
    pub private_address: Option<String>,
    /// Primary.
    #[serde(default)]
    pub primary: Option<bool>,
}

/// `IPv6AddressAssignment`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcsIpv6 {
    /// The address.
    #[serde(default)]
    pub address: Option<String>,
}

/// `ElasticNetworkInterface` as ACS sends it (in a task and in
/// `AttachTaskNetworkInterfacesMessage`). Members we do not use are dropped.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcsEni {
    /// What ATTACHED is reported for.
    #[serde(default)]
    pub attachment_arn: Option<String>,
    /// `eni-...`.
    #[serde(default)]
    pub ec2_id: Option<String>,
    /// `aa:bb:...`, any case.
    #[serde(default)]
    pub mac_address: Option<String>,
    /// IPv4 addresses.
    #[serde(default)]
    pub ipv4_addresses: Option<Vec<AcsIpv4>>,
    /// IPv6 addresses.
    #[serde(default)]
    pub ipv6_addresses: Option<Vec<AcsIpv6>>,
    /// `10.0.1.1/24`: the subnet's gateway and prefix length.
    #[serde(default)]
    pub subnet_gateway_ipv4_address: Option<String>,
    /// DNS servers.
    #[serde(default)]
    pub domain_name_servers: Option<Vec<String>>,
    /// Search domains.
    #[serde(default)]
    pub domain_name: Option<Vec<String>>,
    /// The task's host name.
    #[serde(default)]
    pub private_dns_name: Option<String>,
}

/// A MAC address as `aa:bb:cc:dd:ee:ff` (lower case), or why not.
pub fn normalize_mac(mac: &str) -> Result<String, String> {
    let parts: Vec<&str> = mac.trim().split(':').collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(format!(
            "{mac:?} is not a MAC address (six hex pairs separated by colons)"
        ));
    }
    Ok(parts.join(":").to_ascii_lowercase())
}

impl AcsEni {
    /// The ENI the kernel seam speaks of; `index` names it in errors.
    pub fn to_eni(&self, index: usize) -> Result<Eni, EniError> {
        let err = |field, problem: String| EniError {
            index,
            field,
            problem,
        };
        let attachment_arn = nonempty(&self.attachment_arn)
            .ok_or_else(|| err("attachmentArn", "missing".into()))?
            .to_owned();
        let ec2_id = nonempty(&self.ec2_id)
            .ok_or_else(|| err("ec2Id", "missing".into()))?
            .to_owned();
        let mac = normalize_mac(
            nonempty(&self.mac_address).ok_or_else(|| err("macAddress", "missing".into()))?,
        )
        .map_err(|p| err("macAddress", p))?;
        // The gateway's prefix is the subnet's: the addresses get it.
        let (gateway_ipv4, prefix) = match nonempty(&self.subnet_gateway_ipv4_address) {
            None => (None, 32),
            Some(g) => {
                let (addr, prefix) = g.split_once('/').ok_or_else(|| {
                    err(
                        "subnetGatewayIpv4Address",
                        format!("{g:?} has no prefix length (expected e.g. 10.0.1.1/24)"),
                    )
                })?;
                let addr: Ipv4Addr = addr.parse().map_err(|_| {
                    err(
                        "subnetGatewayIpv4Address",
                        format!("{addr:?} is not an IPv4 address"),
                    )
                })?;
                let prefix: u8 = prefix.parse().ok().filter(|p| *p <= 32).ok_or_else(|| {
                    err(
                        "subnetGatewayIpv4Address",
                        format!("{prefix:?} is not a prefix length (0-32)"),
                    )
                })?;
                (Some(addr), prefix)
            }
        };
        let mut ipv4 = Vec::new();
        for a in self.ipv4_addresses.iter().flatten() {
            let text = a.private_address.as_deref().unwrap_or_default();
            let addr: Ipv4Addr = text
                .parse()
                .map_err(|_| err("ipv4Addresses", format!("{text:?} is not an IPv4 address")))?;
            let cidr = Ipv4Cidr { addr, prefix };
            if a.primary == Some(true) {
                ipv4.insert(0, cidr);
            } else {
                ipv4.push(cidr);
            }
        }
        if ipv4.is_empty() {
            return Err(err("ipv4Addresses", "no IPv4 address".into()));
        }
        let mut ipv6 = Vec::new();
        for a in self.ipv6_addresses.iter().flatten() {
            let text = a.address.as_deref().unwrap_or_default();
            let addr: std::net::Ipv6Addr = text
                .parse()
                .map_err(|_| err("ipv6Addresses", format!("{text:?} is not an IPv6 address")))?;
            ipv6.push(addr.to_string());
        }
        let mut dns_servers = Vec::new();
        for s in self.domain_name_servers.iter().flatten() {
            let ip: IpAddr = s
                .trim()
                .parse()
                .map_err(|_| err("domainNameServers", format!("{s:?} is not an IP address")))?;
            dns_servers.push(ip);
        }
        Ok(Eni {
            attachment_arn,
            ec2_id,
            mac,
            ipv4,
            ipv6,
            gateway_ipv4,
            dns_servers,
            dns_search: self
                .domain_name
                .iter()
                .flatten()
                .map(|d| d.trim().to_owned())
                .filter(|d| !d.is_empty())
                .collect(),
            private_dns_name: nonempty(&self.private_dns_name).map(str::to_owned),
        })
    }
}

fn nonempty(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

/// The one ENI of an awsvpc task (ECS attaches exactly one per task on EC2 without trunking).
pub fn task_eni(list: &[AcsEni]) -> Result<Eni, EniError> {
    match list {
        [one] => one.to_eni(0),
        [] => Err(EniError {
            index: 0,
            field: "macAddress",
            problem: "an awsvpc task needs its elastic network interface, and the task has none"
                .into(),
        }),
        _ => Err(EniError {
            index: 1,
            field: "attachmentArn",
            problem: format!(
                "the task has {} elastic network interfaces; ecs-hostd supports one per task",
                list.len()
            ),
        }),
    }
}

/// The persisted progress of an awsvpc task's network. Forward only: found, then a bridge
/// address, then provisioned, then released.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskNet {
    /// The ENI.
    pub eni: Eni,
    /// Epoch seconds after which the ENI will not appear any more (the attachment expired).
    pub expires_at: f64,
    /// How long the engine waits for it, seconds (for the stop reason).
    #[serde(default)]
    pub wait_secs: f64,
    /// The host link the ENI was found as (ATTACHED from here on).
    #[serde(default)]
    pub found: Option<String>,
    /// ATTACHED handed to the report queue.
    #[serde(default)]
    pub attached_emitted: bool,
    /// The task's address on the host bridge, chosen just before the first provision: from
    /// here on something may have been made, so a release is owed.
    #[serde(default)]
    pub bridge_ipv4: Option<Ipv4Addr>,
    /// The pause container's process the namespace was reached through.
    #[serde(default)]
    pub netns_pid: Option<u32>,
    /// What provisioning made: containers of the task may join the namespace.
    #[serde(default)]
    pub provisioned: Option<Provisioned>,
    /// Released: the ENI is back in the host namespace, the veth gone.
    #[serde(default)]
    pub released: bool,
    /// Why the network cannot be made: the task's stop reason.
    #[serde(default)]
    pub failure: Option<String>,
    /// Failed provisions or releases so far (retried with backoff).
    #[serde(default)]
    pub attempts: u32,
    /// Epoch seconds before which the next find, provision or release does not run. Not
    /// persisted: a restarted agent looks at once.
    #[serde(skip)]
    pub not_before: f64,
    /// Epoch seconds when the last look for the ENI started (0: never). Not persisted: a
    /// restarted agent looks at once.
    #[serde(skip)]
    pub looked_at: f64,
    /// The host link-event counter when the last look started (`None`: no events then).
    #[serde(skip)]
    pub links_seen: Option<u64>,
}

impl TaskNet {
    /// A network not started yet, waiting for `eni` until `expires_at`.
    pub fn new(eni: Eni, expires_at: f64) -> TaskNet {
        TaskNet {
            eni,
            expires_at,
            wait_secs: 0.0,
            found: None,
            attached_emitted: false,
            bridge_ipv4: None,
            netns_pid: None,
            provisioned: None,
            released: false,
            failure: None,
            attempts: 0,
            not_before: 0.0,
            looked_at: 0.0,
            links_seen: None,
        }
    }

    /// Whether something may have been made that a release must undo.
    pub fn owes_release(&self) -> bool {
        !self.released && (self.bridge_ipv4.is_some() || self.provisioned.is_some())
    }

    /// What to hand to `TaskNetwork::release`: what provisioning recorded, else (a crash
    /// between choosing the bridge address and recording the result) the names known so far.
    pub fn made(&self) -> Provisioned {
        self.provisioned.clone().unwrap_or_else(|| Provisioned {
            host_ifname: self.found.clone().unwrap_or_default(),
            host_veth: String::new(),
        })
    }

    /// Waits for the ENI from `from` (epoch seconds) for `secs` seconds.
    pub fn wait_from(&mut self, from: f64, secs: f64) {
        self.expires_at = from + secs;
        self.wait_secs = secs;
    }

    /// The network bindings of a container of an awsvpc task: its port mappings on the ENI's
    /// primary address, host port = container port (nothing is published on the host).
    pub fn bindings(&self, spec: &super::ContainerSpec) -> Vec<crate::tasks::NetworkBinding> {
        let ip = self
            .eni
            .ipv4
            .first()
            .map(|a| a.addr.to_string())
            .unwrap_or_default();
        let mut out = Vec::new();
        for pm in &spec.port_mappings {
            for port in pm.container_ports() {
                out.push(crate::tasks::NetworkBinding {
                    bind_ip: ip.clone(),
                    container_port: Some(port),
                    host_port: Some(port),
                    protocol: pm.proto().to_owned(),
                    container_port_range: None,
                    host_port_range: None,
                });
            }
        }
        out
    }

    /// How the stop reason names the ENI.
    pub fn describe(&self) -> String {
        format!("ENI {} ({})", self.eni.ec2_id, self.eni.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acs(v: serde_json::Value) -> AcsEni {
        serde_json::from_value(v).unwrap()
    }

    fn good() -> serde_json::Value {
        serde_json::json!({
            "attachmentArn": "arn:aws:ecs:us-east-1:123:attachment/a1",
            "ec2Id": "eni-0abc",
            "macAddress": "0A:1B:2C:3D:4E:5F",
            "ipv4Addresses": [
                {"privateAddress": "10.0.1.24", "primary": false},
                {"privateAddress": "10.0.1.23", "primary": true}
            ],
            "ipv6Addresses": [{"address": "2600:1f18::0001"}],
            "subnetGatewayIpv4Address": "10.0.1.1/24",
            "domainNameServers": ["10.0.0.2"],
            "domainName": ["ec2.internal", ""],
            "privateDnsName": "ip-10-0-1-23.ec2.internal"
        })
    }

    #[test]
    fn an_acs_eni_becomes_the_seam_eni() {
        let eni = acs(good()).to_eni(0).unwrap();
        assert_eq!(eni.mac, "0a:1b:2c:3d:4e:5f");
        assert_eq!(eni.ec2_id, "eni-0abc");
        assert_eq!(
            eni.ipv4,
            vec![
                Ipv4Cidr {
                    addr: Ipv4Addr::new(10, 0, 1, 23),
                    prefix: 24
                },
                Ipv4Cidr {
                    addr: Ipv4Addr::new(10, 0, 1, 24),
                    prefix: 24
                }
            ],
            "primary first, with the gateway's prefix"
        );
        assert_eq!(eni.gateway_ipv4, Some(Ipv4Addr::new(10, 0, 1, 1)));
        assert_eq!(eni.ipv6, vec!["2600:1f18::1".to_owned()]);
        assert_eq!(eni.dns_servers, vec!["10.0.0.2".parse::<IpAddr>().unwrap()]);
        assert_eq!(eni.dns_search, vec!["ec2.internal".to_owned()]);
        assert_eq!(
            eni.private_dns_name.as_deref(),
            Some("ip-10-0-1-23.ec2.internal")
        );
    }

    #[test]
    fn bad_enis_are_refused_naming_the_field() {
        let cases = [
            ("macAddress", serde_json::json!("mac"), "macAddress"),
            ("macAddress", serde_json::Value::Null, "macAddress"),
            ("attachmentArn", serde_json::json!(""), "attachmentArn"),
            ("ec2Id", serde_json::Value::Null, "ec2Id"),
            (
                "subnetGatewayIpv4Address",
                serde_json::json!("10.0.1.1"),
                "subnetGatewayIpv4Address",
            ),
            (
                "subnetGatewayIpv4Address",
                serde_json::json!("10.0.1.1/40"),
                "subnetGatewayIpv4Address",
            ),
            (
                "ipv4Addresses",
                serde_json::json!([{"privateAddress": "ipv4", "primary": true}]),
                "ipv4Addresses",
            ),
            ("ipv4Addresses", serde_json::json!([]), "ipv4Addresses"),
            (
                "domainNameServers",
                serde_json::json!(["dns"]),
                "domainNameServers",
            ),
        ];
        for (key, value, field) in cases {
            let mut v = good();
            v[key] = value.clone();
            let e = acs(v).to_eni(2).unwrap_err();
            assert_eq!(e.field, field, "{key} = {value}");
            assert_eq!(e.index, 2);
            assert!(
                e.to_string()
                    .starts_with(&format!("elasticNetworkInterfaces[2].{field}: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn a_task_has_exactly_one_eni() {
        assert!(task_eni(&[]).unwrap_err().to_string().contains("has none"));
        let two = vec![acs(good()), acs(good())];
        assert!(task_eni(&two).unwrap_err().to_string().contains("has 2"));
        assert_eq!(task_eni(&two[..1]).unwrap().ec2_id, "eni-0abc");
    }

    #[test]
    fn a_release_is_owed_once_a_bridge_address_was_chosen() {
        let mut n = TaskNet::new(acs(good()).to_eni(0).unwrap(), 100.0);
        assert!(!n.owes_release());
        n.found = Some("eth1".into());
        assert!(!n.owes_release(), "finding makes nothing");
        n.bridge_ipv4 = Some(Ipv4Addr::new(169, 254, 172, 2));
        assert!(n.owes_release());
        assert_eq!(n.made().host_ifname, "eth1");
        n.released = true;
        assert!(!n.owes_release());
    }
}
