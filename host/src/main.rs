//! `gestor` — the one binary: run a node, or talk to a ring as a client.

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use gestor::config::{Config, StorageKind, TransportKind};
use gestor::json::{cbor_to_json, json_to_cbor};
use gestor::out::StdoutError;
use gestor::runtime::Node;
use gestor::{out, outln};
use gestor_api::node;
use gestor_backends::build_transport;
use gestor_client::client::{Client, ClientError};
use gestor_client::sessions::SessionStore;
use gestor_sdk::wire::to_value;
use gestor_sdk::Empty;
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
    #[command(flatten)]
    trust: gestor::security::TrustArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run a gestor node until SIGINT or SIGTERM.
    Node(NodeArgs),
    /// Show a node's view: id, ring neighbours, fingers, records, initial gestors.
    Status {
        /// Refresh every SECS seconds (default 2) until Ctrl-C or the output is closed.
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
        /// With --watch: stop after this many refreshes.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Create an account (name rules in docs/PROTOCOL.md).
    Register {
        /// The username to create (3-32 of a-z 0-9 _ . -, starting with a letter or digit).
        user: String,
        /// The account's password (better in GESTOR_PASSWORD: arguments are visible to other users).
        #[arg(long, env = "GESTOR_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Log in: set the address where this user receives messages, mark online.
    Login {
        /// The user logging in.
        user: String,
        /// HOST:PORT where the user's client listens.
        #[arg(long)]
        address: String,
        /// The account's password (better in GESTOR_PASSWORD: arguments are visible to other users).
        #[arg(long, env = "GESTOR_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Where is USER? Address, presence, last update, routing hops.
    Lookup {
        /// The user to find.
        user: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete an account (its password is required); the name becomes free.
    Delete {
        /// The account to delete.
        user: String,
        /// The account's password (better in GESTOR_PASSWORD: arguments are visible to other users).
        #[arg(long, env = "GESTOR_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Log out (offline at once). Uses the token saved by `gestor login`.
    Logout {
        /// The user logging out.
        user: String,
        /// The session token to end (default: the one saved by `gestor login`).
        #[arg(long)]
        token: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start a local ring of gestor processes, register and look up users, print a summary.
    Demo {
        /// How many gestor processes to start (at least 2).
        #[arg(long, default_value_t = 5)]
        nodes: usize,
        /// Transport backend of the demo ring.
        #[arg(long, value_enum, default_value_t = TransportKind::Nng)]
        transport: TransportKind,
        /// Storage backend of the demo's gestores.
        #[arg(long, value_enum, default_value_t = StorageKind::Sqlite)]
        storage: StorageKind,
        /// Keep the demo's data directories and logs.
        #[arg(long)]
        keep_data: bool,
    },
    /// Load generator: registrations, then lookups from several threads for a set time.
    ///
    /// Against a running ring (--gestor), or, with --compare-insecure, on
    /// two local rings it starts itself: `gestor node` processes of this
    /// binary, which load the plugins next to it (build the workspace in the
    /// same profile first: `cargo build --release --workspace`).
    Bench(BenchArgs),
    /// The far end of the bench's raw round trip: a bare replier that
    /// echoes, in a process of its own (started by `gestor bench`).
    #[command(hide = true)]
    BenchEcho {
        #[arg(long, value_enum)]
        transport: TransportKind,
        #[arg(long)]
        url: String,
    },
    /// Import accounts from another directory: FILE has one JSON object per
    /// line, {"username", "password_hash" (argon2id PHC), "address"
    /// (optional)}. Checked whole first; existing names are left as they are.
    Import {
        /// JSON-lines file of accounts to import.
        file: PathBuf,
        /// Accounts per request (at most 1000).
        #[arg(long, default_value_t = 500)]
        batch: usize,
        /// An operator credential (`gestor cluster admit`): importing is gestor-internal.
        #[arg(long, env = "GESTOR_CREDENTIAL")]
        credential: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Count, for every record, on how many distinct gestores its newest version is held.
    Copies {
        /// Copies configured besides the owner (the replica plugin's `copies`).
        #[arg(long, default_value_t = 3)]
        copies: usize,
        /// An operator credential (`gestor cluster admit`): inventories are gestor-internal.
        #[arg(long, env = "GESTOR_CREDENTIAL")]
        credential: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Interactive chat: log in, receive on --address, send, watch contacts (/help).
    Chat(gestor::chat_cli::ChatArgs),
    /// Send one chat message: directly if TO is online, else to TO's mailbox (or the outbox).
    Send(gestor::chat_cli::SendArgs),
    /// Fetch USER's mailbox and print every message received, in order per sender.
    Inbox(gestor::chat_cli::InboxArgs),
    /// Operator: the cluster key, gestor credentials, revocations.
    #[command(subcommand)]
    Cluster(ClusterCommand),
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
struct BenchArgs {
    /// Client threads sending lookups at once.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// How long the lookup phase runs, in seconds.
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Accounts registered first (reused when they exist) and looked up.
    /// After a register phase, the later phases use only those that exist.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Prefix of the bench accounts' names.
    #[arg(long, default_value = "bench-")]
    prefix: String,
    /// Also run the lookups again beside this many threads registering
    /// through the first gestor, and report quiet vs flooded.
    #[arg(long, default_value_t = 0)]
    flood_threads: usize,
    /// Phases to run, comma-separated, always in this order:
    /// register, login, set_address, lookup. set_address logs the users
    /// in first (untimed) when login is not among them.
    #[arg(long, value_enum, value_delimiter = ',',
          default_values_t = gestor::bench::PhaseName::ALL)]
    phases: Vec<gestor::bench::PhaseName>,
    /// First load this many accounts with `dir.import` (as `gestor
    /// import` does; needs --credential), e.g. to fill a ring with a
    /// million users; reported as phase `preload`.
    #[arg(long, default_value_t = 0)]
    preload: usize,
    /// An operator credential, for --preload.
    #[arg(long, env = "GESTOR_CREDENTIAL")]
    credential: Option<PathBuf>,
    /// Start two identical local rings, one secure and one --insecure
    /// (plaintext), register --users on each, and run the lookups on
    /// both, alternating; report p50/p99/throughput and secure ÷
    /// insecure. Ignores --gestor and the trust flags.
    #[arg(long)]
    compare_insecure: bool,
    /// Gestores per ring (--compare-insecure).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Store of the rings (--compare-insecure).
    #[arg(long, value_enum, default_value_t = StorageKind::Sqlite)]
    storage: StorageKind,
    /// Times the lookups alternate between the rings; each ring gets
    /// --duration-secs in all (--compare-insecure).
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Keep the rings' data directories and logs (--compare-insecure).
    #[arg(long)]
    keep_data: bool,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Create a cluster: DIR/cluster.key (keep it offline) and DIR/cluster.pub (give it to everyone).
    Init {
        /// Directory to create the cluster key pair in (created if missing).
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue one gestor credential (its own key pair, signed by the cluster key).
    Admit {
        /// The directory of `gestor cluster init`.
        #[arg(long)]
        dir: PathBuf,
        /// Where to write the credential (secret: give it to that gestor only).
        #[arg(long)]
        out: PathBuf,
        /// A name for the gestor, shown in logs and status.
        #[arg(long, default_value = "gestor")]
        name: String,
    },
    /// Revoke a credential: add it to the signed list DIR/revoked.toml, then
    /// copy that file to every gestor's `security.revocations` path.
    Revoke {
        /// The directory of `gestor cluster init` (holds cluster.key and revoked.toml).
        #[arg(long)]
        dir: PathBuf,
        /// The credential file to revoke.
        #[arg(long)]
        credential: PathBuf,
    },
}

#[derive(Args)]
struct NodeArgs {
    /// TOML configuration file (see examples/gestor.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// REQ-REP endpoint to bind, e.g. tcp://0.0.0.0:7100 (node.listen).
    #[arg(long)]
    listen: Option<String>,
    /// PUB-SUB endpoint to bind for signals; default: listen port + 1 (node.signal).
    #[arg(long)]
    signal: Option<String>,
    /// Request URL others reach this node at, when it differs from --listen (node.advertise).
    #[arg(long)]
    advertise: Option<String>,
    /// Gestor to join through; repeatable.
    #[arg(long)]
    join: Vec<String>,
    /// Transport backend (transport.backend).
    #[arg(long, value_enum)]
    transport: Option<TransportKind>,
    /// Storage backend (storage.backend).
    #[arg(long, value_enum)]
    storage: Option<StorageKind>,
    /// Directory for the store's files (node.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Directory searched for plugins named without a path (plugins.dir).
    #[arg(long)]
    plugin_dir: Option<PathBuf>,
    /// Plugin to load (name or path); repeatable; replaces the configured list.
    #[arg(long = "plugin")]
    plugins: Vec<String>,
    /// Ring id override (decimal or 0x-hex).
    #[arg(long)]
    id: Option<String>,
    /// This gestor's credential (from `gestor cluster admit`).
    #[arg(long)]
    credential: Option<PathBuf>,
    /// The cluster public key (cluster.pub).
    #[arg(long)]
    cluster_pub: Option<PathBuf>,
    /// Signed revocation list (from `gestor cluster revoke`), re-read when it changes.
    #[arg(long)]
    revocations: Option<PathBuf>,
    /// Development only: run without a credential; the ring is open to anyone.
    #[arg(long)]
    insecure: bool,
    /// Serve /metrics, /health, /ready and the ring dashboard over HTTP on
    /// HOST:PORT (config `http.listen`; off by default).
    #[arg(long = "http", value_name = "ADDR")]
    http: Option<String>,
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colours only for a terminal: container and service logs stay plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .init();
}

fn main() {
    gestor::memory::return_large_blocks_to_the_system();
    let cli = Cli::parse();
    // SIGPIPE stays ignored (Rust's default) for every command: a closed
    // standard output is a `StdoutError::Closed` from `outln!`, which stops
    // the command through its normal clean-up (a demo stops its gestores, a
    // chat logs out) and ends here, quietly and with status 0, as
    // `gestor status | head -1` should.
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
        if gestor::out::is_closed_stdout(&e) {
            std::process::exit(0);
        }
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "error: {e:#}");
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
    if let Some(v) = args.credential {
        config.security.credential = Some(v);
    }
    if let Some(v) = args.cluster_pub {
        config.security.cluster_pub = Some(v);
    }
    if let Some(v) = args.revocations {
        config.security.revocations = Some(v);
    }
    if args.insecure {
        config.security.insecure = true;
    }
    if let Some(v) = args.http {
        config.http.listen = Some(v);
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
    // One line on stdout so scripts know the node is serving (a node
    // keeps serving when nobody reads it).
    let _ = outln!(
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

fn client(args: &ClientArgs) -> Result<Client> {
    let mut c = Client::new(
        args.trust.trust()?.layer(args.transport),
        args.gestores.clone(),
        Duration::from_millis(args.timeout_ms),
    );
    // Seed §1: start from the initial gestors learned last time (each must
    // still prove admission before it is sent anything).
    c.add_fallbacks(&SessionStore::default_home().initial_gestors());
    Ok(c)
}

fn run_cluster_command(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Init { dir } => {
            let (key, public) = gestor::security::cluster_init(&dir)?;
            outln!(
                "cluster key    {}  (secret: keep it offline)",
                key.display()
            )?;
            outln!(
                "cluster public {}  (give it to every gestor and client)",
                public.display()
            )?;
        }
        ClusterCommand::Admit { dir, out, name } => {
            gestor::security::cluster_admit(&dir, &out, &name)?;
            outln!(
                "credential for {name} written to {} (secret: give it to that gestor only)",
                out.display()
            )?;
        }
        ClusterCommand::Revoke { dir, credential } => {
            let (path, n) = gestor::security::cluster_revoke(&dir, &credential)?;
            outln!(
                "{} revoked; {} now lists {n} key(s): copy it to every gestor's security.revocations file",
                credential.display(),
                path.display()
            )?;
        }
    }
    Ok(())
}

/// Keep the newest initial-gestors list for next time (only a hint: a
/// failure to save it is logged, not fatal).
fn remember(c: &Client) {
    if let Err(e) = SessionStore::default_home().save_initial_gestors(c.initial_gestors()) {
        tracing::warn!("{e}");
    }
}

fn password(p: Option<String>) -> Result<String> {
    p.filter(|p| !p.is_empty())
        .context("a password is required: --password or the GESTOR_PASSWORD environment variable")
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    outln!("{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn describe(e: ClientError) -> anyhow::Error {
    anyhow::anyhow!(e)
}

fn run_client_command(command: Command) -> Result<()> {
    match command {
        Command::Node(_) => unreachable!("handled in main"),
        Command::Chat(args) => gestor::chat_cli::chat(args),
        Command::Send(args) => gestor::chat_cli::send(args),
        Command::Inbox(args) => gestor::chat_cli::inbox(args),
        Command::Cluster(command) => run_cluster_command(command),
        Command::Status {
            watch: Some(secs),
            count,
            client: args,
        } => watch_status(&args, secs, count),
        Command::Status {
            watch: None,
            client: args,
            ..
        } => show_status(&args),
        Command::Register {
            user,
            password: pw,
            client: args,
        } => register(&user, pw, &args),
        Command::Login {
            user,
            address,
            password: pw,
            client: args,
        } => login(&user, &address, pw, &args),
        Command::Lookup { user, client: args } => lookup(&user, &args),
        Command::Delete {
            user,
            password: pw,
            client: args,
        } => delete(&user, pw, &args),
        Command::Logout {
            user,
            token,
            client: args,
        } => logout(&user, token, &args),
        Command::Demo {
            nodes,
            transport,
            storage,
            keep_data,
        } => gestor::demo::run(gestor::demo::DemoOptions {
            nodes,
            transport,
            storage,
            keep_data,
        }),
        Command::Bench(bench) => run_bench(bench),
        Command::BenchEcho { transport, url } => gestor::bench::serve_echo(transport, &url),
        Command::Import {
            file,
            batch,
            credential,
            client: args,
        } => import_accounts(&file, batch, credential, &args),
        Command::Copies {
            copies,
            credential,
            client: args,
        } => count_copies(copies, credential, &args),
        Command::Call {
            kind,
            body,
            client: args,
        } => call(&kind, &body, &args),
    }
}

/// `gestor status` once.
fn show_status(args: &ClientArgs) -> Result<()> {
    let reply = client(args)?
        .request::<node::Status>(&Empty)
        .map_err(describe)?;
    let json = cbor_to_json(&to_value(&reply));
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        print_status(&json)?;
    }
    Ok(())
}

fn register(user: &str, pw: Option<String>, args: &ClientArgs) -> Result<()> {
    let pw = password(pw)?;
    let mut c = client(args)?;
    let r = c.register(user, &pw).map_err(describe)?;
    remember(&c);
    if args.json {
        print_json(&r)?;
    } else {
        outln!(
            "registered {} (responsible gestor {})",
            r.username,
            r.gestor
        )?;
    }
    Ok(())
}

/// `gestor login`: the session is saved for `gestor logout` and the chat.
fn login(user: &str, address: &str, pw: Option<String>, args: &ClientArgs) -> Result<()> {
    let pw = password(pw)?;
    let mut c = client(args)?;
    let s = c.login(user, &pw, address).map_err(describe)?;
    remember(&c);
    SessionStore::default_home().save(&s)?;
    if args.json {
        print_json(&s)?;
    } else {
        outln!("logged in {} at {address}; responsible gestor {}; send alive signals to {} every {} ms", s.username, s.gestor, s.signal, s.alive_every_ms)?;
    }
    Ok(())
}

fn lookup(user: &str, args: &ClientArgs) -> Result<()> {
    let mut c = client(args)?;
    let f = c.lookup(user).map_err(describe)?;
    remember(&c);
    if args.json {
        return print_json(&f);
    }
    outln!(
        "{} at {} — {} (last seen {} ms since epoch, last update {}), {} hops via {}",
        f.user,
        if f.address.is_empty() {
            "(no address)"
        } else {
            &f.address
        },
        if f.online { "online" } else { "offline" },
        f.last_seen_ms,
        f.last_update,
        f.hops,
        f.gestor
    )?;
    Ok(())
}

/// `gestor delete`: the account, and the session saved for it.
fn delete(user: &str, pw: Option<String>, args: &ClientArgs) -> Result<()> {
    let pw = password(pw)?;
    let mut c = client(args)?;
    let d = c.delete(user, &pw).map_err(describe)?;
    remember(&c);
    SessionStore::default_home().forget(user)?;
    if args.json {
        print_json(&d)?;
    } else {
        outln!("deleted {user}")?;
    }
    Ok(())
}

/// `gestor logout`, with `--token` or the session saved by `gestor login`.
fn logout(user: &str, token: Option<String>, args: &ClientArgs) -> Result<()> {
    let sessions = SessionStore::default_home();
    let token = match token {
        Some(t) => t,
        None => sessions
            .load(user)?
            .with_context(|| format!("no saved session for {user} (run `gestor login {user}` first, or pass --token)"))?
            .token,
    };
    let mut c = client(args)?;
    let d = c.logout(user, &token).map_err(describe)?;
    remember(&c);
    sessions.forget(user)?;
    if args.json {
        print_json(&d)?;
    } else {
        outln!("logged out {user}")?;
    }
    Ok(())
}

/// `gestor bench`: against a running ring, or two local rings compared.
fn run_bench(b: BenchArgs) -> Result<()> {
    let args = b.client;
    if b.compare_insecure {
        return bench_compare(
            gestor::bench::CompareOptions {
                nodes: b.nodes,
                transport: args.transport,
                storage: b.storage,
                threads: b.threads,
                duration: Duration::from_secs(b.duration_secs),
                users: b.users,
                rounds: b.rounds,
                keep_data: b.keep_data,
            },
            args.json,
        );
    }
    let operator = match b.preload {
        0 => None,
        _ => Some(operator_layer(
            b.credential,
            &args,
            "gestor bench --preload",
        )?),
    };
    let report = gestor::bench::run(gestor::bench::BenchOptions {
        gestores: args.gestores.clone(),
        transport: args.transport,
        trust: args.trust.trust()?,
        threads: b.threads,
        duration: Duration::from_secs(b.duration_secs),
        users: b.users,
        prefix: b.prefix,
        flood_threads: b.flood_threads,
        spread: true,
        phases: b.phases,
        preload: b.preload,
        operator,
    })?;
    if args.json {
        print_json(&report)?;
    } else {
        gestor::bench::print_report(&report)?;
    }
    Ok(())
}

/// `gestor copies`: how many gestores hold each record's newest version.
fn count_copies(copies: usize, credential: Option<PathBuf>, args: &ClientArgs) -> Result<()> {
    let start = args.gestores.first().cloned().unwrap_or_default();
    let operator = operator_layer(credential, args, "gestor copies")?;
    let report = gestor::copies::run(&operator, &start, copies)?;
    if args.json {
        return print_json(&report);
    }
    outln!(
        "{} gestores, {} records, wanted on {} gestores each",
        report.gestores.len(),
        report.records,
        report.wanted
    )?;
    for (n, count) in &report.histogram {
        outln!("  held on {n} gestores: {count} records")?;
    }
    if report.under.is_empty() {
        outln!("  no record below the wanted count")?;
    } else {
        outln!("  {} records below the wanted count", report.under.len())?;
    }
    if !report.unreachable.is_empty() {
        outln!("  unreachable: {}", report.unreachable.join(", "))?;
    }
    Ok(())
}

/// `gestor call KIND --body JSON`: any kind, untyped.
fn call(kind: &str, body: &str, args: &ClientArgs) -> Result<()> {
    let body: serde_json::Value = serde_json::from_str(body).context("--body is not valid JSON")?;
    let reply = client(args)?
        .call(kind, json_to_cbor(&body))
        .map_err(describe)?;
    outln!("{}", serde_json::to_string_pretty(&cbor_to_json(&reply))?)?;
    Ok(())
}

/// A client layer holding an operator credential, for gestor-internal kinds.
fn operator_layer(
    credential: Option<PathBuf>,
    args: &ClientArgs,
    what: &str,
) -> Result<gestor_secure::SecureLayer> {
    let (Some(credential), Some(cluster_pub)) = (credential, &args.trust.cluster_pub) else {
        anyhow::bail!("{what} needs --credential FILE (an operator credential from `gestor cluster admit`) and --cluster-pub FILE: it is gestor-internal");
    };
    Ok(gestor_secure::SecureLayer::new(
        build_transport(args.transport),
        gestor_secure::SecureConfig::gestor(
            gestor_secure::CredentialFile::load(&credential)?,
            gestor_secure::ClusterPub::load(cluster_pub)?,
        ),
    ))
}

fn import_accounts(
    file: &std::path::Path,
    batch: usize,
    credential: Option<PathBuf>,
    args: &ClientArgs,
) -> Result<()> {
    let entries = gestor::import::read_entries(file)?;
    let layer = operator_layer(credential, args, "gestor import")?;
    let mut client =
        gestor_client::client::Client::new(layer, args.gestores.clone(), Duration::from_secs(60));
    let summary = gestor::import::run(&mut client, entries, batch);
    if args.json {
        print_json(&summary)?;
    } else {
        outln!(
            "imported {} of {} accounts in {:.1} s ({} already present, {} refused)",
            summary.imported,
            summary.entries,
            summary.seconds,
            summary.existing,
            summary.refused.len()
        )?;
        for r in summary.refused.iter().take(10) {
            outln!("  refused {}: {} ({})", r.username, r.message, r.code)?;
        }
    }
    if !summary.refused.is_empty() {
        anyhow::bail!(
            "{} accounts were not imported (see above); running the import again retries them",
            summary.refused.len()
        );
    }
    Ok(())
}

fn bench_compare(o: gestor::bench::CompareOptions, json: bool) -> Result<()> {
    // With --json, stdout is the report alone.
    if !json {
        outln!(
            "bench: secure vs --insecure, {} gestores each ({}, {}), {} threads, {} users, {} alternating rounds, {} s of lookups per ring; starting both rings…",
            o.nodes,
            o.transport,
            o.storage,
            o.threads,
            o.users,
            o.rounds,
            o.duration.as_secs()
        )?;
    }
    let r = gestor::bench::compare(o)?;
    if json {
        return print_json(&r);
    }
    gestor::bench::print_compare(&r)?;
    Ok(())
}

/// `gestor status --watch SECS`: the status again every `secs` seconds
/// (screen cleared on a terminal; with `--json`, one JSON document a line)
/// until Ctrl-C, SIGTERM, a closed pipe or `count` refreshes. A gestor that
/// does not answer is shown as such, and the watch goes on.
fn watch_status(args: &ClientArgs, secs: f64, count: Option<u64>) -> Result<()> {
    use std::io::IsTerminal;
    use std::sync::atomic::{AtomicBool, Ordering};
    if !(secs.is_finite() && secs >= 0.1) {
        anyhow::bail!("--watch takes a period of at least 0.1 seconds, not {secs}");
    }
    if count == Some(0) {
        anyhow::bail!("--count must be at least 1");
    }
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone()).context("cannot install signal handlers")?;
    }
    let every = Duration::from_secs_f64(secs);
    let tty = std::io::stdout().is_terminal();
    let mut c = client(args)?;
    let mut shown = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let reply = c.request::<node::Status>(&Empty);
        remember(&c);
        let when = gestor::chat_cli::clock_time(gestor_sdk::hlc::system_ms());
        if args.json {
            let line = match reply {
                Ok(r) => cbor_to_json(&to_value(&r)),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            };
            outln!("{}", serde_json::to_string(&line)?)?;
        } else {
            if tty {
                // Home and clear: a refreshed screen rather than a scroll.
                out!("\x1b[H\x1b[2J")?;
            } else if shown > 0 {
                outln!()?;
            }
            outln!("status at {when}, every {secs} s (Ctrl-C stops)")?;
            match reply {
                Ok(r) => print_status(&cbor_to_json(&to_value(&r)))?,
                Err(e) => outln!("error: {e}")?,
            }
        }
        shown += 1;
        if count.is_some_and(|n| shown >= n) {
            break;
        }
        let until = std::time::Instant::now() + every;
        while !stop.load(Ordering::SeqCst) {
            if gestor::out::closed() {
                return Err(StdoutError::Closed.into());
            }
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
    Ok(())
}

fn print_status(s: &serde_json::Value) -> Result<(), StdoutError> {
    let field = |k: &str| {
        s.get(k)
            .map(|v| {
                v.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string())
            })
            .unwrap_or_default()
    };
    outln!("node        {}  ({})", field("id_hex"), field("address"))?;
    outln!(
        "backends    transport={} storage={}",
        field("transport"),
        field("storage")
    )?;
    outln!("plugins     {}", field("plugins"))?;
    outln!("records     {}", field("records"))?;
    outln!("initial     {}", field("initial_gestors"))?;
    outln!("security    {}", field("security"))?;
    if let Some(sections) = s.get("sections").and_then(|v| v.as_object()) {
        for (name, section) in sections {
            outln!("[{name}]")?;
            if let Some(obj) = section.as_object() {
                for (k, v) in obj {
                    outln!("  {k:<14} {v}")?;
                }
            } else {
                outln!("  {section}")?;
            }
        }
    }
    Ok(())
}
