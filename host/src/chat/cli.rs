//! `gestor chat`, `gestor send` and `gestor inbox`: the command-line edge of
//! the chat client library (anyhow errors, stdout output).

use super::{
    deliver_pending, fetch_mailbox, load_session, login, remember_gestores, ChatClient, ChatError,
    ChatEvent, ChatMessage, ChatOptions, ChatStore, Failure, Presence, Via,
};
use crate::client::Client;
use crate::config::TransportKind;
use crate::directory::Session;
use anyhow::{Context, Result};
use clap::Args;
use gestor_sdk::hlc::system_ms;
use gestor_sdk::ErrorCode;
use std::io::BufRead;
use std::time::Duration;

/// `println!` that ignores a closed stdout (`gestor inbox bob | head`)
/// instead of panicking.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($t)*);
    }};
}

/// Connection flags shared by the chat commands (same as the other client commands).
#[derive(Args, Clone, Debug)]
pub struct Conn {
    /// Gestor to ask (any member of the ring); repeat to give fallbacks.
    #[arg(
        long = "gestor",
        env = "GESTOR_URL",
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:7100"
    )]
    pub gestores: Vec<String>,
    /// Transport backend the ring uses (also used between chat clients).
    #[arg(long, value_enum, env = "GESTOR_TRANSPORT", default_value_t = TransportKind::Nng)]
    pub transport: TransportKind,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    #[arg(long, env = "GESTOR_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// HOST:PORT this user receives messages on (the login address); default:
    /// the address of the last `gestor chat` of this user.
    #[arg(long)]
    pub address: Option<String>,
    /// Keep messages for offline recipients in the outbox instead of leaving
    /// them in the recipient's mailbox on the ring.
    #[arg(long)]
    pub no_mailbox: bool,
    /// Report a message as undeliverable once it is this old and still in the outbox.
    #[arg(long, default_value_t = 24 * 3600 * 1000)]
    pub max_age_ms: u64,
    #[command(flatten)]
    pub trust: crate::security::TrustArgs,
}

#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    /// The user to chat as (logs in with --address).
    pub user: String,
    /// Watch this user's presence (repeatable; saved with the contacts).
    #[arg(long = "contact")]
    pub contacts: Vec<String>,
    /// On quit, try this long to hand off the outbox before exiting.
    #[arg(long, default_value_t = 5000)]
    pub flush_ms: u64,
    /// Fallback retry period of the outbox when no presence event comes.
    #[arg(long, default_value_t = 5000)]
    pub retry_ms: u64,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args, Clone, Debug)]
pub struct SendArgs {
    /// The sender (its saved session is used, or it logs in).
    pub user: String,
    /// The recipient.
    pub to: String,
    /// The message text (one argument; quote it).
    pub text: String,
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: Conn,
}

#[derive(Args, Clone, Debug)]
pub struct InboxArgs {
    /// The user whose mailbox to fetch.
    pub user: String,
    /// Print the messages as a JSON array.
    #[arg(long)]
    pub json: bool,
    /// Show what is on disk without fetching the mailbox.
    #[arg(long)]
    pub no_fetch: bool,
    #[command(flatten)]
    pub conn: Conn,
}

fn options(user: &str, conn: &Conn) -> Result<ChatOptions> {
    let mut o = ChatOptions::new(
        user,
        conn.password.as_deref().unwrap_or(""),
        conn.address.as_deref().unwrap_or(""),
        conn.gestores.clone(),
    );
    o.transport = conn.transport;
    o.timeout = Duration::from_millis(conn.timeout_ms);
    o.use_mailbox = !conn.no_mailbox;
    o.max_age = Duration::from_millis(conn.max_age_ms);
    o.trust = conn.trust.trust()?;
    Ok(o)
}

/// The login address: `--address`, else the one saved by the last `gestor chat`.
fn address(store: &ChatStore, conn: &Conn) -> Result<String> {
    if let Some(a) = &conn.address {
        return Ok(a.clone());
    }
    store.profile()?.address.with_context(|| {
        format!(
            "{} must log in and no address is known: pass --address HOST:PORT",
            store.user()
        )
    })
}

/// The saved session, or a fresh login.
fn session(
    client: &mut Client,
    store: &ChatStore,
    opts: &ChatOptions,
    conn: &Conn,
) -> Result<Session> {
    if let Some(s) = load_session(&opts.home, &opts.username) {
        return Ok(s);
    }
    relogin(client, store, opts, conn)
}

fn relogin(
    client: &mut Client,
    store: &ChatStore,
    opts: &ChatOptions,
    conn: &Conn,
) -> Result<Session> {
    let address = address(store, conn)?;
    Ok(login(
        client,
        &opts.home,
        &opts.username,
        &opts.password,
        &address,
    )?)
}

fn via_text(via: Via) -> &'static str {
    match via {
        Via::Direct => "delivered directly",
        Via::Mailbox => "left in the mailbox",
    }
}

fn message_line(m: &ChatMessage) -> String {
    format!("<{} #{}> {}", m.from, m.seq, m.text)
}

fn failure_line(f: &Failure) -> String {
    format!(
        "! not delivered to {} (#{} {:?}): {}",
        f.message.to, f.message.seq, f.message.text, f.reason
    )
}

fn presence_line(p: &Presence) -> String {
    if !p.exists {
        format!("* {} does not exist", p.user)
    } else if p.online {
        format!("* {} is online at {}", p.user, p.address)
    } else {
        format!("* {} is offline", p.user)
    }
}

/// `gestor send USER TO TEXT`.
pub fn send(args: SendArgs) -> Result<()> {
    let opts = options(&args.user, &args.conn)?;
    let store = ChatStore::open(&opts.home, &args.user)?;
    let message = store.enqueue(&args.to, &args.text, opts.use_mailbox, system_ms())?;
    store.add_contacts(std::slice::from_ref(&args.to))?;
    let mut client = opts.client();
    let secure = opts.layer();
    let mut s = session(&mut client, &store, &opts, &args.conn)?;
    let mut report = deliver_pending(
        &mut client,
        secure.clone(),
        &store,
        &s,
        &opts,
        Some(&args.to),
    )?;
    if report.unauthorized {
        s = relogin(&mut client, &store, &opts, &args.conn)?;
        report = deliver_pending(&mut client, secure, &store, &s, &opts, Some(&args.to))?;
    }
    remember_gestores(&opts.home, &client);
    let sent = report.sent.iter().find(|(m, _)| m.id == message.id);
    let failed = report.failed.iter().find(|f| f.message.id == message.id);
    let status = match (sent, failed) {
        (Some((_, Via::Direct)), _) => "direct",
        (Some((_, Via::Mailbox)), _) => "mailbox",
        (None, Some(_)) => "failed",
        (None, None) => "queued",
    };
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "id": message.id, "to": message.to, "seq": message.seq, "status": status,
                "outbox": report.waiting,
            }))?
        );
    } else {
        match (sent, failed) {
            (Some((_, via)), _) => say!("#{} to {}: {}", message.seq, args.to, via_text(*via)),
            (None, Some(f)) => say!("{}", failure_line(f)),
            (None, None) => say!(
                "#{} to {}: queued in the outbox ({} waiting); `gestor chat {}` delivers it when {} is online",
                message.seq, args.to, report.waiting, args.user, args.to
            ),
        }
    }
    if failed.is_some() {
        anyhow::bail!("message not delivered");
    }
    Ok(())
}

/// `gestor inbox USER`.
pub fn inbox(args: InboxArgs) -> Result<()> {
    let opts = options(&args.user, &args.conn)?;
    let store = ChatStore::open(&opts.home, &args.user)?;
    let mut bounced = Vec::new();
    if !args.no_fetch {
        let mut client = opts.client();
        let mut s = session(&mut client, &store, &opts, &args.conn)?;
        let report = match fetch_mailbox(&mut client, &store, &s) {
            Err(e) if e.code() == Some(ErrorCode::Unauthorized) => {
                s = relogin(&mut client, &store, &opts, &args.conn)?;
                fetch_mailbox(&mut client, &store, &s)?
            }
            other => other?,
        };
        bounced = report.bounced;
        remember_gestores(&opts.home, &client);
    }
    store.release_held(opts.gap_wait.as_millis() as u64, system_ms())?;
    let messages = store.inbox()?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&messages)?);
    } else {
        for m in &messages {
            say!("{}", message_line(m));
        }
        for f in &bounced {
            say!("{}", failure_line(f));
        }
    }
    let held = store.held_count()?;
    if held > 0 {
        eprintln!("{held} message(s) held until the earlier ones from their sender arrive");
    }
    Ok(())
}

const HELP: &str = "commands:
  /send USER TEXT     send a message (also: @USER TEXT)
  /presence USER      where is USER, online or not
  /contacts           contacts and their presence
  /add USER           watch USER's presence
  /inbox              every message received
  /outbox             messages not handed off yet
  /quit               hand off the outbox (up to --flush-ms), log out, exit (also end of input)";

/// `gestor chat USER`: interactive; reads commands from stdin, prints events.
pub fn chat(args: ChatArgs) -> Result<()> {
    let mut opts = options(&args.user, &args.conn)?;
    let store = ChatStore::open(&opts.home, &args.user)?;
    opts.address = address(&store, &args.conn)?;
    opts.contacts = args.contacts.clone();
    opts.retry_every = Duration::from_millis(args.retry_ms.max(100));
    drop(store);
    let client = ChatClient::start(opts.clone()).map_err(anyhow::Error::from)?;
    say!(
        "chat: {} listening on {}; /help for commands",
        args.user,
        opts.address
    );
    for m in &client.initial.delivered {
        say!("{}", message_line(m));
    }
    let events = client.events().clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let printer_stop = stop.clone();
    let printer = std::thread::spawn(move || {
        while !printer_stop.load(std::sync::atomic::Ordering::SeqCst) || !events.is_empty() {
            if let Ok(e) = events.recv_timeout(Duration::from_millis(100)) {
                print_event(&e);
            }
        }
    });
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.context("reading commands")?;
        match run_command(&client, line.trim()) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) => say!("error: {e}"),
        }
    }
    let flushed = client.flush(Duration::from_millis(args.flush_ms));
    if !flushed {
        say!(
            "{} message(s) stay in the outbox for the next `gestor chat {}`",
            client.outbox_len().unwrap_or(0),
            args.user
        );
    }
    let result = client.quit();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = printer.join();
    result.map_err(anyhow::Error::from)?;
    say!("bye");
    Ok(())
}

fn print_event(e: &ChatEvent) {
    match e {
        ChatEvent::Message(m) => say!("{}", message_line(m)),
        ChatEvent::Presence(p) => say!("{}", presence_line(p)),
        ChatEvent::Sent { to, seq, via, .. } => say!("#{seq} to {to}: {}", via_text(*via)),
        ChatEvent::Undeliverable(f) => say!("{}", failure_line(f)),
        ChatEvent::Problem(p) => say!("! {p}"),
    }
}

/// One input line; false means quit.
fn run_command(client: &ChatClient, line: &str) -> Result<bool, ChatError> {
    let usage = |s: &str| ChatError::Usage(format!("usage: {s}"));
    if line.is_empty() {
        return Ok(true);
    }
    let (cmd, rest) = match line.split_once(char::is_whitespace) {
        Some((c, r)) => (c, r.trim()),
        None => (line, ""),
    };
    match cmd {
        "/quit" | "/exit" => return Ok(false),
        "/help" => say!("{HELP}"),
        "/send" | "/msg" => {
            let (to, text) = rest
                .split_once(char::is_whitespace)
                .ok_or_else(|| usage("/send USER TEXT"))?;
            let m = client.send(to, text.trim())?;
            say!("#{} to {to}: queued", m.seq);
        }
        c if c.starts_with('@') && c.len() > 1 => {
            let m = client.send(&c[1..], rest)?;
            say!("#{} to {}: queued", m.seq, &c[1..]);
        }
        "/presence" | "/who" => {
            if rest.is_empty() {
                return Err(usage("/presence USER"));
            }
            let f = client.lookup(rest)?;
            say!(
                "{} is {}{} (last seen {} ms since epoch; gestor {})",
                f.user,
                if f.online { "online" } else { "offline" },
                if f.address.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", f.address)
                },
                f.last_seen_ms,
                f.gestor
            );
        }
        "/contacts" => {
            for (user, p) in client.contacts()? {
                match p {
                    Some(p) => say!("{}", presence_line(&p)),
                    None => say!("* {user}: presence not known yet"),
                }
            }
        }
        "/add" => {
            if rest.is_empty() {
                return Err(usage("/add USER"));
            }
            client.add_contact(rest)?;
            say!("watching {rest}");
        }
        "/inbox" => {
            for m in client.inbox()? {
                say!("{}", message_line(&m));
            }
        }
        "/outbox" => {
            for m in client.store().outbox()? {
                say!("#{} to {}: {}", m.message.seq, m.message.to, m.message.text);
            }
        }
        _ => say!("unknown command; /help lists them"),
    }
    Ok(true)
}
