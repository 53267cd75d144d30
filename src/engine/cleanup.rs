//! Cleanup policy (spec §9): which images pulled by the engine may be deleted, and whether the
//! Docker data filesystem is under pressure (beyond the official agent: past
//! `disk_cleanup_threshold_percent`, stopped tasks and unused images are cleaned at once instead
//! of waiting for their timers).
//!
//! With `ECS_ENABLE_UNTRACKED_IMAGE_CLEANUP`, [`untracked_to_delete`] also picks images the
//! engine did not pull (as the official agent's non-ECS image cleanup: by `name:tag`, older than
//! `NON_ECS_IMAGE_MINIMUM_CLEANUP_AGE` since the image was created, smallest first, within what
//! is left of `ECS_NUM_IMAGES_DELETE_PER_CYCLE`). Unlike the official agent it never removes
//! containers it did not create, so an image any container uses stays.
//!
//! Task cleanup timing itself is decided in `reconcile.rs`. This module is pure except
//! [`disk_used_percent`], which calls statvfs. Never picks an image any container uses (running
//! or not, ours or not), one a live task names, or one on the exclusion list; never picks an
//! image it did not pull unless untracked cleanup is on.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Cleanup errors.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// statvfs failed.
    #[error("cannot read filesystem usage of {path}: {source}")]
    Statvfs {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

impl CleanupError {
    /// A filesystem that cannot be read now may be readable later.
    pub fn is_retryable(&self) -> bool {
        true
    }
}

/// An image the engine pulled (persisted), for image cleanup.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Reference as the task names it.
    pub image: String,
    /// Image id when known.
    pub image_id: Option<String>,
    /// Epoch seconds of the last pull.
    pub pulled_at: f64,
    /// Epoch seconds a container last used it.
    pub last_used_at: f64,
}

/// Image cleanup knobs (official keys).
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePolicy {
    /// `ECS_IMAGE_MINIMUM_CLEANUP_AGE`.
    pub min_age: Duration,
    /// `ECS_NUM_IMAGES_DELETE_PER_CYCLE`.
    pub per_cycle: usize,
    /// `ECS_EXCLUDE_UNTRACKED_IMAGE` (and anything else never to delete).
    pub excluded: Vec<String>,
}

/// Picks images to delete, least recently used first: pulled by us, not used by any container,
/// not excluded, older than the minimum age (ignored under disk pressure).
pub fn images_to_delete(
    records: &[ImageRecord],
    in_use_ids: &HashSet<String>,
    referenced: &HashSet<String>,
    now: f64,
    policy: &ImagePolicy,
    pressure: bool,
) -> Vec<ImageRecord> {
    let mut candidates: Vec<&ImageRecord> = records
        .iter()
        .filter(|r| !policy.excluded.iter().any(|e| e == &r.image))
        .filter(|r| !referenced.contains(&r.image))
        .filter(|r| {
            r.image_id
                .as_ref()
                .is_none_or(|id| !in_use_ids.contains(id))
        })
        .filter(|r| pressure || r.pulled_at + policy.min_age.as_secs_f64() <= now)
        .collect();
    candidates.sort_by(|a, b| a.last_used_at.total_cmp(&b.last_used_at));
    candidates
        .into_iter()
        .take(policy.per_cycle.max(1))
        .cloned()
        .collect()
}

/// An image as Docker lists it, for untracked image cleanup.
#[derive(Clone, Debug, PartialEq)]
pub struct DockerImage {
    /// `sha256:...`.
    pub id: String,
    /// `name:tag` references (none for a dangling image).
    pub tags: Vec<String>,
    /// Epoch seconds the image was created (built or imported).
    pub created: f64,
    /// Bytes.
    pub size: i64,
}

/// Untracked image cleanup knobs.
#[derive(Clone, Debug, PartialEq)]
pub struct UntrackedPolicy {
    /// `NON_ECS_IMAGE_MINIMUM_CLEANUP_AGE`, counted from the image's creation.
    pub min_age: Duration,
    /// `ECS_EXCLUDE_UNTRACKED_IMAGE`.
    pub excluded: Vec<String>,
    /// What is left of `ECS_NUM_IMAGES_DELETE_PER_CYCLE` after the tracked images.
    pub budget: usize,
}

/// A reference in the form Docker lists tags: `docker.io/library/` and `docker.io/` dropped,
/// `:latest` added when the last path segment has no tag. Digest references stay as they are.
pub fn normalize_reference(reference: &str) -> String {
    let r = reference
        .strip_prefix("docker.io/library/")
        .or_else(|| reference.strip_prefix("docker.io/"))
        .unwrap_or(reference);
    if r.contains('@') {
        return r.to_owned();
    }
    let last = r.rsplit('/').next().unwrap_or(r);
    if last.contains(':') {
        r.to_owned()
    } else {
        format!("{r}:latest")
    }
}

/// Picks untracked `name:tag` references to remove, smallest image first (as the official agent),
/// at most `budget`: not of an image the engine pulled (by id or reference), not of an image any
/// container uses, not named by a live task, not excluded, and created at least `min_age` ago.
/// Dangling images (no tag) are left alone, as upstream. An image with several tags yields one
/// entry per tag (removing one untags it).
pub fn untracked_to_delete(
    images: &[DockerImage],
    tracked: &[ImageRecord],
    in_use_ids: &HashSet<String>,
    referenced: &HashSet<String>,
    now: f64,
    policy: &UntrackedPolicy,
) -> Vec<String> {
    let UntrackedPolicy {
        min_age,
        excluded,
        budget,
    } = policy;
    let tracked_ids: HashSet<&str> = tracked
        .iter()
        .filter_map(|r| r.image_id.as_deref())
        .collect();
    let protected: HashSet<String> = tracked
        .iter()
        .map(|r| normalize_reference(&r.image))
        .chain(referenced.iter().map(|r| normalize_reference(r)))
        .chain(excluded.iter().map(|r| normalize_reference(r)))
        .collect();
    // A task naming an image by digest protects every tag of that repository.
    let protected_repos: HashSet<&str> = protected
        .iter()
        .filter_map(|r| r.split_once('@').map(|(repo, _)| repo))
        .collect();
    let mut candidates: Vec<&DockerImage> = images
        .iter()
        .filter(|i| !i.tags.is_empty())
        .filter(|i| !in_use_ids.contains(&i.id) && !tracked_ids.contains(i.id.as_str()))
        .filter(|i| {
            !i.tags.iter().any(|t| {
                let t = normalize_reference(t);
                let repo = t.rsplit_once(':').map_or(t.as_str(), |(repo, _)| repo);
                protected.contains(&t) || protected_repos.contains(repo)
            })
        })
        .filter(|i| i.created + min_age.as_secs_f64() <= now)
        .collect();
    candidates.sort_by(|a, b| a.size.cmp(&b.size).then(a.created.total_cmp(&b.created)));
    candidates
        .into_iter()
        .flat_map(|i| i.tags.iter().cloned())
        .take(*budget)
        .collect()
}

/// Used space of the filesystem holding `path`, in percent (as `df` computes it: used /
/// (used + available to unprivileged users)).
pub fn disk_used_percent(path: &Path) -> Result<f64, CleanupError> {
    let s = rustix::fs::statvfs(path).map_err(|e| CleanupError::Statvfs {
        path: path.display().to_string(),
        source: e.into(),
    })?;
    let used = s.f_blocks.saturating_sub(s.f_bfree) as f64;
    let avail = s.f_bavail as f64;
    if used + avail <= 0.0 {
        return Ok(0.0);
    }
    Ok(used * 100.0 / (used + avail))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(image: &str, id: &str, pulled: f64, used: f64) -> ImageRecord {
        ImageRecord {
            image: image.into(),
            image_id: Some(id.into()),
            pulled_at: pulled,
            last_used_at: used,
        }
    }

    #[test]
    fn picks_old_unused_images_lru_first_within_budget() {
        let records = vec![
            rec("a", "sha:a", 0.0, 50.0),
            rec("b", "sha:b", 0.0, 10.0),
            rec("c", "sha:c", 0.0, 20.0),
            rec("young", "sha:y", 990.0, 0.0),
            rec("busy", "sha:busy", 0.0, 0.0),
            rec("keep", "sha:k", 0.0, 0.0),
            rec("wanted", "sha:w", 0.0, 0.0),
        ];
        let policy = ImagePolicy {
            min_age: Duration::from_secs(100),
            per_cycle: 2,
            excluded: vec!["keep".into()],
        };
        let in_use: HashSet<String> = ["sha:busy".to_string()].into();
        let referenced: HashSet<String> = ["wanted".to_string()].into();
        let got: Vec<String> =
            images_to_delete(&records, &in_use, &referenced, 1000.0, &policy, false)
                .into_iter()
                .map(|r| r.image)
                .collect();
        assert_eq!(got, vec!["b", "c"]);
        let policy = ImagePolicy {
            per_cycle: 10,
            ..policy
        };
        let got: Vec<String> =
            images_to_delete(&records, &in_use, &referenced, 1000.0, &policy, true)
                .into_iter()
                .map(|r| r.image)
                .collect();
        assert_eq!(
            got,
            vec!["young", "b", "c", "a"],
            "pressure ignores the minimum age"
        );
    }

    fn img(id: &str, tags: &[&str], created: f64, size: i64) -> DockerImage {
        DockerImage {
            id: id.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            created,
            size,
        }
    }

    #[test]
    fn normalizes_references_as_docker_lists_tags() {
        assert_eq!(normalize_reference("busybox"), "busybox:latest");
        assert_eq!(
            normalize_reference("docker.io/library/busybox:1"),
            "busybox:1"
        );
        assert_eq!(normalize_reference("docker.io/me/x"), "me/x:latest");
        assert_eq!(
            normalize_reference("127.0.0.1:5000/a/b"),
            "127.0.0.1:5000/a/b:latest"
        );
        assert_eq!(
            normalize_reference("127.0.0.1:5000/a/b:2"),
            "127.0.0.1:5000/a/b:2"
        );
        assert_eq!(normalize_reference("x@sha256:ab"), "x@sha256:ab");
    }

    #[test]
    fn untracked_cleanup_spares_used_tracked_referenced_excluded_and_young_images() {
        let images = vec![
            img("sha256:old-big", &["old/big:1"], 0.0, 900),
            img("sha256:old-small", &["old/small:1", "alias:1"], 0.0, 10),
            img("sha256:mid", &["mid:1"], 0.0, 500),
            img("sha256:used", &["used:1"], 0.0, 1),
            img("sha256:stopped-user", &["stopped/user:1"], 0.0, 1),
            img("sha256:pulled", &["other-name-of-pulled:1"], 0.0, 1),
            img("sha256:pulled2", &["reg/pulled:2"], 0.0, 1),
            img("sha256:wanted", &["wanted:latest"], 0.0, 1),
            img("sha256:bydigest", &["pinned:3"], 0.0, 1),
            img("sha256:keep", &["keep:7"], 0.0, 1),
            img("sha256:young", &["young:1"], 950.0, 1),
            img("sha256:dangling", &[], 0.0, 1),
        ];
        let tracked = vec![
            rec("reg/pulled:1", "sha256:pulled", 0.0, 0.0),
            ImageRecord {
                image: "reg/pulled:2".into(),
                image_id: None,
                pulled_at: 0.0,
                last_used_at: 0.0,
            },
        ];
        // Containers of any state, ours or not, count as users.
        let in_use: HashSet<String> =
            ["sha256:used".to_string(), "sha256:stopped-user".to_string()].into();
        let referenced: HashSet<String> = [
            "docker.io/library/wanted".to_string(),
            "pinned@sha256:00".to_string(),
        ]
        .into();
        let policy = |min_age, budget| UntrackedPolicy {
            min_age: Duration::from_secs(min_age),
            excluded: vec!["keep:7".to_string()],
            budget,
        };
        let pick = |budget| {
            untracked_to_delete(
                &images,
                &tracked,
                &in_use,
                &referenced,
                1000.0,
                &policy(100, budget),
            )
        };
        assert_eq!(
            pick(10),
            vec!["old/small:1", "alias:1", "mid:1", "old/big:1"],
            "smallest first, one entry per tag"
        );
        assert_eq!(
            pick(3),
            vec!["old/small:1", "alias:1", "mid:1"],
            "within the budget"
        );
        assert!(pick(0).is_empty());
        let none = untracked_to_delete(
            &images,
            &tracked,
            &in_use,
            &referenced,
            1000.0,
            &policy(1001, 10),
        );
        assert!(
            none.is_empty(),
            "all younger than the minimum age: {none:?}"
        );
    }

    #[test]
    fn disk_usage_of_root_is_a_percentage() {
        let p = disk_used_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&p), "{p}");
        assert!(disk_used_percent(Path::new("/definitely/not/here")).is_err());
    }
}
