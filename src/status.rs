//! `ecs-hostd status`: asks the running agent's local API what it reports and prints it for an
//! operator. Read-only; exits 3 (the LSB "not running" code) when nothing answers.
//!
//! The report is written in one piece at the end, and a reader that closes the pipe early
//! (`ecs-hostd status | grep -q ...`, `| head -3`) ends it quietly instead of a panic on the
//! broken pipe.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

/// Prints the agent's metadata, health and tasks; returns the exit code.
pub async fn print(addr: SocketAddr) -> u8 {
    let mut out = String::new();
    let code = report(addr, &mut out).await;
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Ok(()) => code,
        // The reader has what it wanted and left: not our failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => code,
        Err(e) => {
            eprintln!("ecs-hostd status: cannot write to stdout: {e}");
            1
        }
    }
}

/// Asks the local API and writes the report into `out`; returns the exit code. Writing into a
/// `String` cannot fail, so the `writeln!` results are ignored.
async fn report(addr: SocketAddr, out: &mut String) -> u8 {
    let http = match reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ecs-hostd status: {e}");
            return 1;
        }
    };
    let get = |path: &str| {
        let url = format!("http://{addr}{path}");
        let http = http.clone();
        async move {
            let resp = http.get(&url).send().await?;
            resp.json::<serde_json::Value>().await
        }
    };
    let meta = match get("/v1/metadata").await {
        Ok(m) => m,
        Err(e) => {
            let _ = writeln!(out, "ecs-hostd is not running (no answer on {addr}: {e})");
            return 3;
        }
    };
    let _ = writeln!(
        out,
        "version:   {}",
        meta["Version"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "cluster:   {}",
        meta["Cluster"].as_str().unwrap_or("?")
    );
    let _ = writeln!(
        out,
        "instance:  {}",
        meta["ContainerInstanceArn"]
            .as_str()
            .unwrap_or("(not registered)")
    );
    if let Ok(h) = get("/healthz").await {
        let healthy = h["healthy"].as_bool().unwrap_or(false);
        let _ = writeln!(out, "healthy:   {}", if healthy { "yes" } else { "NO" });
        if let Some(components) = h["components"].as_object() {
            for (name, c) in components {
                let mark = if c["ok"].as_bool().unwrap_or(false) {
                    "ok  "
                } else {
                    "FAIL"
                };
                let _ = writeln!(
                    out,
                    "  {mark} {name}: {}",
                    c["detail"].as_str().unwrap_or("")
                );
            }
        }
    }
    if let Ok(t) = get("/v1/tasks").await {
        let tasks = t["Tasks"].as_array().cloned().unwrap_or_default();
        let _ = writeln!(out, "tasks:     {}", tasks.len());
        for task in tasks {
            let _ = writeln!(
                out,
                "  {} {}:{} {}",
                task["KnownStatus"].as_str().unwrap_or("?"),
                task["Family"].as_str().unwrap_or("?"),
                task["Version"].as_str().unwrap_or("?"),
                task["Arn"].as_str().unwrap_or("?")
            );
        }
    }
    0
}
