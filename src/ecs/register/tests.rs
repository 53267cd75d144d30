//! Registration flow against fakes (the real ECS path is covered by tests/aws_registration.rs).

use super::*;
use crate::aws::ErrorKind;
use crate::ecs::RegisteredInstance;
use crate::imds::{self, Identity, IdentityDocument};
use async_trait::async_trait;
use std::collections::VecDeque;
use std::sync::Mutex;

struct FakeImds {
    instance_id: String,
}

#[async_trait]
impl InstanceMetadata for FakeImds {
    async fn get(&self, _path: &str) -> Result<Option<String>, imds::Error> {
        unreachable!("identity() is overridden")
    }
    async fn identity(&self) -> Result<Identity, imds::Error> {
        Ok(Identity {
            document: IdentityDocument {
                instance_id: self.instance_id.clone(),
                instance_type: "c5.xlarge".into(),
                region: "us-east-1".into(),
                availability_zone: "us-east-1a".into(),
                account_id: "123456789012".into(),
                image_id: "ami-1".into(),
                private_ip: None,
            },
            raw_document: format!("{{\"instanceId\":\"{}\"}}", self.instance_id),
            signature: "sig".into(),
        })
    }
}

#[derive(Default)]
struct FakeEcs {
    requests: Mutex<Vec<RegisterRequest>>,
    script: Mutex<VecDeque<Result<(), ApiError>>>,
    created: Mutex<Vec<String>>,
    drop_attribute: Option<String>,
}

fn api_err(kind: ErrorKind, code: &str, msg: &str) -> ApiError {
    ApiError {
        operation: "RegisterContainerInstance",
        kind,
        code: Some(code.into()),
        message: msg.into(),
    }
}

#[async_trait]
impl EcsApi for FakeEcs {
    async fn register_container_instance(
        &self,
        req: &RegisterRequest,
    ) -> Result<RegisteredInstance, ApiError> {
        self.requests.lock().unwrap().push(req.clone());
        if let Some(r) = self.script.lock().unwrap().pop_front() {
            r?;
        }
        let n = self.requests.lock().unwrap().len();
        let mut attributes = req.attributes.clone();
        if let Some(drop) = &self.drop_attribute {
            attributes.retain(|a| &a.name != drop);
        }
        attributes.push(Attribute::pair("ecs.availability-zone", "us-east-1c"));
        Ok(RegisteredInstance {
            arn: req.container_instance_arn.clone().unwrap_or_else(|| {
                format!("arn:aws:ecs:us-east-1:123456789012:container-instance/c/{n}")
            }),
            attributes,
        })
    }
    async fn create_cluster(&self, name: &str) -> Result<(), ApiError> {
        self.created.lock().unwrap().push(name.into());
        Ok(())
    }
    async fn cluster_status(&self, _cluster: &str) -> Result<Option<String>, ApiError> {
        Ok(Some("ACTIVE".into()))
    }
}

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    config: Config,
    host: HostFacts,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let config = Config {
        cluster: "prod".into(),
        ..Config::default()
    };
    World {
        _dir: dir,
        store,
        config,
        host: HostFacts {
            cpus: 2,
            mem_total_bytes: 4096 * 1024 * 1024,
            os_detailed: "debian_12".into(),
        },
    }
}

async fn register(w: &World, imds: &FakeImds, ecs: &FakeEcs) -> Result<Registration, Error> {
    let identity = read_identity(imds, &CancellationToken::new()).await?;
    Registrar {
        config: &w.config,
        identity: &identity,
        ecs,
        store: &w.store,
        host: &w.host,
        docker_api_version: Some("1.41".into()),
        features: attributes::IMPLEMENTED,
        volume_plugins: Vec::new(),
        vpc: None,
        retry: REGISTER_RETRY,
        give_up_after: REGISTER_GIVE_UP,
    }
    .register(&CancellationToken::new())
    .await
}

#[tokio::test]
async fn first_registration_sends_resources_and_persists() {
    let mut w = world();
    w.config.reserved_memory_mib = 96;
    w.config
        .instance_attributes
        .insert("stack".into(), "blue".into());
    w.config
        .container_instance_tags
        .insert("team".into(), "infra".into());
    let imds = FakeImds {
        instance_id: "i-1".into(),
    };
    let ecs = FakeEcs::default();
    let r = register(&w, &imds, &ecs).await.unwrap();
    let req = &ecs.requests.lock().unwrap()[0];
    assert_eq!(req.container_instance_arn, None);
    assert_eq!(req.resources.cpu, 2048);
    assert_eq!(req.resources.memory_mib, 4000);
    assert_eq!(req.resources.ports, vec![22, 2375, 2376, 51678, 51679]);
    assert!(req.attributes.contains(&Attribute::pair("stack", "blue")));
    assert_eq!(req.tags.get("team").map(String::as_str), Some("infra"));
    assert_eq!(req.identity_signature, "sig");
    assert!(uuid::Uuid::parse_str(&req.client_token).is_ok());
    assert_eq!(
        r.availability_zone, "us-east-1c",
        "taken from ECS's attribute"
    );
    assert_eq!(saved(&w.store).unwrap(), Some(r));
}

#[tokio::test]
async fn restart_reregisters_with_the_saved_arn_without_custom_attributes() {
    let mut w = world();
    w.config
        .instance_attributes
        .insert("stack".into(), "blue".into());
    let imds = FakeImds {
        instance_id: "i-1".into(),
    };
    let ecs = FakeEcs::default();
    let first = register(&w, &imds, &ecs).await.unwrap();
    let second = register(&w, &imds, &ecs).await.unwrap();
    assert_eq!(first.container_instance_arn, second.container_instance_arn);
    let reqs = ecs.requests.lock().unwrap();
    assert_eq!(
        reqs[1].container_instance_arn.as_deref(),
        Some(first.container_instance_arn.as_str())
    );
    assert!(
        !reqs[1]
            .attributes
            .contains(&Attribute::pair("stack", "blue"))
    );
    assert_ne!(reqs[0].client_token, reqs[1].client_token);
}

#[tokio::test]
async fn a_new_instance_id_registers_fresh() {
    let w = world();
    let ecs = FakeEcs::default();
    let a = register(
        &w,
        &FakeImds {
            instance_id: "i-1".into(),
        },
        &ecs,
    )
    .await
    .unwrap();
    let b = register(
        &w,
        &FakeImds {
            instance_id: "i-2".into(),
        },
        &ecs,
    )
    .await
    .unwrap();
    assert_ne!(a.container_instance_arn, b.container_instance_arn);
    assert_eq!(ecs.requests.lock().unwrap()[1].container_instance_arn, None);
    assert_eq!(saved(&w.store).unwrap().unwrap().ec2_instance_id, "i-2");
}

#[tokio::test]
async fn a_changed_cluster_is_terminal_and_says_what_to_do() {
    let mut w = world();
    let imds = FakeImds {
        instance_id: "i-1".into(),
    };
    let ecs = FakeEcs::default();
    register(&w, &imds, &ecs).await.unwrap();
    w.config.cluster = "other".into();
    let e = register(&w, &imds, &ecs).await.unwrap_err();
    assert!(e.is_terminal());
    let text = e.to_string();
    assert!(
        text.contains("\"prod\"") && text.contains("\"other\"") && text.contains("delete"),
        "{text}"
    );
    assert_eq!(ecs.requests.lock().unwrap().len(), 1, "no call made");
}

#[tokio::test]
async fn a_deregistered_instance_is_terminal() {
    let w = world();
    let imds = FakeImds {
        instance_id: "i-1".into(),
    };
    let ecs = FakeEcs::default();
    register(&w, &imds, &ecs).await.unwrap();
    ecs.script.lock().unwrap().push_back(Err(api_err(
        ErrorKind::Client,
        "ClientException",
        "Container instance arn:x is inactive.",
    )));
    let e = register(&w, &imds, &ecs).await.unwrap_err();
    assert!(e.is_terminal());
    assert!(e.to_string().contains("deregistered"), "{e}");
}

#[tokio::test]
async fn refused_attributes_are_terminal() {
    let mut w = world();
    w.config
        .instance_attributes
        .insert("bad attr".into(), "x".into());
    let ecs = FakeEcs {
        drop_attribute: Some("bad attr".into()),
        ..FakeEcs::default()
    };
    let e = register(
        &w,
        &FakeImds {
            instance_id: "i-1".into(),
        },
        &ecs,
    )
    .await
    .unwrap_err();
    assert!(e.is_terminal());
    assert!(e.to_string().contains("bad attr=x"), "{e}");
    assert_eq!(saved(&w.store).unwrap(), None, "nothing persisted");
}

#[tokio::test]
async fn the_default_cluster_is_created_when_missing() {
    let mut w = world();
    w.config.cluster = "default".into();
    let ecs = FakeEcs::default();
    ecs.script.lock().unwrap().push_back(Err(api_err(
        ErrorKind::Client,
        "ClusterNotFoundException",
        "Cluster not found.",
    )));
    register(
        &w,
        &FakeImds {
            instance_id: "i-1".into(),
        },
        &ecs,
    )
    .await
    .unwrap();
    assert_eq!(*ecs.created.lock().unwrap(), vec!["default".to_string()]);
}

#[tokio::test]
async fn a_missing_named_cluster_is_terminal() {
    let w = world();
    let ecs = FakeEcs::default();
    ecs.script.lock().unwrap().push_back(Err(api_err(
        ErrorKind::Client,
        "ClusterNotFoundException",
        "Cluster not found.",
    )));
    let e = register(
        &w,
        &FakeImds {
            instance_id: "i-1".into(),
        },
        &ecs,
    )
    .await
    .unwrap_err();
    assert!(
        e.is_terminal() && e.to_string().contains("does not exist"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_with_growing_backoff() {
    let w = world();
    let ecs = FakeEcs::default();
    for kind in [
        ErrorKind::Transport,
        ErrorKind::Throttled,
        ErrorKind::Server,
    ] {
        ecs.script
            .lock()
            .unwrap()
            .push_back(Err(api_err(kind, "X", "try later")));
    }
    let started = tokio::time::Instant::now();
    register(
        &w,
        &FakeImds {
            instance_id: "i-1".into(),
        },
        &ecs,
    )
    .await
    .unwrap();
    assert_eq!(ecs.requests.lock().unwrap().len(), 4);
    // 3 s + 6 s + 12 s of backoff, plus up to 20 % jitter each.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(21) && waited < Duration::from_secs(26),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_give_up_after_the_budget() {
    let w = world();
    let ecs = FakeEcs::default();
    for _ in 0..1000 {
        ecs.script.lock().unwrap().push_back(Err(api_err(
            ErrorKind::Server,
            "ServerException",
            "down",
        )));
    }
    let e = register(
        &w,
        &FakeImds {
            instance_id: "i-1".into(),
        },
        &ecs,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::GaveUp { .. }), "{e}");
    assert!(!e.is_terminal());
    let n = ecs.requests.lock().unwrap().len();
    assert!(
        (20..=40).contains(&n),
        "capped at 192 s per wait over an hour: {n}"
    );
}
