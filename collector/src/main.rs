#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use collector::config::{Cli, Config, TOKEN_ENV};

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::from_cli(cli, std::env::var(TOKEN_ENV).ok()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("collector: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("collector: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        if cfg.once.is_some() {
            match collector::run_once(&cfg).await {
                Ok((out, answered)) => {
                    let _ = std::io::stdout().write_all(&out);
                    if answered {
                        ExitCode::SUCCESS
                    } else {
                        eprintln!("collector: no pod answered");
                        ExitCode::FAILURE
                    }
                }
                Err(e) => {
                    eprintln!("collector: {e}");
                    ExitCode::FAILURE
                }
            }
        } else {
            match collector::run(cfg, Default::default(), shutdown_signal()).await {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("collector: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    })
}
