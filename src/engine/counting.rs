//! Counts what the engine asks of its container runtime, call by call.
//!
//! [`Counting`] wraps any [`ContainerRuntime`] and counts each call by operation before passing
//! it on unchanged; [`DockerCalls`] reads the counts and renders them on `/metrics` as
//! `ecs_hostd_docker_requests_total{op="..."}`. A loop that re-issues the same call shows up
//! here (and in the tests and benchmarks that read these counts) even when every task ends well.
//!
//! Also marks [`DockerCalls::answered`] when a listing succeeds, for the watchdog. Owns the
//! counters only; never changes, retries or delays a call.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bollard::auth::DockerCredentials;
use bollard::models::ContainerCreateBody;
use futures_util::stream::BoxStream;

use crate::engine::runtime::{
    ContainerRuntime, ImageInfo, Observed, PullLimits, RuntimeError, Summary, VolumeRequest,
};

/// The runtime's operations, in `/metrics` order.
pub const OPS: [&str; 16] = [
    "list",
    "inspect",
    "image",
    "pull",
    "inspect_volume",
    "create_volume",
    "create",
    "start",
    "stop",
    "remove",
    "remove_volume",
    "remove_image",
    "images_in_use",
    "list_images",
    "data_root",
    "events",
];

/// Calls made so far, per operation of [`OPS`].
#[derive(Debug, Default)]
pub struct DockerCalls {
    counts: [AtomicU64; OPS.len()],
    /// When a `list` last succeeded.
    pub answered: crate::docker::Answered,
}

impl DockerCalls {
    /// No calls yet; a successful `list` marks `answered` (shared with the watchdog).
    pub fn answering(answered: crate::docker::Answered) -> DockerCalls {
        DockerCalls {
            answered,
            ..Default::default()
        }
    }

    fn bump(&self, op: &str) {
        if let Some(i) = OPS.iter().position(|o| *o == op) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls of `op` so far (0 for an unknown name).
    pub fn get(&self, op: &str) -> u64 {
        OPS.iter()
            .position(|o| *o == op)
            .map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Every call so far.
    pub fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// `(op, calls)` for every operation.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        OPS.iter().map(|o| (*o, self.get(o))).collect()
    }
}

impl crate::api::MetricsSection for DockerCalls {
    fn render(&self, out: &mut String) {
        out.push_str("# HELP ecs_hostd_docker_requests_total Calls the task engine made to Docker, by operation.\n");
        out.push_str("# TYPE ecs_hostd_docker_requests_total counter\n");
        for (op, n) in self.snapshot() {
            out.push_str(&format!(
                "ecs_hostd_docker_requests_total{{op=\"{op}\"}} {n}\n"
            ));
        }
    }
}

/// A runtime that counts every call into [`DockerCalls`].
pub struct Counting {
    inner: Arc<dyn ContainerRuntime>,
    calls: Arc<DockerCalls>,
}

impl Counting {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ContainerRuntime>) -> Counting {
        Counting {
            inner,
            calls: Arc::new(DockerCalls::default()),
        }
    }

    /// Wraps `inner`, counting into `calls` (shared with whoever reads them).
    pub fn with_calls(inner: Arc<dyn ContainerRuntime>, calls: Arc<DockerCalls>) -> Counting {
        Counting { inner, calls }
    }

    /// The counts (shared; they keep counting).
    pub fn calls(&self) -> Arc<DockerCalls> {
        self.calls.clone()
    }
}

#[async_trait]
impl ContainerRuntime for Counting {
    async fn list(&self) -> Result<Vec<Summary>, RuntimeError> {
        self.calls.bump("list");
        let listed = self.inner.list().await;
        if listed.is_ok() {
            self.calls.answered.mark();
        }
        listed
    }
    async fn inspect(&self, id_or_name: &str) -> Result<Option<Observed>, RuntimeError> {
        self.calls.bump("inspect");
        self.inner.inspect(id_or_name).await
    }
    async fn image(&self, image: &str) -> Result<Option<ImageInfo>, RuntimeError> {
        self.calls.bump("image");
        self.inner.image(image).await
    }
    async fn pull(
        &self,
        image: &str,
        auth: Option<DockerCredentials>,
        limits: PullLimits,
    ) -> Result<(), RuntimeError> {
        self.calls.bump("pull");
        self.inner.pull(image, auth, limits).await
    }
    async fn inspect_volume(&self, name: &str) -> Result<Option<VolumeRequest>, RuntimeError> {
        self.calls.bump("inspect_volume");
        self.inner.inspect_volume(name).await
    }
    async fn create_volume(&self, v: &VolumeRequest) -> Result<(), RuntimeError> {
        self.calls.bump("create_volume");
        self.inner.create_volume(v).await
    }
    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, RuntimeError> {
        self.calls.bump("create");
        self.inner.create(name, body).await
    }
    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.calls.bump("start");
        self.inner.start(id).await
    }
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.calls.bump("stop");
        self.inner.stop(id, grace).await
    }
    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.calls.bump("remove");
        self.inner.remove(id).await
    }
    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        self.calls.bump("remove_volume");
        self.inner.remove_volume(name).await
    }
    async fn remove_image(&self, image: &str) -> Result<(), RuntimeError> {
        self.calls.bump("remove_image");
        self.inner.remove_image(image).await
    }
    async fn images_in_use(&self) -> Result<HashSet<String>, RuntimeError> {
        self.calls.bump("images_in_use");
        self.inner.images_in_use().await
    }
    async fn list_images(&self) -> Result<Vec<crate::engine::cleanup::DockerImage>, RuntimeError> {
        self.calls.bump("list_images");
        self.inner.list_images().await
    }
    async fn data_root(&self) -> Result<Option<std::path::PathBuf>, RuntimeError> {
        self.calls.bump("data_root");
        self.inner.data_root().await
    }
    fn events(&self) -> BoxStream<'static, Result<(), RuntimeError>> {
        self.calls.bump("events");
        self.inner.events()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MetricsSection;
    use crate::engine::runtime::FakeRuntime;

    #[tokio::test]
    async fn every_call_is_counted_by_operation_and_rendered() {
        let c = Counting::new(Arc::new(FakeRuntime::with_images(&[])));
        c.list().await.unwrap();
        c.list().await.unwrap();
        let _ = c.inspect("nope").await;
        let _ = c.stop("nope", Duration::ZERO).await;
        let calls = c.calls();
        assert_eq!(
            (calls.get("list"), calls.get("inspect"), calls.get("stop")),
            (2, 1, 1)
        );
        assert_eq!(calls.total(), 4);
        let mut text = String::new();
        calls.render(&mut text);
        assert!(
            text.contains("ecs_hostd_docker_requests_total{op=\"list\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("ecs_hostd_docker_requests_total{op=\"create\"} 0\n"));
    }
}
