//! `gestor` — the one binary: run a node, or talk to a ring as a client.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use gestor::client::{Client, ClientError};
use gestor::config::{Config, StorageKind, TransportKind};
use gestor::json::{cbor_to_json, json_to_cbor};
use gestor::runtime::{build_transport, Node};
use gestor_sdk::Value;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "gestor",
    version,
    about = "Chord-based directory and presence service for peer-to-peer messaging"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ClientArgs {
    /// Gestor to ask (any member of the ring); repeat to give fallbacks.
    #[arg(
        long = "gestor",
        env = "GESTOR_URL",
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:7100"
    )]
    gestores: Vec<String>,
    /// Transport backend the ring uses.
    #[arg(long, value_enum, env = "GESTOR_TRANSPORT", default_value_t = TransportKind::Nng)]
    transport: TransportKind,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
    /// Print machine-readable JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gestor node until SIGINT or SIGTERM.
    Node(NodeArgs),
    /// Show a node's view: id, ring neighbours, fingers, records, initial gestors.
    Status {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Send any request kind with a JSON body (e.g. to a plugin) and print the reply.
    Call {
        /// Request kind, e.g. `echo.say`.
        kind: String,
        /// Request body as JSON.
        #[arg(long, default_value = "null")]
        body: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// TOML configuration file (see examples/gestor.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[arg(long)]
    listen: Option<String>,
    #[arg(long)]
    signal: Option<String>,
    #[arg(long)]
    advertise: Option<String>,
    /// Gestor to join through; repeatable.
    #[arg(long)]
    join: Vec<String>,
    #[arg(long, value_enum)]
    transport: Option<TransportKind>,
    #[arg(long, value_enum)]
    storage: Option<StorageKind>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Plugin to load (name or path); repeatable; replaces the configured list.
    #[arg(long = "plugin")]
    plugins: Vec<String>,
    /// Ring id override (decimal or 0x-hex).
    #[arg(long)]
    id: Option<String>,
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Node(args) => {
            init_logging("info");
            run_node(args)
        }
        other => {
            init_logging("warn");
            run_client_command(other)
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn node_config(args: NodeArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        config.node.listen = v;
    }
    if let Some(v) = args.signal {
        config.node.signal = Some(v);
    }
    if let Some(v) = args.advertise {
        config.node.advertise = Some(v);
    }
    if !args.join.is_empty() {
        config.node.join = args.join;
    }
    if let Some(v) = args.transport {
        config.transport.backend = v;
    }
    if let Some(v) = args.storage {
        config.storage.backend = v;
    }
    if let Some(v) = args.data_dir {
        config.node.data_dir = v;
    }
    if let Some(v) = args.plugin_dir {
        config.plugins.dir = Some(v);
    }
    if !args.plugins.is_empty() {
        config.plugins.load = args.plugins;
    }
    if let Some(v) = args.id {
        config.node.id = Some(v);
    }
    Ok(config)
}

fn run_node(args: NodeArgs) -> Result<()> {
    let config = node_config(args)?;
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])
    .context("cannot install signal handlers")?;
    let node = Node::start(&config)?;
    // One line on stdout so scripts know the node is serving.
    println!(
        "gestor node {:016x} serving on {}",
        config.node_id()?,
        config.advertise_url()
    );
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    node.stop();
    Ok(())
}

fn client(args: &ClientArgs) -> Client {
    Client::new(
        build_transport(args.transport),
        args.gestores.clone(),
        Duration::from_millis(args.timeout_ms),
    )
}

fn describe(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!(e)
}

fn run_client_command(command: Command) -> Result<()> {
    match command {
        Command::Node(_) => unreachable!("handled in main"),
        Command::Status { client: args } => {
            let reply = client(&args)
                .call("node.status", Value::Null)
                .map_err(describe)?;
            let json = cbor_to_json(&reply);
            if args.json {
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                print_status(&json);
            }
            Ok(())
        }
        Command::Call {
            kind,
            body,
            client: args,
        } => {
            let body: serde_json::Value =
                serde_json::from_str(&body).context("--body is not valid JSON")?;
            let reply = client(&args)
                .call(&kind, json_to_cbor(&body))
                .map_err(describe)?;
            println!("{}", serde_json::to_string_pretty(&cbor_to_json(&reply))?);
            Ok(())
        }
    }
}

fn print_status(s: &serde_json::Value) {
    let field = |k: &str| {
        s.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    println!("node        {}  ({})", field("id_hex"), field("address"));
    println!(
        "backends    transport={} storage={}",
        field("transport"),
        field("storage")
    );
    println!("plugins     {}", field("plugins"));
    println!("records     {}", field("records"));
    println!("initial     {}", field("initial_gestors"));
    if let Some(sections) = s.get("sections").and_then(|v| v.as_object()) {
        for (name, section) in sections {
            println!("[{name}]");
            if let Some(obj) = section.as_object() {
                for (k, v) in obj {
                    println!("  {k:<14} {v}");
                }
            } else {
                println!("  {section}");
            }
        }
    }
}
