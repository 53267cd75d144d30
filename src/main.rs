//! The `ecs-hostd` binary: parse the command line, load the configuration, set up logging, run
//! the sub-command, turn the result into an exit code. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ecs_hostd::config::{Config, ConfigError, LoadOptions};
use ecs_hostd::{app, check, status, telemetry};

/// ECS container-instance host agent: a drop-in replacement for the ECS agent plus ecs-init.
#[derive(Parser, Debug)]
#[command(name = "ecs-hostd", version, about)]
struct Cli {
    /// The official agent's configuration file (must exist when given).
    #[arg(long, global = true, value_name = "PATH")]
    ecs_config: Option<PathBuf>,
    /// ecs-hostd's own settings (must exist when given).
    #[arg(long = "config", global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Cluster to join (same as --set ECS_CLUSTER=NAME).
    #[arg(long, global = true, value_name = "NAME")]
    cluster: Option<String>,
    /// Override any setting, highest precedence: --set ECS_RESERVED_MEMORY=256.
    #[arg(long = "set", global = true, value_name = "KEY=VALUE", value_parser = parse_kv)]
    set: Vec<(String, String)>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the agent in the foreground (what the systemd unit starts).
    Run,
    /// Pre-flight checks: configuration, Docker, IMDS, credentials, cluster. Exit 1 on failure.
    Check,
    /// Show what the running agent reports on its local API.
    Status,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))?;
    Ok((k.trim().to_owned(), v.to_owned()))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut flags = cli.set.clone();
    if let Some(c) = &cli.cluster {
        flags.push(("ECS_CLUSTER".into(), c.clone()));
    }
    let strict = matches!(cli.command, Command::Check);
    let opts = LoadOptions::from_process(cli.ecs_config.clone(), cli.config.clone(), flags, strict);

    // `run` reads its configuration before any thread exists: proxy settings from ecs.config
    // become environment variables that every HTTP client of the process then follows.
    let loaded = matches!(cli.command, Command::Run).then(|| {
        let loaded = Config::load(&opts);
        if let Ok(l) = &loaded {
            for (key, value) in l.config.proxy.environment() {
                // SAFETY: single-threaded here: the runtime and every client are created below.
                unsafe { std::env::set_var(key, value) };
            }
        }
        loaded
    });

    // One scheduler thread: the agent waits on Docker, IMDS and AWS far more than it computes,
    // and a second worker only adds cross-thread wake-ups while idle (issue 8's idle CPU). Blocking
    // calls (statvfs, DNS) still go to tokio's blocking pool, whose idle thread is kept across
    // metrics passes (60 s by default) instead of being started anew for each (tokio's default
    // keep-alive is 10 s).
    // The periodic tasks' time grid counts from here, as the runtime's timer wheel is about to.
    ecs_hostd::clock::start();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_keep_alive(std::time::Duration::from_secs(600))
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ecs-hostd: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };

    match cli.command {
        Command::Check => {
            let lines = runtime.block_on(check::run(&opts));
            let failed = lines.iter().filter(|l| !l.ok).count();
            for l in &lines {
                println!("{l}");
            }
            if failed > 0 {
                println!("{failed} check(s) failed");
                ExitCode::from(1)
            } else {
                println!("all checks passed");
                ExitCode::SUCCESS
            }
        }
        Command::Status => {
            let addr = Config::load(&LoadOptions {
                strict: false,
                ..opts
            })
            .map(|l| l.config.api_addr)
            .unwrap_or_else(|_| Config::default().api_addr);
            ExitCode::from(runtime.block_on(status::print(addr)))
        }
        Command::Run => {
            let loaded = match loaded.unwrap_or_else(|| Config::load(&opts)) {
                Ok(l) => l,
                Err(e @ ConfigError::Invalid(_)) => {
                    telemetry::init("info");
                    tracing::error!(error = %e, "Invalid configuration; not starting (exit 5).");
                    eprintln!("ecs-hostd: {e}");
                    return ExitCode::from(5);
                }
                Err(e) => {
                    telemetry::init("info");
                    tracing::error!(error = %e, "Cannot read the configuration (exit 5).");
                    eprintln!("ecs-hostd: {e}");
                    return ExitCode::from(5);
                }
            };
            telemetry::init(&loaded.config.log_level);
            for w in &loaded.warnings {
                tracing::warn!(config.key = %w.key, "{w}");
            }
            let outcome = runtime.block_on(app::run(loaded.config));
            if let app::Outcome::Terminal(msg) | app::Outcome::Error(msg) = &outcome {
                eprintln!("ecs-hostd: {msg}");
            }
            // Subsystems may hold blocking threads (store, Docker); do not wait for them.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            ExitCode::from(outcome.exit_code())
        }
    }
}
