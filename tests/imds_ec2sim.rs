//! The IMDSv2 client against ec2sim's IMDS: token TTL and refresh, 401 handling, timeouts and the
//! total deadline, IMDSv1-only hosts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use ecs_hostd::imds::{Error, ImdsClient, InstanceMetadata};
use serde_json::json;

fn counters(sim: &Ec2Sim) -> serde_json::Value {
    sim.get("/ec2sim/instances/default/imds")
}

#[tokio::test]
async fn identity_matches_the_instance_in_ec2() {
    let sim = Ec2Sim::start();
    let c = ImdsClient::new(&sim.url());
    let id = c.identity().await.unwrap();
    assert_eq!(id.document.instance_id, sim.default_instance());
    assert_eq!(id.document.region, "us-east-1");
    assert!(!id.signature.is_empty());
    assert_eq!(
        c.require("latest/meta-data/instance-id").await.unwrap(),
        id.document.instance_id
    );
    assert_eq!(
        c.get("latest/meta-data/spot/instance-action")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn token_is_refreshed_before_it_expires() {
    let sim = Ec2Sim::start();
    sim.post(
        "/ec2sim/instances/default/imds",
        json!({"token_ttl_cap": 2}),
    );
    let c = ImdsClient::new(&sim.url());
    c.require("latest/meta-data/instance-id").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    c.require("latest/meta-data/instance-id").await.unwrap();
    let s = counters(&sim);
    assert_eq!(s["token_puts"], 2, "{s}");
    assert_eq!(s["unauthorized"], 0, "never sent an expired token: {s}");
}

#[tokio::test]
async fn a_401_gets_a_new_token() {
    let sim = Ec2Sim::start();
    let c = ImdsClient::new(&sim.url());
    c.require("latest/meta-data/instance-id").await.unwrap();
    sim.post(
        "/ec2sim/instances/default/imds",
        json!({"get_fault": "401-once"}),
    );
    c.require("latest/meta-data/instance-type").await.unwrap();
    let s = counters(&sim);
    assert_eq!(s["token_puts"], 2, "{s}");
    assert_eq!(s["unauthorized"], 1, "{s}");
}

#[tokio::test]
async fn hung_reads_time_out_within_the_deadline() {
    let sim = Ec2Sim::start();
    sim.post(
        "/ec2sim/instances/default/imds",
        json!({"get_fault": "timeout"}),
    );
    let c = ImdsClient::with_limits(
        &sim.url(),
        Duration::from_millis(300),
        Duration::from_secs(2),
        100,
    );
    let started = Instant::now();
    let e = c.get("latest/meta-data/instance-id").await.unwrap_err();
    assert!(matches!(e, Error::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("timed out"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_reported() {
    let sim = Ec2Sim::start();
    sim.post(
        "/ec2sim/instances/default/imds",
        json!({"get_fault": "500"}),
    );
    let c = ImdsClient::with_limits(
        &sim.url(),
        Duration::from_secs(1),
        Duration::from_secs(10),
        3,
    );
    let e = c.get("latest/meta-data/instance-id").await.unwrap_err();
    assert!(e.to_string().contains("3 attempts"), "{e}");
    assert_eq!(counters(&sim)["gets"], 3);
}

#[tokio::test]
async fn imdsv1_only_is_reported_and_no_tokenless_get_is_made() {
    let sim = Ec2Sim::start();
    sim.post(
        "/ec2sim/instances/default/imds",
        json!({"token_fault": "405"}),
    );
    let c = ImdsClient::new(&sim.url());
    let e = c.get("latest/meta-data/instance-id").await.unwrap_err();
    assert!(matches!(e, Error::V2Unavailable { status: 405, .. }), "{e}");
    assert_eq!(counters(&sim)["gets"], 0);
}

#[tokio::test]
async fn per_instance_imds_prefix_serves_that_instance() {
    let sim = Ec2Sim::start();
    let (id, imds) = sim.new_instance(json!({"instance_type": "m5.large"}));
    let c = ImdsClient::new(&imds);
    let doc = c.identity().await.unwrap().document;
    assert_eq!(doc.instance_id, id);
    assert_eq!(doc.instance_type, "m5.large");
}
