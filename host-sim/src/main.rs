//! `host-sim` command line: `test`, `bench`, `serve`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "host-sim",
    about = "Native proxy-wasm host (Envoy/GCP profiles): test, bench, serve"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the cases of a YAML test file.
    Test {
        /// Module (overrides env.wasm).
        #[arg(long)]
        wasm: Option<PathBuf>,
        /// Plugin configuration file (overrides env.config).
        #[arg(long)]
        config: Option<PathBuf>,
        /// YAML test file.
        #[arg(long)]
        case: PathBuf,
    },
    /// Run cases repeatedly and print per-request filter cost and VM memory.
    Bench {
        #[arg(long)]
        wasm: Option<PathBuf>,
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        case: PathBuf,
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        /// Concurrent streams for the memory-per-stream figure.
        #[arg(long, default_value_t = 20_000)]
        streams: usize,
    },
    /// Run the local gateway described by a YAML file.
    Serve {
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Test { wasm, config, case } => match host_sim::case::run_file(&case, wasm.as_deref(), config.as_deref()) {
            Ok(reports) => {
                let (mut ok, mut bad) = (0, 0);
                for r in &reports {
                    if r.passed() {
                        ok += 1;
                        println!("PASS {}", r.name);
                        for n in &r.notes {
                            println!("    note: {n}");
                        }
                    } else {
                        bad += 1;
                        println!("FAIL {}", r.name);
                        for f in &r.failures {
                            println!("    {f}");
                        }
                    }
                }
                println!("{ok} passed, {bad} failed");
                if bad == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Cmd::Bench {
            wasm,
            config,
            case,
            iterations,
            warmup,
            streams,
        } => {
            match host_sim::bench::bench_file(&case, wasm.as_deref(), config.as_deref(), iterations, warmup, streams) {
                Ok(reports) => {
                    for r in reports {
                        print!("{r}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Serve { config } => match host_sim::serve::serve_file(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}
