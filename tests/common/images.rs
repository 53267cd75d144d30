//! The test images `scripts/world.sh` builds once per machine with a content-hash tag.
#![allow(dead_code)]

use std::process::Command;

/// Image `repo`: the value of `var` when set (CI and world.sh export it), else the newest local
/// tag. Fails the test when neither exists.
pub fn world_image(var: &str, repo: &str) -> String {
    if let Ok(i) = std::env::var(var) {
        return i;
    }
    let out = Command::new("docker")
        .args(["images", repo, "--format", "{{.Tag}}"])
        .output()
        .expect("docker images");
    let tag = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned();
    assert!(
        !tag.is_empty(),
        "{repo} is missing: run `bash -c 'source scripts/world.sh; world_setup'`"
    );
    format!("{repo}:{tag}")
}
