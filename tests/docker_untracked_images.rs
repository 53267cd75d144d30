//! Untracked image cleanup (`ECS_ENABLE_UNTRACKED_IMAGE_CLEANUP`) against a real Docker engine:
//! images the engine did not pull are removed when old enough and unused, while an image any
//! container uses (a task's running one, or a stopped container the engine never created) and an
//! excluded `name:tag` stay.
//!
//! Untracked cleanup removes images the engine knows nothing about, so it runs on a private
//! engine (`common/private_docker.rs`) holding only images this test made: never on the shared
//! engine, whose images other tests use.

#[path = "common/docker.rs"]
mod common;
#[path = "common/private_docker.rs"]
mod private_docker;

use std::time::{Duration, Instant};

use common::*;
use ecs_hostd::config::PullBehavior;
use ecs_hostd::tasks::{ReportStatus, TaskControl};
use private_docker::{PrivateDocker, shared_engine_answers};

const WAIT: Duration = Duration::from_secs(60);

/// A new image with its own id, derived from `base` by a commit with a label.
fn derived(pd: &PrivateDocker, base: &str, run: &str, tag: &str) -> String {
    let cid = pd.run(&[
        "create",
        "--label",
        &format!("{TEST_LABEL}={run}"),
        base,
        "true",
    ]);
    let id = pd.run(&[
        "commit",
        "--change",
        &format!("LABEL {TEST_LABEL}.image={tag}"),
        &cid,
        tag,
    ]);
    pd.run(&["rm", &cid]);
    id
}

fn exists(pd: &PrivateDocker, reference: &str) -> bool {
    pd.cli()
        .args(["image", "inspect", reference])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removes_old_unused_untracked_images_and_keeps_used_and_excluded_ones() {
    let image = test_image();
    let pd = PrivateDocker::start(false);
    pd.load_image(&image);
    let run = run_id("untracked");
    let a = derived(&pd, &image, &run, "ehd-untracked/a:1");
    let b = derived(&pd, &image, &run, "ehd-untracked/b:1");
    let keep = derived(&pd, &image, &run, "ehd-untracked/keep:1");
    let used = derived(&pd, &image, &run, "ehd-untracked/used:1");
    // A container the engine did not create, never started: its image is in use all the same.
    let foreign = pd.run(&[
        "create",
        "--label",
        &format!("{TEST_LABEL}={run}"),
        "ehd-untracked/used:1",
        "true",
    ]);
    let base_id = pd.run(&["image", "inspect", "-f", "{{.Id}}", &image]);

    let mut s = settings();
    s.engine.image_pull_behavior = PullBehavior::Once;
    s.engine.untracked_image_cleanup = true;
    s.engine.non_ecs_image_minimum_cleanup_age = Duration::ZERO;
    s.engine.exclude_untracked_images = vec!["ehd-untracked/keep:1".into()];
    s.engine.image_cleanup_interval = Duration::from_secs(1);
    let r = start_on(s, pd.client()).await;
    // A running task on the base image: in use (and named by a live task).
    let t = format!("arn:aws:ecs:us-east-1:123456789012:task/test/{run}");
    let mut task = task(
        &t,
        "untracked",
        vec![container(
            &run,
            "main",
            &image,
            &[
                "sh",
                "-c",
                "trap 'exit 0' TERM; while true; do sleep 0.1; done",
            ],
            true,
            serde_json::json!({}),
        )],
    );
    task["networkMode"] = serde_json::json!("none");
    r.engine.deliver(task).await.unwrap();
    r.wait_changes("RUNNING", WAIT, |c| {
        task_reached(c, &t, ReportStatus::Running)
    })
    .await;

    let start = Instant::now();
    while exists(&pd, &a) || exists(&pd, &b) {
        assert!(
            start.elapsed() < WAIT,
            "untracked unused images were not removed:\n{}",
            pd.run(&["images"])
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(exists(&pd, &keep), "an excluded image was removed");
    assert!(exists(&pd, "ehd-untracked/keep:1"));
    assert!(
        exists(&pd, &used),
        "an image a stopped foreign container uses was removed"
    );
    assert!(
        exists(&pd, &base_id) && exists(&pd, &image),
        "the running task's image was removed"
    );
    assert!(
        pd.run(&["ps", "-aq", "--no-trunc"]).contains(&foreign),
        "a container the engine did not create was removed"
    );

    r.engine.stop(&t).await.unwrap();
    r.wait_changes("STOPPED", WAIT, |c| {
        task_reached(c, &t, ReportStatus::Stopped)
    })
    .await;
    r.shutdown().await;
    drop(pd);
    assert!(shared_engine_answers());
}
