//! Idle counts that do not move between machines (issue 23): a process's CPU in nanoseconds
//! (`/proc/<pid>/task/*/schedstat`), its context switches (every wake-up is one), the requests it
//! sends Docker (through a counting proxy on a Unix socket of its own), and, for ecs-hostd, its
//! heap allocations (an `LD_PRELOAD` counter around glibc's malloc family).
//!
//! Works the same for any process, so the official agent is measured with the same tools.
//! Measures; never judges.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What one process has used so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// CPU time on all its threads, in nanoseconds.
    pub cpu_ns: u64,
    /// Voluntary and involuntary context switches of all its threads.
    pub switches: u64,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, o: Counts) -> Counts {
        Counts {
            cpu_ns: self.cpu_ns.saturating_sub(o.cpu_ns),
            switches: self.switches.saturating_sub(o.switches),
        }
    }
}

/// The process's counts, summed over its threads now alive. (A thread that exited takes its
/// counts with it; the agents keep their threads for life, so this is exact when idle.)
pub fn counts(pid: u32) -> Counts {
    let mut c = Counts::default();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return c;
    };
    for t in tasks.flatten() {
        let p = t.path();
        if let Ok(s) = std::fs::read_to_string(p.join("schedstat")) {
            c.cpu_ns += s
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        if let Ok(s) = std::fs::read_to_string(p.join("status")) {
            for line in s.lines() {
                if let Some(v) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    c.switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    c
}

/// A Unix socket that forwards to Docker's and counts the HTTP requests sent through it.
pub struct DockerProxy {
    /// Its socket, for `DOCKER_HOST=unix://…`.
    pub path: PathBuf,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

/// Counts request lines (`… HTTP/1.1\r\n`) in a client's byte stream, across reads.
#[derive(Default)]
struct RequestLines {
    tail: Vec<u8>,
}

const REQUEST_LINE_END: &[u8] = b" HTTP/1.1\r\n";

impl RequestLines {
    fn feed(&mut self, chunk: &[u8]) -> u64 {
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(chunk);
        let n = buf
            .windows(REQUEST_LINE_END.len())
            .filter(|w| *w == REQUEST_LINE_END)
            .count() as u64;
        let keep = buf.len().min(REQUEST_LINE_END.len() - 1);
        self.tail = buf[buf.len() - keep..].to_vec();
        n
    }
}

impl DockerProxy {
    /// A proxy to `/var/run/docker.sock`.
    pub fn start() -> DockerProxy {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("docker.sock");
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let count = Arc::new(AtomicU64::new(0));
        let c = count.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let c = c.clone();
                tokio::spawn(async move {
                    let Ok(docker) = tokio::net::UnixStream::connect("/var/run/docker.sock").await
                    else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut dr, mut dw) = docker.into_split();
                    let back = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut dr, &mut cw).await;
                    });
                    let mut lines = RequestLines::default();
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        match cr.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                c.fetch_add(lines.feed(&buf[..n]), Ordering::Relaxed);
                                if dw.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    let _ = dw.shutdown().await;
                    let _ = back.await;
                });
            }
        });
        DockerProxy {
            path,
            count,
            task,
            _dir: dir,
        }
    }

    /// `DOCKER_HOST` for a client of this proxy.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Requests forwarded so far.
    pub fn requests(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

impl Drop for DockerProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `LD_PRELOAD` allocation counter: built once per target dir with the system C compiler.
/// Every call to malloc, calloc, realloc, posix_memalign, aligned_alloc or memalign adds one to
/// a counter in a shared file (`ALLOC_COUNT_FILE`), then calls glibc's own.
pub struct AllocCounter {
    /// The library, for `LD_PRELOAD`.
    pub library: PathBuf,
    /// The counter file, for `ALLOC_COUNT_FILE`.
    pub file: PathBuf,
    _dir: tempfile::TempDir,
}

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
static uint64_t *count;
__attribute__((constructor)) static void init(void) {
    const char *p = getenv("ALLOC_COUNT_FILE");
    if (!p) return;
    int fd = open(p, O_RDWR | O_CREAT, 0600);
    if (fd < 0) return;
    if (ftruncate(fd, 8) == 0) {
        void *m = mmap(0, 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m != MAP_FAILED) count = m;
    }
    close(fd);
}
static inline void bump(void) { if (count) __atomic_fetch_add(count, 1, __ATOMIC_RELAXED); }
void *malloc(size_t n) { bump(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { bump(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { bump(); return __libc_realloc(p, n); }
void *aligned_alloc(size_t a, size_t n) { bump(); return __libc_memalign(a, n); }
void *memalign(size_t a, size_t n) { bump(); return __libc_memalign(a, n); }
int posix_memalign(void **r, size_t a, size_t n) {
    bump();
    void *p = __libc_memalign(a, n);
    if (!p) return ENOMEM;
    *r = p;
    return 0;
}
"#;

impl AllocCounter {
    /// Builds the library (if this target dir has none yet) and a fresh counter file.
    pub fn new(target_dir: &Path) -> AllocCounter {
        let library = target_dir.join("alloc-count.so");
        let source = target_dir.join("alloc-count.c");
        if std::fs::read_to_string(&source).ok().as_deref() != Some(SHIM) || !library.exists() {
            std::fs::write(&source, SHIM).unwrap();
            let out = std::process::Command::new("cc")
                .args(["-shared", "-fPIC", "-O2", "-o"])
                .arg(&library)
                .arg(&source)
                .output()
                .expect("cc (the allocation counter is built with the system C compiler)");
            assert!(
                out.status.success(),
                "building the allocation counter: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dir = tempfile::tempdir().unwrap();
        AllocCounter {
            library,
            file: dir.path().join("count"),
            _dir: dir,
        }
    }

    /// Allocations counted so far (0 before the process started).
    pub fn get(&self) -> u64 {
        std::fs::read(&self.file)
            .ok()
            .and_then(|b| {
                b.get(..8)
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap()))
            })
            .unwrap_or(0)
    }
}
