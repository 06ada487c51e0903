//! The `beacon` binary: `serve`, `check` and `asyncapi`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use beacon::config::LogFormat;
use beacon::runtime::{request_shutdown, Server};
use beacon::startup;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "beacon",
    version,
    about = "Realtime WebSocket engine driven by a declared protocol"
)]
struct Cli {
    /// Without a command, `serve` with its defaults.
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

/// `beacon serve` flags; also what a bare `beacon` (as in `cargo run`) runs with.
#[derive(Parser)]
struct ServeArgs {
    #[arg(long, default_value = "protocol.toml")]
    protocol: PathBuf,
    #[arg(long, default_value = "config/beacon.toml")]
    config: PathBuf,
    /// Overrides `listen` from the config.
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Overrides `shards` from the config (0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// Overrides `[log] level` from the config.
    #[arg(long)]
    log_level: Option<String>,
    /// Log one JSON object per line instead of human-readable text.
    #[arg(long)]
    log_json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate the protocol and config, then serve.
    Serve(ServeArgs),
    /// Validate the protocol and config files; print every problem; exit 1 if any.
    Check {
        #[arg(long, default_value = "protocol.toml")]
        protocol: PathBuf,
        #[arg(long, default_value = "config/beacon.toml")]
        config: PathBuf,
    },
    /// Print the protocol as an AsyncAPI 3.0 document (JSON) on stdout.
    Asyncapi {
        #[arg(long, default_value = "protocol.toml")]
        protocol: PathBuf,
    },
}

fn init_logging(level: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("beacon={level},warn")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cmd = cli
        .cmd
        .unwrap_or_else(|| Cmd::Serve(ServeArgs::parse_from(["beacon"])));
    match cmd {
        Cmd::Check { protocol, config } => match startup::check(&protocol, &config) {
            Ok(c) => {
                eprint!("{}", c.warnings);
                println!(
                    "OK: {} ({} endpoints, {} messages, {} close codes); {}",
                    protocol.display(),
                    c.protocol.endpoints.len(),
                    c.protocol.messages.len(),
                    c.protocol.closes.len(),
                    if config.exists() {
                        format!("{} valid", config.display())
                    } else {
                        "config defaults".to_owned()
                    }
                );
                ExitCode::SUCCESS
            }
            Err(report) => {
                eprint!("{report}");
                ExitCode::FAILURE
            }
        },
        Cmd::Asyncapi { protocol } => {
            let loaded = std::fs::read_to_string(&protocol)
                .map_err(|e| format!("{}: cannot read: {e}\n", protocol.display()))
                .and_then(|src| {
                    beacon::protocol::load_protocol(&src).map_err(|d| {
                        beacon::protocol::render(&protocol.display().to_string(), &src, &d)
                    })
                });
            match loaded {
                Ok(p) => {
                    let doc = beacon::asyncapi::document(&p);
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
                    ExitCode::SUCCESS
                }
                Err(report) => {
                    eprint!("{report}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Serve(a) => serve(a),
    }
}

fn serve(args: ServeArgs) -> ExitCode {
    let ServeArgs {
        protocol,
        config,
        listen,
        shards,
        log_level,
        log_json,
    } = args;
    let mut checked = match startup::check(&protocol, &config) {
        Ok(c) => {
            eprint!("{}", c.warnings);
            c
        }
        Err(report) => {
            eprint!("{report}");
            return ExitCode::FAILURE;
        }
    };
    let level = log_level.unwrap_or_else(|| checked.config.log_level.clone());
    init_logging(
        &level,
        log_json || checked.config.log_format == LogFormat::Json,
    );
    if let Some(l) = listen {
        checked.config.listen = l;
    }
    if let Some(s) = shards {
        checked.config.shards = s;
    }
    if let Some(url) = std::env::var("BEACON_BACKEND_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        checked.config.backend_url = url;
    }
    if !checked.protocol.hooks.is_empty() {
        // Resolve once here: name resolution blocks, and shards never block.
        match beacon::runtime::backend::Backend::parse(&checked.config.backend_url) {
            Ok(b) => match b.resolve() {
                Some(a) => checked.config.backend_addr = Some(a),
                None => {
                    tracing::warn!(url = %checked.config.backend_url, "cannot resolve the backend host; hooks will refuse (fail closed)")
                }
            },
            Err(e) => {
                eprintln!("error: BEACON_BACKEND_URL: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let env = |k: &str| std::env::var(k).ok();
    let verifiers = match startup::verifiers(&checked, &protocol, &env) {
        Ok(v) => v,
        Err(report) => {
            eprint!("{report}");
            return ExitCode::FAILURE;
        }
    };
    let api_key = std::env::var(&checked.config.api_key_env)
        .ok()
        .filter(|k| !k.is_empty());
    if api_key.is_none() {
        tracing::warn!(var = %checked.config.api_key_env, "no API key set: the publish API answers 503");
    }
    match (
        checked.protocol.channel_layer.is_some(),
        checked.config.channel_layer.is_some(),
    ) {
        (true, false) => tracing::warn!("the protocol maps Django groups ([channel_layer]) but the config names no channel-layer Redis: group_send is not read"),
        (false, true) => tracing::warn!("the config names a channel-layer Redis but the protocol maps no groups ([channel_layer]): group_send is not read"),
        _ => {}
    }
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let nr_shards = match checked.config.shards {
        0 => cores,
        n => n,
    };
    beacon::runtime::fault::install_panic_policy();
    if std::env::var("BEACON_FAULT_INJECTION").as_deref() == Ok("1") {
        tracing::warn!("fault injection is ON: test builds only");
        beacon::runtime::fault::enable_injection();
    }
    if let Some(c) = &checked.config.cluster {
        match beacon::runtime::cluster::check_reachable(c) {
            Ok(()) => {}
            Err(e) if c.start_without_broker => {
                tracing::warn!(error = %e, "starting without the broker (start_without_broker): not ready until it answers")
            }
            Err(e) => {
                eprintln!(
                    "beacon: {e} (set [cluster] start_without_broker = true to start without it)"
                );
                return ExitCode::FAILURE;
            }
        }
    }
    let shared = startup::shared(checked, verifiers, api_key, nr_shards);
    let server = match Server::start(shared.clone()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "startup failed");
            eprintln!("beacon: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %server.local_addr, shards = nr_shards, protocol = %shared.proto.name, "listening");
    // Tests and scripts read the bound port from this line on stdout.
    println!("beacon listening on {}", server.local_addr);

    let sig_shared = shared.clone();
    match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ]) {
        Ok(mut signals) => {
            std::thread::Builder::new()
                .name("beacon-signals".into())
                .spawn(move || {
                    if let Some(sig) = signals.forever().next() {
                        tracing::info!(signal = sig, "draining");
                        request_shutdown(&sig_shared);
                    }
                })
                .ok();
        }
        Err(e) => tracing::warn!(error = %e, "cannot install signal handlers"),
    }
    match server.join() {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "a shard failed");
            eprintln!("beacon: {e}");
            ExitCode::from(70)
        }
    }
}
