//! `imdsd`: the host-side metadata daemon for guests whose traffic bypasses the VMM.
//!
//! Serves every instance in `--config` on each `--listen` address, telling instances apart
//! by source address. Reloads the config on SIGHUP and when the file changes, without
//! dropping connections; a config that fails to load leaves the previous one in service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use serde_json::json;

use imds::server::{
    handler_for, load_config, serve, ConnectionLimits, InstanceTable, Reloader, ServerState,
};

#[derive(Parser, Debug)]
#[command(name = "imdsd", about = "EC2-compatible instance metadata daemon")]
struct Cli {
    /// Instances and signing key, JSON (or TOML with a .toml extension).
    #[arg(long)]
    config: PathBuf,
    /// Address to serve on; repeat for several. Port 0 picks a free port.
    #[arg(long, default_value = "169.254.169.254:80")]
    listen: Vec<SocketAddr>,
    /// PEM private key for the identity document (overrides the config's `signing`).
    #[arg(long, requires = "signing_cert")]
    signing_key: Option<PathBuf>,
    /// PEM certificate matching --signing-key.
    #[arg(long, requires = "signing_key")]
    signing_cert: Option<PathBuf>,
    /// Print what the config serves and exit.
    #[arg(long)]
    describe: bool,
    /// With --describe (implied): print the description as JSON.
    #[arg(long)]
    json: bool,
    /// Print the PEM certificate guests verify the identity document with, and exit.
    #[arg(long)]
    print_certificate: bool,
    /// Milliseconds a request may take from its first byte to its last.
    #[arg(long, default_value_t = 10_000)]
    request_timeout_ms: u64,
    /// Milliseconds an idle keep-alive connection stays open.
    #[arg(long, default_value_t = 60_000)]
    idle_timeout_ms: u64,
    /// Connections served at once; more are closed on accept.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Runtime threads serving connections (1: a single-threaded runtime, the default; one
    /// core serves about 100k requests per second).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seconds between checks of the config file for changes (0: only SIGHUP reloads).
    #[arg(long, default_value_t = 1)]
    watch_interval: u64,
}

fn describe(cli: &Cli) -> Result<()> {
    let signing = cli.signing_key.as_deref().zip(cli.signing_cert.as_deref());
    let loaded = load_config(&cli.config, signing)?;
    let table = InstanceTable::build(&loaded.config, loaded.signer.as_ref())?;
    let instances: Vec<serde_json::Value> = loaded
        .config
        .instances
        .iter()
        .zip(table.instances())
        .map(|(record, served)| {
            let mut paths = Vec::new();
            served.metadata.version_root.leaf_paths("", &mut paths);
            json!({
                "instance_id": record.instance_id,
                "source_addresses": record.effective_source_addresses(),
                "metadata_options": record.metadata_options,
                "paths": paths,
            })
        })
        .collect();
    let description = json!({
        "config": cli.config,
        "listen": cli.listen,
        "identity_signed": loaded.signer.is_some(),
        "instances": instances,
    });
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&description)?);
    } else {
        println!(
            "config {} (identity document signed: {})",
            cli.config.display(),
            loaded.signer.is_some()
        );
        for instance in instances {
            println!(
                "{}  sources {}  options {}  {} paths",
                instance["instance_id"],
                instance["source_addresses"],
                instance["metadata_options"],
                instance["paths"].as_array().map_or(0, Vec::len)
            );
        }
    }
    Ok(())
}

fn main() -> Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    if cli.print_certificate {
        let signing = cli.signing_key.as_deref().zip(cli.signing_cert.as_deref());
        let loaded = load_config(&cli.config, signing)?;
        let signer = loaded
            .signer
            .context("no signing key configured (config `signing` or --signing-key)")?;
        print!("{}", signer.certificate_pem());
        return Ok(());
    }
    if cli.describe || cli.json {
        return describe(&cli);
    }
    let runtime = if cli.threads > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    }
    .context("starting the tokio runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let signing_override = cli.signing_key.clone().zip(cli.signing_cert.clone());
    let loaded = load_config(
        &cli.config,
        signing_override
            .as_ref()
            .map(|(key, certificate)| (key.as_path(), certificate.as_path())),
    )
    .with_context(|| format!("loading {}", cli.config.display()))?;
    let table = InstanceTable::build(&loaded.config, loaded.signer.as_ref())?;
    log::info!(
        "{} instance(s) loaded; identity document signed: {}",
        table.instances().len(),
        loaded.signer.is_some()
    );
    let state = Arc::new(ServerState::new(handler_for(&loaded.config)?, table));

    let limits = ConnectionLimits {
        request_timeout: Duration::from_millis(cli.request_timeout_ms),
        idle_timeout: Duration::from_millis(cli.idle_timeout_ms),
        max_connections: cli.max_connections.max(1),
    };
    let mut servers = tokio::task::JoinSet::new();
    for address in &cli.listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding {address}"))?;
        let bound = listener.local_addr()?;
        // Tests and scripts read this line to learn the port when asked for port 0.
        println!("imdsd listening on {bound}");
        servers.spawn(serve(listener, Arc::clone(&state), limits));
    }

    let reloader = Arc::new(Reloader {
        config_path: cli.config.clone(),
        signing_override,
        state: Arc::clone(&state),
    });
    spawn_reload_triggers(Arc::clone(&reloader), cli.watch_interval)?;

    match servers.join_next().await {
        Some(Ok(Err(error))) => Err(error).context("serving"),
        Some(Err(join_error)) => Err(join_error).context("server task"),
        _ => Ok(()),
    }
}

/// Reloads off the runtime thread: signing every instance's identity document takes about a
/// millisecond each, and requests keep being served from the old table meanwhile.
async fn reload(reloader: &Arc<Reloader>, why: &'static str) {
    let worker = Arc::clone(reloader);
    match tokio::task::spawn_blocking(move || worker.reload()).await {
        Ok(Ok(count)) => log::info!("reloaded ({why}): {count} instance(s)"),
        Ok(Err(error)) => {
            log::error!("reload ({why}) failed, keeping the previous config: {error}")
        }
        Err(join_error) => log::error!("reload ({why}) crashed: {join_error}"),
    }
}

fn spawn_reload_triggers(reloader: Arc<Reloader>, watch_interval: u64) -> Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("installing the SIGHUP handler")?;
    let on_signal = Arc::clone(&reloader);
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            reload(&on_signal, "SIGHUP").await;
        }
    });
    if watch_interval > 0 {
        tokio::spawn(async move {
            let mut last_seen = reloader.fingerprint();
            let mut ticker = tokio::time::interval(Duration::from_secs(watch_interval));
            loop {
                ticker.tick().await;
                let current = reloader.fingerprint();
                if current.is_some() && current != last_seen {
                    last_seen = current;
                    reload(&reloader, "file changed").await;
                }
            }
        });
    }
    Ok(())
}
