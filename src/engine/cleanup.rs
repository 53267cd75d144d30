//! Cleanup policy (spec §9): which images pulled by the engine may be deleted, and whether the
//! Docker data filesystem is under pressure (beyond the official agent: past
//! `disk_cleanup_threshold_percent`, stopped tasks and unused images are cleaned at once instead
//! of waiting for their timers).
//!
//! Task cleanup timing itself is decided in `reconcile.rs`. This module is pure except
//! [`disk_used_percent`], which calls statvfs. Never deletes an image it did not pull, one any
//! container uses, or one on the exclusion list.

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

    #[test]
    fn disk_usage_of_root_is_a_percentage() {
        let p = disk_used_percent(Path::new("/")).unwrap();
        assert!((0.0..=100.0).contains(&p), "{p}");
        assert!(disk_used_percent(Path::new("/definitely/not/here")).is_err());
    }
}
