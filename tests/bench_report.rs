//! Unit tests of the benchmarks' arithmetic and budget table (`benches/support/report.rs`),
//! compiled here so `cargo test --all-targets` runs them (bench targets have no test harness).

#[path = "../benches/support/report.rs"]
mod report;
