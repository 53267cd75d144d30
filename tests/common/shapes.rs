//! Task shapes taken from real task definitions, shared by the tests that run them.
#![allow(dead_code)]

/// Issue 24's ten-container graph: `(name, dependsOn START, links)`. Every container depends on
/// and links to what it needs, except gateway, which depends on the eight others and links to
/// six of them; the chain is two deep (user → session → redis, history → user).
pub const LINKED_GRAPH: [(&str, &[&str], &[&str]); 10] = [
    ("redis", &[], &[]),
    ("session", &["redis"], &["redis"]),
    ("question", &["redis"], &["redis"]),
    ("matchmaker", &["redis"], &["redis"]),
    ("matching", &["redis"], &["redis"]),
    ("user", &["session"], &["session"]),
    (
        "history",
        &["user", "question", "redis"],
        &["user", "question", "redis"],
    ),
    (
        "collab",
        &["redis", "question", "history"],
        &["redis", "question", "history"],
    ),
    ("frontend", &[], &[]),
    (
        "gateway",
        &[
            "session",
            "question",
            "matchmaker",
            "matching",
            "user",
            "history",
            "collab",
            "frontend",
        ],
        &[
            "session",
            "question",
            "matchmaker",
            "matching",
            "user",
            "history",
        ],
    ),
];
