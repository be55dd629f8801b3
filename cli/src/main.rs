//! `tidecast`: every service in one binary. With no arguments it runs everything (`all`).
//!
//! * `args`: the command line and the configuration it overrides.
//! * `tools`: the one-shot commands (`config`, `token`, `bot`).
//! * `services`: starting the roles a process runs.

mod args;
mod services;
mod tools;

use anyhow::Result;
use clap::Parser;
use tidecast_common::service::Readiness;
use tidecast_common::Config;
use tracing::{info, warn};

use args::{load_config, Cli, Command};

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .init();
    let config = match load_config(&cli) {
        Ok(c) => c,
        Err(e) if cli.check_config => {
            eprintln!("{e:#}");
            std::process::exit(2);
        }
        Err(e) => return Err(e),
    };
    let problems = config.check();
    if cli.check_config {
        for p in &problems {
            eprintln!("{p}");
        }
        if !problems.is_empty() {
            eprintln!(
                "tidecast: {} problem(s) in the configuration{}",
                problems.len(),
                cli.config
                    .as_ref()
                    .map(|p| format!(" ({})", p.display()))
                    .unwrap_or_default()
            );
            std::process::exit(2);
        }
        println!("configuration ok");
        return Ok(());
    }
    for p in &problems {
        warn!(key = %p.key, "configuration: {}", p.message);
    }
    let command = cli.command.clone().unwrap_or(Command::All);
    if tools::run(&command, &config).await? {
        return Ok(());
    }
    let services::Process {
        mut tasks,
        readiness,
    } = services::start(&command, &config).await?;
    info!(?command, "tidecast running");
    let signal = tokio::select! {
        r = tasks.join_next() => {
            return match r {
                Some(Ok(Err(e))) => Err(e),
                Some(Err(e)) => Err(anyhow::anyhow!("service task failed: {e}")),
                _ => Ok(()),
            };
        }
        s = tidecast_common::lifecycle::shutdown_signal() => s,
    };
    drain(&readiness, &config, signal).await;
    Ok(())
}

/// SIGTERM: `/readyz` turns 503, every role finishes its work (see `common::lifecycle`),
/// then the process exits; a second signal, or `drain_timeout_secs`, cuts it short.
async fn drain(readiness: &Readiness, config: &Config, signal: &str) {
    let delay = std::time::Duration::from_secs(config.drain_delay_secs);
    let timeout = std::time::Duration::from_secs(config.drain_timeout_secs);
    info!(
        signal,
        delay_secs = delay.as_secs(),
        timeout_secs = timeout.as_secs(),
        work = readiness.work_in_progress(),
        "draining"
    );
    readiness.drain();
    tokio::select! {
        done = readiness.drained(timeout) => {
            if done {
                info!("drained, exiting");
            } else {
                warn!(work = readiness.work_in_progress(), "drain timed out, exiting");
            }
        }
        s = tidecast_common::lifecycle::shutdown_signal() => {
            warn!(signal = s, work = readiness.work_in_progress(), "second signal: exiting now");
        }
    }
}
