//! awsvpc against the fake runtime and the fake task network: the ENI found, then provisioned
//! into the network pause's namespace before any user container exists; released after the
//! user containers stopped and before the pause stops; a restart mid-way neither leaks nor
//! repeats a step.

use super::*;
use crate::engine::model::internal::{DEFAULT_PAUSE_IMAGE, NETWORK_PAUSE_NAME};
use crate::engine::net::awsvpc::NetError;
use crate::engine::runtime::FakeTaskNetwork;

const MAC: &str = "0a:1b:2c:3d:4e:5f";

struct Net {
    r: Rig,
    net: Arc<FakeTaskNetwork>,
}

fn net_settings(net: &Arc<FakeTaskNetwork>) -> Settings {
    let mut s = settings(Duration::from_secs(3 * 3600));
    s.task_network = Some(net.clone());
    s
}

fn net_rig() -> Net {
    let fake = Arc::new(FakeRuntime::with_images(&[DEFAULT_PAUSE_IMAGE]));
    let net = Arc::new(FakeTaskNetwork::paired(fake.clone()));
    Net {
        r: rig_with(fake, net_settings(&net)),
        net,
    }
}

fn awsvpc_task(arn: &str) -> serde_json::Value {
    let mut web = c("web", true);
    web["portMappings"] = serde_json::json!([{"containerPort": 8080, "hostPort": 8080}]);
    let mut t = task(arn, serde_json::json!([web, c("side", false)]));
    t["networkMode"] = "awsvpc".into();
    t["elasticNetworkInterfaces"] = serde_json::json!([{
        "attachmentArn": format!("arn:aws:ecs:us-east-1:1:attachment/{arn}"),
        "ec2Id": "eni-0abc",
        "macAddress": MAC.to_ascii_uppercase(),
        "ipv4Addresses": [{"privateAddress": "10.0.1.23", "primary": true}],
        "subnetGatewayIpv4Address": "10.0.1.1/24",
        "domainNameServers": ["10.0.0.2"],
        "privateDnsName": "ip-10-0-1-23.ec2.internal"
    }]);
    t
}

fn attachments(changes: &[TaskChange]) -> Vec<(String, String)> {
    changes
        .iter()
        .flat_map(|c| &c.attachments)
        .map(|a| (a.attachment_arn.clone(), a.status.clone()))
        .collect()
}

/// The index in the runtime's history of the first event `what` of container `name`.
fn first(r: &Rig, what: &str, name: &str) -> usize {
    r.fake
        .history()
        .iter()
        .position(|e| e.what == what && e.container == name)
        .unwrap_or_else(|| panic!("no {what} of {name}: {:?}", r.fake.history()))
}

fn net_call(n: &Net, what: &str) -> crate::engine::runtime::FakeNetCall {
    n.net
        .calls()
        .into_iter()
        .find(|c| c.what == what)
        .unwrap_or_else(|| panic!("no {what}: {:?}", n.net.calls()))
}

#[tokio::test]
async fn without_a_task_network_awsvpc_is_refused() {
    let r = rig_with(
        Arc::new(FakeRuntime::with_images(&[DEFAULT_PAUSE_IMAGE])),
        settings(Duration::from_secs(3600)),
    );
    deliver(&r.engine, awsvpc_task("t")).await.unwrap();
    r.engine.settle(10).await.unwrap();
    assert!(r.fake.creates().is_empty());
    let last = r.sink.changes().pop().unwrap();
    assert_eq!(last.status, ReportStatus::Stopped);
    assert!(
        last.reason.as_deref().unwrap().contains("awsvpc"),
        "{last:?}"
    );
}

#[tokio::test]
async fn a_bad_eni_is_refused_at_delivery_naming_the_field() {
    let n = net_rig();
    let mut t = awsvpc_task("t");
    t["elasticNetworkInterfaces"][0]["subnetGatewayIpv4Address"] = "10.0.1.1".into();
    let err = deliver(&n.r.engine, t).await.unwrap_err();
    assert!(
        err.contains("elasticNetworkInterfaces[0].subnetGatewayIpv4Address"),
        "{err}"
    );
    let mut t = awsvpc_task("t2");
    t["elasticNetworkInterfaces"] = serde_json::json!([]);
    let err = deliver(&n.r.engine, t).await.unwrap_err();
    assert!(err.contains("has none"), "{err}");
    assert!(n.r.fake.creates().is_empty());
}

#[tokio::test]
async fn the_eni_is_provisioned_before_any_user_container_and_released_before_the_pause_stops() {
    let n = net_rig();
    deliver(&n.r.engine, awsvpc_task("t")).await.unwrap();
    n.r.engine.settle(20).await.unwrap();
    // The ENI is not there yet: the pause runs, nothing else is created, nothing reported.
    let created: Vec<String> =
        n.r.fake
            .created_labels()
            .into_iter()
            .map(|(_, c)| c)
            .collect();
    assert_eq!(created, vec![NETWORK_PAUSE_NAME.to_owned()]);
    assert_eq!(n.net.count("provision"), 0);
    assert!(n.net.count("find") >= 1);
    assert!(attachments(&n.r.sink.changes()).is_empty());

    // ECS attaches it; the next look finds it.
    n.net.appear(MAC, "eth1");
    n.r.engine.advance_clock(1.0);
    n.r.engine.settle(20).await.unwrap();
    assert!(n.net.in_task(MAC));
    let prov = net_call(&n, "provision");
    let pause = n.r.fake.containers()[&fake_name(&n.r, "t", NETWORK_PAUSE_NAME)].clone();
    assert_eq!(
        prov.pid, pause.observed.pid,
        "the pause container's process"
    );
    assert_eq!(prov.bridge, Some(std::net::Ipv4Addr::new(169, 254, 172, 2)));
    assert!(prov.runtime_events <= first(&n.r, "create", "web"));
    assert!(prov.runtime_events <= first(&n.r, "create", "side"));
    assert!(prov.runtime_events > first(&n.r, "start", NETWORK_PAUSE_NAME));

    // What Docker was asked: the pause holds the network's settings, users join it.
    assert_eq!(pause.network_mode.as_deref(), Some("none"));
    assert_eq!(pause.hostname.as_deref(), Some("ip-10-0-1-23.ec2.internal"));
    assert_eq!(pause.dns, vec!["10.0.0.2".to_owned()]);
    let web = n.r.fake.containers()[&fake_name(&n.r, "t", "web")].clone();
    assert_eq!(
        web.network_mode,
        Some(format!("container:{}", pause.observed.id))
    );
    assert!(!web.port_bindings, "awsvpc publishes nothing on the host");
    assert_eq!(web.hostname, None);

    // Reported: ATTACHED once, the task RUNNING, the web port on the ENI with hostPort = port;
    // never the pause.
    let changes = n.r.sink.changes();
    assert_eq!(
        attachments(&changes),
        vec![(
            "arn:aws:ecs:us-east-1:1:attachment/t".to_owned(),
            "ATTACHED".to_owned()
        )]
    );
    assert_eq!(statuses(&changes, "t"), vec![ReportStatus::Running]);
    let bindings: Vec<_> = changes
        .iter()
        .flat_map(|c| &c.containers)
        .filter(|c| c.container_name == "web" && c.status == ReportStatus::Running)
        .flat_map(|c| c.network_bindings.clone())
        .collect();
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(bindings[0].host_port, Some(8080));
    assert_eq!(bindings[0].container_port, Some(8080));
    assert_eq!(bindings[0].bind_ip, "10.0.1.23");
    assert!(
        changes
            .iter()
            .flat_map(|c| &c.containers)
            .all(|c| c.container_name != NETWORK_PAUSE_NAME)
    );

    // Stop: users first, then the release, then the pause.
    stop(&n.r.engine, "t").await.unwrap();
    n.r.engine.settle(20).await.unwrap();
    assert!(!n.net.in_task(MAC));
    let rel = net_call(&n, "release");
    assert_eq!(
        rel.pid, pause.observed.pid,
        "released through the running pause"
    );
    assert!(rel.runtime_events > first(&n.r, "stop", "web"));
    assert!(rel.runtime_events > first(&n.r, "stop", "side"));
    assert!(rel.runtime_events <= first(&n.r, "stop", NETWORK_PAUSE_NAME));
    assert_eq!(n.net.count("release"), 1);
    assert_eq!(n.net.count("provision"), 1);
    assert_eq!(
        statuses(&n.r.sink.changes(), "t"),
        vec![ReportStatus::Running, ReportStatus::Stopped]
    );
    assert_eq!(attachments(&n.r.sink.changes()).len(), 1, "ATTACHED once");
}

#[tokio::test]
async fn an_eni_that_never_appears_stops_the_task_naming_it() {
    let n = net_rig();
    deliver(&n.r.engine, awsvpc_task("t")).await.unwrap();
    for _ in 0..40 {
        n.r.engine.advance_clock(1.0);
        n.r.engine.settle(5).await.unwrap();
    }
    let last = n.r.sink.changes().pop().unwrap();
    assert_eq!(last.status, ReportStatus::Stopped);
    assert_eq!(
        last.reason.as_deref(),
        Some("ENI eni-0abc (0a:1b:2c:3d:4e:5f) did not appear on this instance within 30 s")
    );
    // Looked about once a second, never provisioned, nothing to release; no user container.
    let finds = n.net.count("find");
    assert!((25..=35).contains(&finds), "{finds} looks");
    assert_eq!(n.net.count("provision"), 0);
    assert_eq!(n.net.count("release"), 0);
    let created: Vec<String> =
        n.r.fake
            .created_labels()
            .into_iter()
            .map(|(_, c)| c)
            .collect();
    assert_eq!(created, vec![NETWORK_PAUSE_NAME.to_owned()]);
    assert!(attachments(&n.r.sink.changes()).is_empty());
    // The pause stopped too.
    let pause = &n.r.fake.containers()[&fake_name(&n.r, "t", NETWORK_PAUSE_NAME)];
    assert_eq!(pause.observed.state, Some(State::Exited));
}

#[tokio::test]
async fn a_failed_provision_is_retried_then_stops_the_task_and_releases() {
    let n = net_rig();
    n.net.appear(MAC, "eth1");
    let kernel = || NetError::Kernel {
        what: "move link".into(),
        source: std::io::Error::other("EBUSY"),
    };
    n.net.fail_provision(vec![kernel(), kernel(), kernel()]);
    deliver(&n.r.engine, awsvpc_task("t")).await.unwrap();
    for _ in 0..10 {
        n.r.engine.settle(10).await.unwrap();
        n.r.engine.advance_clock(5.0);
    }
    assert_eq!(n.net.count("provision"), 3);
    let last = n.r.sink.changes().pop().unwrap();
    assert_eq!(last.status, ReportStatus::Stopped);
    let reason = last.reason.unwrap();
    assert!(
        reason.starts_with("ENI eni-0abc (0a:1b:2c:3d:4e:5f) could not be set up: move link"),
        "{reason}"
    );
    // A bridge address was chosen, so something may exist: released once.
    assert_eq!(n.net.count("release"), 1);
    let created: Vec<String> =
        n.r.fake
            .created_labels()
            .into_iter()
            .map(|(_, c)| c)
            .collect();
    assert_eq!(created, vec![NETWORK_PAUSE_NAME.to_owned()]);
}

#[tokio::test]
async fn a_failed_release_is_retried_and_the_pause_waits_for_it() {
    let n = net_rig();
    n.net.appear(MAC, "eth1");
    deliver(&n.r.engine, awsvpc_task("t")).await.unwrap();
    n.r.engine.settle(20).await.unwrap();
    n.net.fail_release(2);
    stop(&n.r.engine, "t").await.unwrap();
    n.r.engine.settle(20).await.unwrap();
    let pause_name = fake_name(&n.r, "t", NETWORK_PAUSE_NAME);
    assert_eq!(
        n.r.fake.containers()[&pause_name].observed.state,
        Some(State::Running),
        "the pause keeps the namespace until the ENI is back"
    );
    for _ in 0..5 {
        n.r.engine.advance_clock(5.0);
        n.r.engine.settle(20).await.unwrap();
    }
    assert_eq!(n.net.count("release"), 3);
    assert!(!n.net.in_task(MAC));
    assert_eq!(
        n.r.fake.containers()[&pause_name].observed.state,
        Some(State::Exited)
    );
    assert_eq!(
        statuses(&n.r.sink.changes(), "t"),
        vec![ReportStatus::Running, ReportStatus::Stopped]
    );
}

#[tokio::test]
async fn a_restart_after_provision_neither_provisions_again_nor_forgets_the_release() {
    let n = net_rig();
    n.net.appear(MAC, "eth1");
    deliver(&n.r.engine, awsvpc_task("t")).await.unwrap();
    n.r.engine.settle(20).await.unwrap();
    assert_eq!(n.net.count("provision"), 1);
    // kill -9; a new agent on the same store.
    let sink2 = Arc::new(RecordingSink::default());
    let engine2 = build(&n.r.fake, &sink2, &n.r.store, net_settings(&n.net));
    engine2.settle(20).await.unwrap();
    assert_eq!(n.net.count("provision"), 1, "provisioned once");
    assert!(
        attachments(&sink2.changes()).is_empty(),
        "ATTACHED not repeated"
    );
    let (r, s) = tokio::join!(engine2.stop("t"), engine2.settle(20));
    r.unwrap();
    s.unwrap();
    engine2.settle(20).await.unwrap();
    assert_eq!(n.net.count("release"), 1);
    assert!(!n.net.in_task(MAC));
}

#[tokio::test]
async fn a_crash_between_choosing_the_bridge_and_recording_the_provision_is_released_at_start() {
    let fake = Arc::new(FakeRuntime::with_images(&[DEFAULT_PAUSE_IMAGE]));
    let net = Arc::new(FakeTaskNetwork::paired(fake.clone()));
    let mut s = net_settings(&net);
    // The first agent dies inside the provision (after the kernel did it, before the record).
    s.engine.container_stop_timeout = Duration::from_secs(1);
    let dir = tmpdir();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let sink = Arc::new(RecordingSink::default());
    let mut p = parts(&fake, &sink, &store, s.clone());
    p.hooks = Hooks {
        pause_at: Some("network.after".into()),
        marker_dir: None,
    };
    let engine = Engine::new(p).unwrap();
    net.appear(MAC, "eth1");
    let (r, _) = tokio::join!(engine.deliver(awsvpc_task("t")), async {
        let _ = tokio::time::timeout(Duration::from_millis(500), engine.settle(20)).await;
    });
    r.unwrap();
    assert_eq!(net.count("provision"), 1);
    assert!(net.in_task(MAC));
    drop(engine);
    // While the agent is away the pause dies (the task cannot run any more).
    let pause = fake
        .containers()
        .values()
        .find(|c| c.observed.container_name.as_deref() == Some(NETWORK_PAUSE_NAME))
        .unwrap()
        .observed
        .name
        .clone();
    fake.exit(&pause, 137);
    let sink2 = Arc::new(RecordingSink::default());
    let engine2 = build(&fake, &sink2, &store, s);
    engine2.settle(20).await.unwrap();
    assert_eq!(net.count("release"), 1, "{:?}", net.calls());
    let rel = net
        .calls()
        .into_iter()
        .find(|c| c.what == "release")
        .unwrap();
    assert_eq!(rel.pid, None, "the namespace is gone with the pause");
    assert!(!net.in_task(MAC));
    // No user container was ever created.
    assert!(
        fake.created_labels()
            .iter()
            .all(|(_, c)| c == NETWORK_PAUSE_NAME)
    );
    let last = sink2.changes().pop().unwrap();
    assert_eq!(last.status, ReportStatus::Stopped);
    assert!(
        last.reason
            .as_deref()
            .unwrap()
            .contains("network pause container"),
        "{last:?}"
    );
}

#[tokio::test]
async fn two_tasks_get_two_bridge_addresses() {
    let n = net_rig();
    n.net.appear(MAC, "eth1");
    n.net.appear("0a:1b:2c:3d:4e:60", "eth2");
    deliver(&n.r.engine, awsvpc_task("t1")).await.unwrap();
    let mut t2 = awsvpc_task("t2");
    t2["elasticNetworkInterfaces"][0]["macAddress"] = "0a:1b:2c:3d:4e:60".into();
    deliver(&n.r.engine, t2).await.unwrap();
    n.r.engine.settle(20).await.unwrap();
    let mut bridges: Vec<_> = n
        .net
        .calls()
        .into_iter()
        .filter(|c| c.what == "provision")
        .filter_map(|c| c.bridge)
        .collect();
    bridges.sort();
    assert_eq!(
        bridges,
        vec![
            std::net::Ipv4Addr::new(169, 254, 172, 2),
            std::net::Ipv4Addr::new(169, 254, 172, 3)
        ]
    );
}

#[tokio::test]
async fn the_attachment_gives_the_wait_and_survives_a_restart_once() {
    let n = net_rig();
    let attachment = crate::tasks::EniAttachment {
        attachment_arn: "arn:aws:ecs:us-east-1:1:attachment/t".into(),
        task_arn: "t".into(),
        mac: MAC.into(),
        wait_timeout_ms: Some(5_000),
    };
    let (r, s) = tokio::join!(
        n.r.engine.attach_eni(attachment.clone()),
        n.r.engine.settle(1)
    );
    r.unwrap();
    s.unwrap();
    let stored: Vec<(String, store::AttachmentRecord)> =
        n.r.store.list(store::ENI_ATTACHMENTS).unwrap();
    assert_eq!(stored.len(), 1, "persisted before the answer");
    let first = stored[0].1.clone();
    assert_eq!(first.expires_at - first.received_at, 5.0);

    // A restarted agent (same store) gets the duplicate: nothing changes.
    let sink2 = Arc::new(RecordingSink::default());
    let engine2 = build(&n.r.fake, &sink2, &n.r.store, net_settings(&n.net));
    n.r.engine.advance_clock(0.0);
    let (r, s) = tokio::join!(engine2.attach_eni(attachment), engine2.settle(1));
    r.unwrap();
    s.unwrap();
    let stored: Vec<(String, store::AttachmentRecord)> =
        n.r.store.list(store::ENI_ATTACHMENTS).unwrap();
    assert_eq!(
        stored,
        vec![(first.attachment.attachment_arn.clone(), first)]
    );

    // The task, delivered after, waits the attachment's 5 s, not the default 30.
    deliver(&engine2, awsvpc_task("t")).await.unwrap();
    for _ in 0..8 {
        engine2.advance_clock(1.0);
        engine2.settle(5).await.unwrap();
    }
    let last = sink2.changes().pop().unwrap();
    assert_eq!(last.status, ReportStatus::Stopped);
    assert_eq!(
        last.reason.as_deref(),
        Some("ENI eni-0abc (0a:1b:2c:3d:4e:5f) did not appear on this instance within 5 s")
    );
}

/// What the engine publishes for an awsvpc task driven through the fake network: every user
/// container's metadata and `/v1/tasks` entry carry the ENI (v4: its properties; v3 and
/// `/v1/tasks`: its addresses), its ports are on the ENI with host port = container port, and
/// the network pause appears nowhere.
#[tokio::test]
async fn a_running_awsvpc_task_publishes_its_eni_in_metadata_and_v1_tasks() {
    let n = net_rig();
    n.net.appear(MAC, "eth1");
    deliver(&n.r.engine, awsvpc_task("t")).await.unwrap();
    n.r.engine.settle(20).await.unwrap();
    assert_eq!(
        statuses(&n.r.sink.changes(), "t"),
        vec![ReportStatus::Running]
    );

    let index = n.r.engine.view().snapshot().metadata.clone();
    assert_eq!(index.tasks.len(), 1);
    let task = &index.tasks[0];
    let names: Vec<&str> = task.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["web", "side"], "the pause is not the task's");
    assert_eq!(
        index.by_endpoint.len(),
        2,
        "no endpoint id for the pause either"
    );
    for c in &task.containers {
        let f = c
            .awsvpc
            .as_deref()
            .unwrap_or_else(|| panic!("{}: no ENI", c.name));
        assert_eq!(f.ipv4, vec!["10.0.1.23".to_owned()]);
        assert_eq!(f.mac, MAC);
        assert_eq!(f.ipv4_subnet_cidr.as_deref(), Some("10.0.1.0/24"));
        assert_eq!(f.subnet_gateway_ipv4.as_deref(), Some("10.0.1.1/24"));
        assert_eq!(f.dns_servers, vec!["10.0.0.2".to_owned()]);
        assert_eq!(
            f.private_dns_name.as_deref(),
            Some("ip-10-0-1-23.ec2.internal")
        );
        assert!(
            c.networks.is_empty(),
            "{}: no Docker network of its own",
            c.name
        );
    }

    // Rendered as a container sees it through its own endpoint id.
    let web = &task.containers[0];
    let (_, found) = index.find(&web.endpoint_id).unwrap();
    let v4: serde_json::Value =
        serde_json::from_slice(&crate::task_endpoint::metadata::container_body(found, true))
            .unwrap();
    assert_eq!(
        v4["Networks"],
        serde_json::json!([{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.0.1.23"],
            "AttachmentIndex": 0, "MACAddress": MAC, "IPv4SubnetCIDRBlock": "10.0.1.0/24",
            "DomainNameServers": ["10.0.0.2"], "PrivateDNSName": "ip-10-0-1-23.ec2.internal",
            "SubnetGatewayIpv4Address": "10.0.1.1/24"}])
    );
    assert_eq!(
        v4["Ports"],
        serde_json::json!([{"ContainerPort": 8080, "Protocol": "tcp", "HostPort": 8080,
            "HostIp": "10.0.1.23"}])
    );
    let v3: serde_json::Value = serde_json::from_slice(
        &crate::task_endpoint::metadata::container_body(found, false),
    )
    .unwrap();
    assert_eq!(
        v3["Networks"],
        serde_json::json!([{"NetworkMode": "awsvpc", "IPv4Addresses": ["10.0.1.23"]}])
    );

    let tasks = n.r.engine.view().tasks();
    let shown: Vec<&str> = tasks[0]
        .containers
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(shown, ["web", "side"]);
    for c in &tasks[0].containers {
        assert_eq!(c.networks.len(), 1, "{}", c.name);
        assert_eq!(c.networks[0].network_mode, "awsvpc");
        assert_eq!(c.networks[0].ipv4_addresses, vec!["10.0.1.23".to_owned()]);
    }
    assert_eq!(tasks[0].containers[0].ports.len(), 1);
    assert_eq!(tasks[0].containers[0].ports[0].host_port, 8080);
}

/// The running loop with a task network that does (or does not) offer host link events, an
/// awsvpc task waiting for its ENI for 300 s, and the loop's first look done.
async fn waiting_loop(events: bool) -> (Net, CancellationToken, tokio::task::JoinHandle<()>) {
    let fake = Arc::new(FakeRuntime::with_images(&[DEFAULT_PAUSE_IMAGE]));
    let mut net = FakeTaskNetwork::paired(fake.clone());
    if events {
        net = net.with_link_events();
    }
    let net = Arc::new(net);
    let n = Net {
        r: rig_with(fake, net_settings(&net)),
        net,
    };
    let cancel = CancellationToken::new();
    let run = tokio::spawn({
        let (e, c) = (n.r.engine.clone(), cancel.clone());
        async move { e.run(c).await.unwrap() }
    });
    n.r.engine
        .attach_eni(crate::tasks::EniAttachment {
            attachment_arn: "arn:aws:ecs:us-east-1:1:attachment/t".into(),
            task_arn: "t".into(),
            mac: MAC.into(),
            wait_timeout_ms: Some(300_000),
        })
        .await
        .unwrap();
    n.r.engine.deliver(awsvpc_task("t")).await.unwrap();
    within(Duration::from_secs(5), "the first look", || {
        n.net.count("find") >= 1
    })
    .await;
    (n, cancel, run)
}

/// Waits (tokio time) until `f` holds, at most `limit`.
async fn within(limit: Duration, what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(limit, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within {limit:?}: {what}"));
}

/// `secs` seconds pass, on the engine's clock and on tokio's together, one at a time.
async fn pass(n: &Net, secs: u32) {
    for _ in 0..secs {
        n.r.engine.advance_clock(1.0);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn with_link_events_the_eni_is_found_at_the_event_and_otherwise_looked_for_every_30_s() {
    let (n, cancel, run) = waiting_loop(true).await;
    // A long wait with no link change: the 30 s reconcile, not a look per second.
    pass(&n, 100).await;
    let finds = n.net.count("find");
    assert!((3..=5).contains(&finds), "{finds} looks in 100 s");

    // The link is there but no event came (yet): the next reconcile is more than 5 s away.
    n.net.appear(MAC, "eth1");
    pass(&n, 5).await;
    assert_eq!(n.net.count("find"), finds, "no poll");
    assert!(!n.net.in_task(MAC));

    // The event: looked for at once (the engine's clock stands still) and provisioned.
    n.net.link_event();
    within(Duration::from_secs(1), "found at the event", || {
        n.net.in_task(MAC)
    })
    .await;
    assert_eq!(n.net.count("find"), finds + 1, "one look for one event");
    assert_eq!(
        attachments(&n.r.sink.changes()),
        vec![(
            "arn:aws:ecs:us-east-1:1:attachment/t".to_owned(),
            "ATTACHED".to_owned()
        )]
    );
    cancel.cancel();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_link_events_costs_a_bounded_number_of_looks() {
    let (n, cancel, run) = waiting_loop(true).await;
    let before = n.net.count("find");
    // 200 unrelated link changes (other tasks' veths, links going up and down) in 10 s.
    for _ in 0..10 {
        for _ in 0..20 {
            n.net.link_event();
        }
        pass(&n, 1).await;
    }
    let looks = n.net.count("find") - before;
    assert!(
        (1..=20).contains(&looks),
        "{looks} looks for 200 events in 10 s: at most one per wake-up"
    );
    cancel.cancel();
    run.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn without_link_events_or_once_they_end_the_eni_is_polled_for_every_second() {
    let (n, cancel, run) = waiting_loop(false).await;
    let before = n.net.count("find");
    pass(&n, 20).await;
    let polls = n.net.count("find") - before;
    assert!((15..=25).contains(&polls), "{polls} looks in 20 s");
    cancel.cancel();
    run.await.unwrap();

    let (n, cancel, run) = waiting_loop(true).await;
    n.net.end_link_events();
    let before = n.net.count("find");
    pass(&n, 20).await;
    let polls = n.net.count("find") - before;
    assert!(
        (15..=25).contains(&polls),
        "{polls} looks in 20 s after the events ended"
    );
    n.net.appear(MAC, "eth1");
    pass(&n, 2).await;
    assert!(n.net.in_task(MAC), "the poll finds it");
    cancel.cancel();
    run.await.unwrap();
}
