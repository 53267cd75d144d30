//! `ecs-hostd status`: asks the running agent's local API what it reports and prints it for an
//! operator. Read-only; exits 3 (the LSB "not running" code) when nothing answers.

use std::net::SocketAddr;
use std::time::Duration;

/// Prints the agent's metadata, health and tasks; returns the exit code.
pub async fn print(addr: SocketAddr) -> u8 {
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
            println!("ecs-hostd is not running (no answer on {addr}: {e})");
            return 3;
        }
    };
    println!("version:   {}", meta["Version"].as_str().unwrap_or("?"));
    println!("cluster:   {}", meta["Cluster"].as_str().unwrap_or("?"));
    println!(
        "instance:  {}",
        meta["ContainerInstanceArn"]
            .as_str()
            .unwrap_or("(not registered)")
    );
    if let Ok(h) = get("/healthz").await {
        let healthy = h["healthy"].as_bool().unwrap_or(false);
        println!("healthy:   {}", if healthy { "yes" } else { "NO" });
        if let Some(components) = h["components"].as_object() {
            for (name, c) in components {
                let mark = if c["ok"].as_bool().unwrap_or(false) {
                    "ok  "
                } else {
                    "FAIL"
                };
                println!("  {mark} {name}: {}", c["detail"].as_str().unwrap_or(""));
            }
        }
    }
    if let Ok(t) = get("/v1/tasks").await {
        let tasks = t["Tasks"].as_array().cloned().unwrap_or_default();
        println!("tasks:     {}", tasks.len());
        for task in tasks {
            println!(
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
