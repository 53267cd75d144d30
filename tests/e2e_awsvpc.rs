//! The awsvpc network mode end to end (issue 22): the real agent binary, ec2sim, a private
//! Docker engine and stand-in ENIs, all inside a network namespace of the test's own.
//!
//! The test re-runs itself under `unshare --net` (never touching the shared host's links,
//! routes or iptables). Inside: ec2sim with a VPC and subnet 10.0.1.0/24 created with boto3 and
//! an instance launched into that subnet (so IMDS gives its VPC); a "VPC" namespace holding the
//! gateway 10.0.1.1 and an IMDS stand-in on 169.254.169.254 (`tests/common/vpc.rs`); a dockerd in
//! this namespace; and the agent with its host NAT on and the test-only setting that takes a
//! veth end with an ENI's MAC for the ENI. Tasks are placed with RunTask and
//! `networkConfiguration`, as a user does; each one's ENI (moto's MAC and address, read back
//! from ec2sim) is plugged into the VPC as a veth end in this namespace.
//!
//! What proves it is what the kernel and Docker say from inside the task's containers
//! (`docker exec`: `eth0`'s address and MAC, the default route, what answers over TCP), what the
//! VPC's listeners and the other task's httpd serve, and what this namespace's links and Docker
//! show after the tasks are gone. Then a kill -9 of the agent right after it moved an ENI into a
//! task's namespace (the engine's `network.after` hook, debug builds) and a restart, and a run with
//! `ECS_AWSVPC_BLOCK_IMDS=true`. Two figures are printed: RunTask → RUNNING of a one-container
//! awsvpc task against the same task in bridge mode, and the agent's RSS with 20 awsvpc tasks.

mod common;
#[path = "common/images.rs"]
mod images;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/private_docker.rs"]
mod private_docker;

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use aws_sdk_ecs::types::{
    AwsVpcConfiguration, ContainerDefinition, NetworkConfiguration, NetworkMode, PortMapping,
};
use common::vpc::Vpc;
use common::*;
use images::world_image;
use netns::sh;
use private_docker::PrivateDocker;
use serde_json::{Value, json};

const TEST: &str = "awsvpc_tasks_get_their_enis_and_give_them_back";
/// The pause image the world builds under the official name (never pulled).
const PAUSE_IMAGE: &str = "amazon/amazon-ecs-pause:0.1.0";
const NETWORK_PAUSE: &str = "~internal~ecs~pause";
const LABEL_TASK: &str = "com.amazonaws.ecs.task-arn";
const LABEL_CONTAINER: &str = "com.amazonaws.ecs.container-name";
/// `get URL`: an HTTP/1.0 GET with busybox `nc` (the world image's static busybox `wget`
/// segfaults on any URL, in every network mode), the body on stdout when the answer is 200.
const GET: &str = r#"get() { u=${1#http://}; hp=${u%%/*}; p=/${u#*/}; h=${hp%:*}; port=80; [ "$hp" != "$h" ] && port=${hp#*:}; printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$p" "$hp" | nc -w 3 "$h" "$port" | tr -d '\r' > /tmp/get.out; head -n 1 /tmp/get.out | grep -q ' 200 ' || { echo "no 200 from $1:" >&2; cat /tmp/get.out >&2; return 1; }; sed '1,/^$/d' /tmp/get.out; }; "#;
/// What the IMDS stand-in in the VPC answers (so "unreachable" can be told from "not there").
const IMDS_TOKEN: &str = "imds-standin-5c1e";
const GATEWAY_TOKEN: &str = "gateway-91d0";

#[test]
fn awsvpc_tasks_get_their_enis_and_give_them_back() {
    if netns::inside() {
        return tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(inside());
    }
    netns::rerun_in_own_netns(TEST);
}

struct W {
    sim: Ec2Sim,
    cluster: String,
    docker: PrivateDocker,
    vpc: Vpc,
    imds: String,
    vpc_id: String,
    subnet: String,
    group: String,
    image: String,
    data: tempfile::TempDir,
    markers: tempfile::TempDir,
    _sites: Vec<tempfile::TempDir>,
}

/// One awsvpc task as the test knows it: its ARN and its ENI (from ec2sim).
struct Task {
    arn: String,
    eni: Value,
    /// The ENI's name in this namespace (what the agent must give back).
    ifname: String,
}

impl Task {
    fn ip(&self) -> &str {
        self.eni["ipv4"].as_str().unwrap()
    }
    fn cidr(&self) -> &str {
        self.eni["ipv4_cidr"].as_str().unwrap()
    }
    fn mac(&self) -> &str {
        self.eni["mac"].as_str().unwrap()
    }
}

impl W {
    /// The agent for this world; `extra` wins.
    fn agent(&self, extra: &[(&str, &str)]) -> Agent {
        let mut spec = AgentSpec::new(&self.sim, &self.cluster, self.data.path())
            .env("DOCKER_HOST", &self.docker.host)
            .env("ECS_HOSTD_HOST_NAT", "true")
            .env("ECS_HOSTD_TASK_ENDPOINT_ADDR", "127.0.0.1:51679")
            .env("ECS_HOSTD_METRICS", "false")
            .env("ECS_CONTAINER_STOP_TIMEOUT", "1s")
            .env("ECS_ENGINE_TASK_CLEANUP_WAIT_DURATION", "2s")
            .env("ECS_HOSTD_PAUSE_IMAGE", PAUSE_IMAGE)
            .env("ECS_HOSTD_TEST_ACCEPT_VIRTUAL_ENIS", "true");
        spec.imds = self.imds.clone();
        for (k, v) in extra {
            spec = spec.env(k, v);
        }
        let mut agent = spec.start();
        agent.wait_registered(Duration::from_secs(60));
        agent
    }

    async fn task_definition(
        &self,
        family: &str,
        mode: NetworkMode,
        containers: Vec<ContainerDefinition>,
        role: Option<&str>,
    ) -> String {
        self.sim
            .ecs()
            .await
            .register_task_definition()
            .family(family)
            .network_mode(mode)
            .set_task_role_arn(role.map(str::to_owned))
            .set_container_definitions(Some(containers))
            .send()
            .await
            .unwrap()
            .task_definition()
            .unwrap()
            .task_definition_arn()
            .unwrap()
            .to_owned()
    }

    fn container(&self, name: &str, script: &str) -> ContainerDefinition {
        ContainerDefinition::builder()
            .name(name)
            .image(&self.image)
            .essential(name != "side")
            .memory(32)
            .command("sh")
            .command("-c")
            .command(script)
            .build()
    }

    /// RunTask with the subnet, as a user calls it; returns the task ARN.
    async fn run_awsvpc(&self, td: &str) -> String {
        let network = NetworkConfiguration::builder()
            .awsvpc_configuration(
                AwsVpcConfiguration::builder()
                    .subnets(&self.subnet)
                    .security_groups(&self.group)
                    .build()
                    .unwrap(),
            )
            .build();
        let out = self
            .sim
            .ecs()
            .await
            .run_task()
            .cluster(&self.cluster)
            .task_definition(td)
            .network_configuration(network)
            .send()
            .await
            .unwrap();
        assert!(out.failures().is_empty(), "{:?}", out.failures());
        out.tasks()[0].task_arn().unwrap().to_owned()
    }

    /// RunTask of an awsvpc task, then its ENI (ec2sim's) plugged into the VPC as `ifname`.
    async fn place(&mut self, td: &str, ifname: &str) -> Task {
        let arn = self.run_awsvpc(td).await;
        self.plug(&arn, ifname)
    }

    fn plug(&mut self, arn: &str, ifname: &str) -> Task {
        let enis = self.sim.get(&format!("/ec2sim/enis?task_arn={arn}"));
        let eni = enis["enis"][0].clone();
        assert!(eni["mac"].is_string(), "no ENI for {arn}: {enis}");
        self.vpc.plug_eni(eni["mac"].as_str().unwrap(), ifname);
        Task {
            arn: arn.to_owned(),
            eni,
            ifname: ifname.to_owned(),
        }
    }

    /// The Docker id of the task's container `name`.
    fn id_of(&self, task: &str, name: &str) -> String {
        let ids = self.docker.run(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_TASK}={task}"),
            "--filter",
            &format!("label={LABEL_CONTAINER}={name}"),
        ]);
        let id = ids.lines().next().unwrap_or_default().to_owned();
        assert!(!id.is_empty(), "no container {name} of {task}");
        id
    }

    /// `sh -c cmd` inside the task's container `name`.
    fn exec(&self, task: &str, name: &str, cmd: &str) -> Output {
        let id = self.id_of(task, name);
        self.docker
            .cli()
            .args(["exec", &id, "sh", "-c", cmd])
            .output()
            .unwrap()
    }

    /// The same, which must succeed; its stdout.
    fn exec_ok(&self, task: &str, name: &str, cmd: &str) -> String {
        let out = self.exec(task, name, cmd);
        assert!(
            out.status.success(),
            "`{cmd}` in {name} of {task}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Fetches `url` from inside a container with busybox wget, retrying a few seconds (a
    /// listener may still be starting).
    fn fetch(&self, task: &str, name: &str, url: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let out = self.exec(task, name, &format!("{GET}get {url}"));
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
            if Instant::now() > deadline {
                let inside = self.exec(task, name, "ip addr; ip route; ip neigh");
                let vpc = std::process::Command::new("nsenter")
                    .arg(format!("--net=/proc/{}/ns/net", self.vpc.pid()))
                    .args(["--", "sh", "-c", "ip addr; ip neigh; busybox netstat -ltn"])
                    .output()
                    .unwrap();
                let vpc = String::from_utf8_lossy(&vpc.stdout);
                panic!(
                    "{url} from {name} of {task}: {:?} {}\ninside the task:\n{}\nin the VPC:\n{vpc}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&inside.stdout),
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Every container of `task` in Docker (any state).
    fn containers_of(&self, task: &str) -> usize {
        self.docker
            .run(&[
                "ps",
                "-aq",
                "--filter",
                &format!("label={LABEL_TASK}={task}"),
            ])
            .lines()
            .count()
    }

    /// Stops the tasks, waits for STOPPED and for the cleanup (no container left in Docker),
    /// then checks what they leave: each ENI back here under its name and MAC, down; the
    /// attachment DETACHED in DescribeTasks; no pause container.
    async fn stop_and_check_released(&self, tasks: &[&Task], agent: &Agent) {
        for t in tasks {
            stop_task(&self.sim, &self.cluster, &t.arn).await;
        }
        for t in tasks {
            let described = wait_task_status(
                &self.sim,
                &self.cluster,
                &t.arn,
                "STOPPED",
                Duration::from_secs(60),
                agent,
            )
            .await;
            let attachment = &described.attachments()[0];
            assert_eq!(
                attachment.status(),
                Some("DETACHED"),
                "{:?}\n{}",
                described,
                agent.log()
            );
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while tasks.iter().any(|t| self.containers_of(&t.arn) > 0) {
            assert!(
                Instant::now() < deadline,
                "the stopped tasks' containers were not cleaned up:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let links = links_here();
        for t in tasks {
            let link = links
                .iter()
                .find(|l| l["ifname"] == t.ifname.as_str())
                .unwrap_or_else(|| {
                    panic!(
                        "ENI {} of {} is not back in this namespace: {links:?}\n{}",
                        t.ifname,
                        t.arn,
                        agent.log()
                    )
                });
            assert_eq!(link["address"].as_str(), Some(t.mac()), "{link}");
        }
        let veths: Vec<&str> = links
            .iter()
            .filter_map(|l| l["ifname"].as_str())
            .filter(|n| n.starts_with("veth"))
            .collect();
        assert!(veths.is_empty(), "veth links left: {veths:?}");
        let pauses = self.docker.run(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_CONTAINER}={NETWORK_PAUSE}"),
        ]);
        assert!(pauses.is_empty(), "pause containers left: {pauses}");
    }
}

/// This namespace's links as `ip -j link` shows them.
fn links_here() -> Vec<Value> {
    serde_json::from_str::<Value>(&sh("ip -j link show"))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn has_link(name: &str) -> bool {
    links_here().iter().any(|l| l["ifname"] == name)
}

/// A directory with `index.html` holding `token`, for busybox httpd.
fn site(token: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), token).unwrap();
    dir
}

/// Polls DescribeTasks every 50 ms until `task` is RUNNING; the time from `since`.
async fn running_after(w: &W, task: &str, since: Instant, agent: &Agent) -> Duration {
    let ecs = w.sim.ecs().await;
    let deadline = since + Duration::from_secs(60);
    loop {
        let out = ecs
            .describe_tasks()
            .cluster(&w.cluster)
            .tasks(task)
            .send()
            .await
            .unwrap();
        if out.tasks()[0].last_status() == Some("RUNNING") {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "{task} not RUNNING:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn attribute_names(described: &Value) -> Vec<(String, Option<String>)> {
    described["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["name"].as_str().unwrap().to_owned(),
                a["value"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

async fn inside() {
    sh("ip link set lo up");
    let image = world_image("ECS_HOSTD_TEST_IMAGE", "ecs-hostd-test/busybox");
    let docker = PrivateDocker::start_in_this_netns();
    docker.load_image(&image);
    docker.load_image(PAUSE_IMAGE);
    let sim = Ec2Sim::start();

    // The VPC, as a user makes it, and the instance launched into its subnet.
    let made = boto(
        &sim.url(),
        r#"
ec2 = client("ec2")
vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
group = ec2.create_security_group(GroupName="awsvpc-e2e", Description="t", VpcId=vpc)["GroupId"]
OUT = {"vpc": vpc, "subnet": subnet, "group": group}
"#,
        &json!({}),
    );
    let (instance_id, imds) = sim.new_instance(json!({"subnet_id": made["subnet"]}));

    // The VPC's gateway with a listener, and an IMDS stand-in the tasks would reach through it.
    let mut vpc = Vpc::start("10.0.1.1/24");
    let gateway_site = site(GATEWAY_TOKEN);
    let imds_site = site(IMDS_TOKEN);
    vpc.exec("ip addr add 169.254.169.254/32 dev lo");
    vpc.spawn(&format!(
        "busybox httpd -f -p 10.0.1.1:8081 -h {}",
        gateway_site.path().display()
    ));
    vpc.spawn(&format!(
        "busybox httpd -f -p 169.254.169.254:80 -h {}",
        imds_site.path().display()
    ));

    let cluster = unique("awsvpc");
    create_cluster(&sim, &cluster).await;
    let mut w = W {
        sim,
        cluster,
        docker,
        vpc,
        imds,
        vpc_id: made["vpc"].as_str().unwrap().to_owned(),
        subnet: made["subnet"].as_str().unwrap().to_owned(),
        group: made["group"].as_str().unwrap().to_owned(),
        image,
        data: tempfile::tempdir().unwrap(),
        markers: tempfile::tempdir().unwrap(),
        _sites: vec![gateway_site, imds_site],
    };

    let mut agent = w.agent(&[]);
    let arn = agent.metadata().unwrap()["ContainerInstanceArn"]
        .as_str()
        .unwrap()
        .to_owned();
    let described = describe_instance(&w.sim, &w.cluster, &arn).await;
    assert_eq!(described["ec2InstanceId"], instance_id.as_str());
    let attrs = attribute_names(&described);
    for (name, value) in [
        ("ecs.capability.task-eni", None),
        ("ecs.vpc-id", Some(w.vpc_id.clone())),
        ("ecs.subnet-id", Some(w.subnet.clone())),
    ] {
        assert!(
            attrs.contains(&(name.to_owned(), value.clone())),
            "{name}={value:?} not advertised: {attrs:?}"
        );
    }
    assert!(
        !attrs
            .iter()
            .any(|(n, _)| n == "ecs.capability.task-eni-block-instance-metadata"),
        "{attrs:?}"
    );

    // Two tasks: httpd on 8080 serving what its own eth0 says, and a side container.
    let web =
        "ip -o -4 addr show dev eth0 | awk '{print $4}' > /www/who; exec httpd -f -p 8080 -h /www";
    let side = "trap 'exit 0' TERM; sleep 3600 & wait";
    let role = "arn:aws:iam::123456789012:role/app";
    let mut web_def = w.container("web", web);
    web_def.port_mappings = Some(vec![PortMapping::builder().container_port(8080).build()]);
    let td = w
        .task_definition(
            &unique("web"),
            NetworkMode::Awsvpc,
            vec![web_def, w.container("side", side)],
            Some(role),
        )
        .await;
    let a = w.place(&td, "eni-a").await;
    let b = w.place(&td, "eni-b").await;
    assert_ne!(a.ip(), b.ip());
    for t in [&a, &b] {
        let described = wait_task_status(
            &w.sim,
            &w.cluster,
            &t.arn,
            "RUNNING",
            Duration::from_secs(90),
            &agent,
        )
        .await;
        let attachment = &described.attachments()[0];
        assert_eq!(attachment.status(), Some("ATTACHED"), "{described:?}");
        for c in described.containers() {
            assert_eq!(
                c.network_interfaces()[0].private_ipv4_address(),
                Some(t.ip()),
                "{c:?}"
            );
        }
        // The ENI left this namespace.
        assert!(!has_link(&t.ifname), "{} still here", t.ifname);
        // What the kernel says inside both containers (they share the pause's namespace).
        for name in ["web", "side"] {
            let addr = w.exec_ok(&t.arn, name, "ip -o -4 addr show dev eth0");
            assert!(
                addr.contains(&format!("inet {}", t.cidr())),
                "{name}: {addr}"
            );
            let link = w.exec_ok(&t.arn, name, "ip -o link show dev eth0");
            assert!(link.contains(&format!("link/ether {}", t.mac())), "{link}");
            let route = w.exec_ok(&t.arn, name, "ip route show default");
            assert!(route.contains("via 10.0.1.1 dev eth0"), "{route}");
        }
        // The VPC's gateway answers, and the side container reaches its web neighbour on
        // localhost.
        assert_eq!(
            w.fetch(&t.arn, "side", "http://10.0.1.1:8081/index.html")
                .trim(),
            GATEWAY_TOKEN
        );
        assert_eq!(
            w.fetch(&t.arn, "side", "http://127.0.0.1:8080/who").trim(),
            t.cidr()
        );
        // Task metadata v4 through 169.254.170.2 (ecs-bridge, the host's DNAT): this task's.
        let meta = w.fetch(&t.arn, "side", "$ECS_CONTAINER_METADATA_URI_V4/task");
        let meta: Value = serde_json::from_str(&meta).unwrap_or_else(|e| panic!("{e}: {meta}"));
        assert_eq!(meta["TaskARN"], t.arn.as_str(), "{meta}");
        // Its containers (never the pause) with the ENI as their network, as the kernel showed it.
        let containers = meta["Containers"].as_array().unwrap();
        let mut names: Vec<&str> = containers
            .iter()
            .filter_map(|c| c["Name"].as_str())
            .collect();
        names.sort();
        assert_eq!(names, ["side", "web"], "{meta}");
        for c in containers {
            let net = &c["Networks"][0];
            assert_eq!(net["NetworkMode"], "awsvpc", "{c}");
            assert_eq!(net["IPv4Addresses"], serde_json::json!([t.ip()]), "{c}");
            assert_eq!(net["MACAddress"], t.mac(), "{c}");
            assert_eq!(net["SubnetGatewayIpv4Address"], "10.0.1.1/24", "{c}");
            assert_eq!(net["IPv4SubnetCIDRBlock"], "10.0.1.0/24", "{c}");
        }
        // The task role's credentials, the very keys ec2sim issued for this task.
        let creds = w.fetch(
            &t.arn,
            "side",
            "http://169.254.170.2$AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        );
        let creds: Value = serde_json::from_str(&creds).unwrap();
        let sets = w
            .sim
            .get(&format!("/ec2sim/credentials?task_arn={}", t.arn));
        let issued = sets["sets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["role_type"] == "TaskApplication")
            .unwrap()["credentials"]["accessKeyId"]
            .clone();
        assert_eq!(creds["AccessKeyId"], issued, "{creds}");
        // Without ECS_AWSVPC_BLOCK_IMDS the instance metadata service is reachable (the control
        // for the blocked run below).
        assert_eq!(
            w.fetch(&t.arn, "side", "http://169.254.169.254/index.html")
                .trim(),
            IMDS_TOKEN
        );
    }
    // Each task reaches the other's httpd on its ENI address: what the other's eth0 says.
    assert_eq!(
        w.fetch(&a.arn, "side", &format!("http://{}:8080/who", b.ip()))
            .trim(),
        b.cidr()
    );
    assert_eq!(
        w.fetch(&b.arn, "side", &format!("http://{}:8080/who", a.ip()))
            .trim(),
        a.cidr()
    );
    w.stop_and_check_released(&[&a, &b], &agent).await;

    // Figure 1: RunTask → RUNNING of a one-container task, awsvpc against bridge (same agent,
    // same image; the awsvpc ENI is plugged right after RunTask returns).
    let solo = "trap 'exit 0' TERM; sleep 3600 & wait";
    let awsvpc_td = w
        .task_definition(
            &unique("solo"),
            NetworkMode::Awsvpc,
            vec![w.container("app", solo)],
            None,
        )
        .await;
    let bridge_td = w
        .task_definition(
            &unique("solo"),
            NetworkMode::Bridge,
            vec![w.container("app", solo)],
            None,
        )
        .await;
    let (mut t_awsvpc, mut t_bridge, mut timed) = (Vec::new(), Vec::new(), Vec::new());
    let mut bridge_tasks = Vec::new();
    for i in 0..3 {
        let since = Instant::now();
        let t = w.place(&awsvpc_td, &format!("eni-t{i}")).await;
        t_awsvpc.push(running_after(&w, &t.arn, since, &agent).await);
        timed.push(t);
        let since = Instant::now();
        let arn = run_task(&w.sim, &w.cluster, &bridge_td).await;
        t_bridge.push(running_after(&w, &arn, since, &agent).await);
        bridge_tasks.push(arn);
    }
    for arn in &bridge_tasks {
        stop_task(&w.sim, &w.cluster, arn).await;
    }
    for arn in &bridge_tasks {
        wait_task_status(
            &w.sim,
            &w.cluster,
            arn,
            "STOPPED",
            Duration::from_secs(60),
            &agent,
        )
        .await;
    }
    w.stop_and_check_released(&timed.iter().collect::<Vec<_>>(), &agent)
        .await;
    println!(
        "FIGURE RunTask->RUNNING one-container task, median of 3: awsvpc {:?} (all {:?}), bridge {:?} (all {:?})",
        median(t_awsvpc.clone()),
        t_awsvpc,
        median(t_bridge.clone()),
        t_bridge
    );

    // Figure 2: the agent's RSS with 20 awsvpc tasks running.
    let idle_rss = agent.rss_kib();
    let mut many = Vec::new();
    for i in 0..20 {
        many.push(w.place(&awsvpc_td, &format!("eni-r{i:02}")).await);
    }
    for t in &many {
        wait_task_status(
            &w.sim,
            &w.cluster,
            &t.arn,
            "RUNNING",
            Duration::from_secs(180),
            &agent,
        )
        .await;
    }
    let ips: std::collections::BTreeSet<&str> = many.iter().map(Task::ip).collect();
    assert_eq!(ips.len(), 20);
    // Each has its own ENI, as the kernel shows it in one of them.
    let last = &many[19];
    let addr = w.exec_ok(&last.arn, "app", "ip -o -4 addr show dev eth0");
    assert!(addr.contains(&format!("inet {}", last.cidr())), "{addr}");
    let busy_rss = agent.rss_kib();
    println!(
        "FIGURE agent RSS: {idle_rss} KiB with no task, {busy_rss} KiB with 20 awsvpc tasks running (debug build)"
    );
    w.stop_and_check_released(&many.iter().collect::<Vec<_>>(), &agent)
        .await;

    // An ENI that never appears: ACS gives 3 s (waitTimeoutMs), nothing with its MAC is
    // plugged; the task stops with the reason naming the ENI, and nothing of it stays in Docker.
    w.sim.post(
        "/ec2sim/enis/config",
        serde_json::json!({"wait_timeout_ms": 3000}),
    );
    let lost = w.run_awsvpc(&awsvpc_td).await;
    let eni = w.sim.get(&format!("/ec2sim/enis?task_arn={lost}"))["enis"][0].clone();
    let described = wait_task_status(
        &w.sim,
        &w.cluster,
        &lost,
        "STOPPED",
        Duration::from_secs(60),
        &agent,
    )
    .await;
    let reason = described.stopped_reason().unwrap_or_default().to_owned();
    let want = format!(
        "ENI {} ({}) did not appear on this instance within 3 s",
        eni["eni_id"].as_str().unwrap(),
        eni["mac"].as_str().unwrap()
    );
    assert!(reason.contains(&want), "{reason:?}, want {want:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while w.containers_of(&lost) > 0 {
        assert!(Instant::now() < deadline, "the lost task's containers stay");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    w.sim.post(
        "/ec2sim/enis/config",
        serde_json::json!({"wait_timeout_ms": 30000}),
    );
    agent.terminate();

    // kill -9 of the agent right after it moved a task's ENI into the pause's namespace and
    // before it recorded that; the restarted agent finishes the task's set-up.
    let marker_dir = w.markers.path().to_str().unwrap().to_owned();
    let mut agent = w.agent(&[
        ("ECS_HOSTD_TEST_PAUSE_AT", "network.after"),
        ("ECS_HOSTD_TEST_MARKER_DIR", &marker_dir),
    ]);
    let c = w.place(&td, "eni-c").await;
    let marker = Path::new(&marker_dir).join("network.after");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !marker.exists() {
        assert!(
            Instant::now() < deadline,
            "the agent never reached network.after:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!has_link("eni-c"), "the ENI was not moved before the hook");
    assert_eq!(
        w.docker
            .run(&[
                "ps",
                "-q",
                "--filter",
                &format!("label={LABEL_TASK}={}", c.arn),
            ])
            .lines()
            .count(),
        1,
        "only the pause runs at network.after"
    );
    agent.kill9();
    let mut agent = w.agent(&[]);
    wait_task_status(
        &w.sim,
        &w.cluster,
        &c.arn,
        "RUNNING",
        Duration::from_secs(90),
        &agent,
    )
    .await;
    let addr = w.exec_ok(&c.arn, "web", "ip -o -4 addr show dev eth0");
    assert!(addr.contains(&format!("inet {}", c.cidr())), "{addr}");
    assert_eq!(
        w.fetch(&c.arn, "side", "http://10.0.1.1:8081/index.html")
            .trim(),
        GATEWAY_TOKEN
    );
    assert_eq!(
        w.containers_of(&c.arn),
        3,
        "pause, web and side, no duplicate"
    );
    w.stop_and_check_released(&[&c], &agent).await;
    agent.terminate();

    // ECS_AWSVPC_BLOCK_IMDS=true: the instance metadata service is unreachable from the task,
    // while the gateway and the task endpoint still are; the agent itself read IMDS (it
    // registered, and advertises the VPC it read there).
    let agent = w.agent(&[("ECS_AWSVPC_BLOCK_IMDS", "true")]);
    let attrs = attribute_names(&describe_instance(&w.sim, &w.cluster, &arn).await);
    assert!(
        attrs.contains(&(
            "ecs.capability.task-eni-block-instance-metadata".to_owned(),
            None
        )),
        "{attrs:?}"
    );
    assert!(attrs.contains(&("ecs.vpc-id".to_owned(), Some(w.vpc_id.clone()))));
    let d = w.place(&td, "eni-d").await;
    wait_task_status(
        &w.sim,
        &w.cluster,
        &d.arn,
        "RUNNING",
        Duration::from_secs(90),
        &agent,
    )
    .await;
    assert_eq!(
        w.fetch(&d.arn, "side", "http://10.0.1.1:8081/index.html")
            .trim(),
        GATEWAY_TOKEN
    );
    let meta = w.fetch(&d.arn, "side", "$ECS_CONTAINER_METADATA_URI_V4/task");
    assert!(meta.contains(&d.arn), "{meta}");
    let blocked = w.exec(
        &d.arn,
        "side",
        &format!("{GET}get http://169.254.169.254/index.html"),
    );
    assert!(
        !blocked.status.success() && !String::from_utf8_lossy(&blocked.stdout).contains(IMDS_TOKEN),
        "IMDS answered a task with ECS_AWSVPC_BLOCK_IMDS=true: {}",
        String::from_utf8_lossy(&blocked.stdout)
    );
    w.stop_and_check_released(&[&d], &agent).await;
}
