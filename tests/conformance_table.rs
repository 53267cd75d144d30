//! Keeps `docs/container-definitions.md` and the code in step (issue 20).
//!
//! The members come from the `aws-sdk-ecs` types themselves (each builder's `Debug` names every
//! field), so a member the SDK adds, or a row for one it removed, fails here. Every row has a
//! verdict; every mapped row names tests that exist; every refusal fragment in the table is a task
//! that `engine::features` refuses, so a feature cannot be implemented (or dropped) without the
//! table saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use aws_sdk_ecs::types::builders::*;
use ecs_hostd::engine::docker::merge;
use ecs_hostd::engine::features::{Available, unsupported};
use serde_json::{Value, json};

const TABLE: &str = "docs/container-definitions.md";

/// Every type of the table with its builder's `Debug` text.
fn sdk_types() -> Vec<(&'static str, String)> {
    vec![
        (
            "TaskDefinition",
            format!("{:?}", TaskDefinitionBuilder::default()),
        ),
        (
            "ContainerDefinition",
            format!("{:?}", ContainerDefinitionBuilder::default()),
        ),
        ("Volume", format!("{:?}", VolumeBuilder::default())),
        (
            "HostVolumeProperties",
            format!("{:?}", HostVolumePropertiesBuilder::default()),
        ),
        (
            "DockerVolumeConfiguration",
            format!("{:?}", DockerVolumeConfigurationBuilder::default()),
        ),
        (
            "EfsVolumeConfiguration",
            format!("{:?}", EfsVolumeConfigurationBuilder::default()),
        ),
        (
            "EfsAuthorizationConfig",
            format!("{:?}", EfsAuthorizationConfigBuilder::default()),
        ),
        (
            "FSxWindowsFileServerVolumeConfiguration",
            format!(
                "{:?}",
                FSxWindowsFileServerVolumeConfigurationBuilder::default()
            ),
        ),
        (
            "FSxWindowsFileServerAuthorizationConfig",
            format!(
                "{:?}",
                FSxWindowsFileServerAuthorizationConfigBuilder::default()
            ),
        ),
        (
            "S3FilesVolumeConfiguration",
            format!("{:?}", S3FilesVolumeConfigurationBuilder::default()),
        ),
        (
            "TaskDefinitionPlacementConstraint",
            format!("{:?}", TaskDefinitionPlacementConstraintBuilder::default()),
        ),
        ("Attribute", format!("{:?}", AttributeBuilder::default())),
        (
            "ProxyConfiguration",
            format!("{:?}", ProxyConfigurationBuilder::default()),
        ),
        (
            "KeyValuePair",
            format!("{:?}", KeyValuePairBuilder::default()),
        ),
        (
            "InferenceAccelerator",
            format!("{:?}", InferenceAcceleratorBuilder::default()),
        ),
        (
            "EphemeralStorage",
            format!("{:?}", EphemeralStorageBuilder::default()),
        ),
        (
            "RuntimePlatform",
            format!("{:?}", RuntimePlatformBuilder::default()),
        ),
        (
            "RepositoryCredentials",
            format!("{:?}", RepositoryCredentialsBuilder::default()),
        ),
        (
            "PortMapping",
            format!("{:?}", PortMappingBuilder::default()),
        ),
        (
            "ContainerRestartPolicy",
            format!("{:?}", ContainerRestartPolicyBuilder::default()),
        ),
        (
            "EnvironmentFile",
            format!("{:?}", EnvironmentFileBuilder::default()),
        ),
        ("MountPoint", format!("{:?}", MountPointBuilder::default())),
        ("VolumeFrom", format!("{:?}", VolumeFromBuilder::default())),
        (
            "LinuxParameters",
            format!("{:?}", LinuxParametersBuilder::default()),
        ),
        (
            "KernelCapabilities",
            format!("{:?}", KernelCapabilitiesBuilder::default()),
        ),
        ("Device", format!("{:?}", DeviceBuilder::default())),
        ("Tmpfs", format!("{:?}", TmpfsBuilder::default())),
        ("Secret", format!("{:?}", SecretBuilder::default())),
        (
            "ContainerDependency",
            format!("{:?}", ContainerDependencyBuilder::default()),
        ),
        ("HostEntry", format!("{:?}", HostEntryBuilder::default())),
        ("Ulimit", format!("{:?}", UlimitBuilder::default())),
        (
            "LogConfiguration",
            format!("{:?}", LogConfigurationBuilder::default()),
        ),
        (
            "HealthCheck",
            format!("{:?}", HealthCheckBuilder::default()),
        ),
        (
            "SystemControl",
            format!("{:?}", SystemControlBuilder::default()),
        ),
        (
            "ResourceRequirement",
            format!("{:?}", ResourceRequirementBuilder::default()),
        ),
        (
            "FirelensConfiguration",
            format!("{:?}", FirelensConfigurationBuilder::default()),
        ),
    ]
}

/// The API's name of a Rust field (`memory_reservation` → `memoryReservation`).
fn api_name(field: &str) -> String {
    let field = field.strip_prefix("r#").unwrap_or(field);
    let mut out = String::new();
    let mut upper = false;
    for ch in field.chars() {
        if ch == '_' {
            upper = true;
        } else if upper {
            out.extend(ch.to_uppercase());
            upper = false;
        } else {
            out.push(ch);
        }
    }
    // The API's own capitalisation where the SDK's snake case loses it.
    match out.as_str() {
        "sizeInGib" => "sizeInGiB".into(),
        _ => out,
    }
}

/// `Type.member` for every field a builder's `Debug` text names.
fn members_of(ty: &str, debug: &str) -> Vec<String> {
    let body = debug
        .split_once(" { ")
        .and_then(|(_, b)| b.strip_suffix(" }"))
        .unwrap_or_else(|| panic!("unexpected Debug text for {ty}: {debug}"));
    // Values are `None` or a redaction string (builders are empty); neither holds ", ".
    body.split(", ")
        .map(|pair| {
            let (field, _) = pair
                .split_once(": ")
                .unwrap_or_else(|| panic!("unexpected field text {pair:?} in {ty}"));
            format!("{ty}.{}", api_name(field))
        })
        .collect()
}

#[derive(Debug)]
struct Row {
    verdict: String,
    what: String,
    proof: String,
}

fn rows(text: &str) -> BTreeMap<String, Row> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.trim_matches('|').split(" | ").map(str::trim).collect();
        assert_eq!(cells.len(), 4, "a row needs 4 cells: {line}");
        let member = cells[0].trim_matches('`').to_owned();
        let row = Row {
            verdict: cells[1].to_owned(),
            what: cells[2].to_owned(),
            proof: cells[3].to_owned(),
        };
        assert!(
            out.insert(member.clone(), row).is_none(),
            "{member} has two rows"
        );
    }
    out
}

/// The backticked spans of a cell.
fn spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// The task an ACS fragment `task: {...}` or `container: {...}` describes.
fn task_of(fragment: &str) -> Option<Value> {
    let (scope, body) = fragment.split_once(": ")?;
    if !matches!(scope, "task" | "container") {
        return None;
    }
    let body: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("fragment {fragment:?} is not JSON: {e}"));
    let mut t = json!({"arn": "arn:aws:ecs:us-east-1:1:task/c/t", "family": "f", "version": "1",
        "desiredStatus": "RUNNING",
        "containers": [{"name": "app", "image": "busybox", "essential": true}]});
    match scope {
        "task" => merge(&mut t, &body),
        _ => merge(&mut t["containers"][0], &body),
    }
    Some(t)
}

/// Whether `path::function` names a function defined in that file.
fn test_exists(reference: &str) -> bool {
    let Some((path, function)) = reference.split_once("::") else {
        return false;
    };
    let Ok(source) = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
    else {
        return false;
    };
    source.contains(&format!("fn {function}("))
}

#[test]
fn the_table_lists_every_member_of_the_sdk_types_once() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(TABLE))
        .expect("docs/container-definitions.md");
    let table = rows(&text);
    let sdk: BTreeSet<String> = sdk_types()
        .iter()
        .flat_map(|(ty, debug)| members_of(ty, debug))
        .collect();
    assert!(sdk.len() > 150, "the SDK types gave {} members", sdk.len());
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    let missing: Vec<_> = sdk.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&sdk).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "{TABLE} is out of step with aws-sdk-ecs: missing rows {missing:?}, rows for no member {stale:?}"
    );

    let mut by_verdict: BTreeMap<&str, usize> = BTreeMap::new();
    for (member, row) in &table {
        *by_verdict.entry(row.verdict.as_str()).or_default() += 1;
        assert!(
            matches!(row.verdict.as_str(), "mapped" | "refused" | "n/a"),
            "{member}: verdict {:?}",
            row.verdict
        );
        assert!(!row.what.is_empty(), "{member}: say what it becomes or why");
    }
    println!("rows by verdict: {by_verdict:?}");
}

#[test]
fn every_mapped_row_names_tests_that_exist() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(TABLE)).unwrap();
    for (member, row) in rows(&text).iter().filter(|(_, r)| r.verdict == "mapped") {
        let tests = spans(&row.proof);
        assert!(!tests.is_empty(), "{member}: a mapped row names its tests");
        for t in tests {
            assert!(
                test_exists(t),
                "{member}: {t} is not a test function of this repository"
            );
        }
    }
}

#[test]
fn every_refusal_in_the_table_is_refused_by_the_engine() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(TABLE)).unwrap();
    let table = rows(&text);
    // What the host could make available does not change what is refused here.
    let available = Available {
        task_roles: true,
        task_roles_network_host: true,
        execution_role_awslogs: true,
        // awsvpc is refused where the app wired no task network (not in a VPC, no pause
        // image, ECS_ENABLE_TASK_ENI=false): the table's fragment is that case (issue 22).
        awsvpc: false,
    };
    let mut checked = 0;
    for (member, row) in &table {
        let fragments: Vec<Value> = spans(&row.what).into_iter().filter_map(task_of).collect();
        for task in &fragments {
            let refusal = unsupported(task, &available).unwrap_or_else(|| {
                panic!(
                    "{member}: the table says this is refused, but the engine would run it: {task}"
                )
            });
            assert!(!refusal.field.is_empty(), "{member}: {refusal}");
            checked += 1;
        }
        if row.verdict == "refused" && fragments.is_empty() {
            // Refused with its parent: `with <Type.member>`, which carries the fragment.
            let parent = spans(&row.what)
                .into_iter()
                .find(|s| table.contains_key(*s))
                .unwrap_or_else(|| {
                    panic!(
                        "{member}: a refused row gives an ACS fragment or names the row that does"
                    )
                });
            let p = &table[parent];
            assert!(
                p.verdict == "refused" && spans(&p.what).into_iter().any(|s| task_of(s).is_some()),
                "{member}: {parent} is not a refused row with a fragment"
            );
        }
    }
    assert!(checked >= 10, "only {checked} refusals checked");
}

/// The fragments must not be refused merely for being malformed: a plain task runs.
#[test]
fn a_plain_task_is_not_refused() {
    let plain = task_of(r#"task: {}"#).unwrap();
    assert_eq!(unsupported(&plain, &Available::default()), None);
}
