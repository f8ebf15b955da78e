//! `gestor chat`, `gestor send` and `gestor inbox`: the command-line edge of
//! the chat client library (anyhow errors, stdout output).

use crate::config::TransportKind;
use crate::out::StdoutError;
use crate::outln;
use anyhow::{Context, Result};
use clap::Args;
use gestor_client::chat::{
    deliver_pending, fetch_mailbox, login, remember_gestores, ChatClient, ChatError, ChatEvent,
    ChatMessage, ChatOptions, ChatStore, Failure, PassReport, Presence, Via,
};
use gestor_client::client::Client;
use gestor_client::directory::Session;
use gestor_sdk::hlc::system_ms;
use gestor_sdk::ErrorCode;
use std::io::BufRead;
use std::time::Duration;

/// A line on standard error that never panics (a closed stderr is ignored).
macro_rules! note {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr().lock(), $($t)*);
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
    /// The user's password, to log in when no saved session works (better in GESTOR_PASSWORD).
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
    /// Print the outcome as JSON (id, to, seq, status, outbox).
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
    if let Some(s) = opts.sessions().load(&opts.username)? {
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
        &opts.sessions(),
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
    format!(
        "[{}] <{} #{}> {}",
        clock_time(m.sent_ms),
        m.from,
        m.seq,
        m.text
    )
}

/// A wall-clock time (ms since the epoch) in local time: `HH:MM:SS` when it
/// is today, else `YYYY-MM-DD HH:MM:SS`.
pub fn clock_time(ms: u64) -> String {
    fn local(secs: i64) -> Option<libc::tm> {
        let t = secs as libc::time_t;
        // SAFETY: localtime_r only writes into the `tm` we own.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
        ok.then_some(tm)
    }
    let (Some(tm), Some(now)) = (
        local((ms / 1000) as i64),
        local((system_ms() / 1000) as i64),
    ) else {
        return format!("{ms} ms");
    };
    let time = format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec);
    if (tm.tm_year, tm.tm_yday) == (now.tm_year, now.tm_yday) {
        time
    } else {
        format!(
            "{:04}-{:02}-{:02} {time}",
            tm.tm_year + 1900,
            tm.tm_mon + 1,
            tm.tm_mday
        )
    }
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
///
/// A failure leaves nothing behind unless it says so: what can fail before
/// the message exists (no session and no way to log in, an unknown
/// recipient, no gestor answering) fails with nothing queued; a message
/// that could not be handed off, and cannot have arrived, is taken back out
/// of the outbox. It stays queued only when asked (`--no-mailbox` and the
/// recipient offline: exit 0, "queued"), behind earlier queued messages to
/// the same recipient, or when it may have arrived (no answer): then the
/// error says it stays queued, and sending the same text again re-sends
/// that message with its id (the recipient shows it once) instead of a
/// second one.
pub fn send(args: SendArgs) -> Result<()> {
    let opts = options(&args.user, &args.conn)?;
    let store = ChatStore::open(&opts.home, &args.user)?;
    let mut client = opts.client();
    let nothing = |what: &str| format!("not sent to {}, nothing queued: {what}", args.to);
    let session = session(&mut client, &store, &opts, &args.conn)
        .map_err(|e| anyhow::anyhow!(nothing(&format!("{e:#}"))))?;
    if let Err(e) = client.lookup(&args.to) {
        anyhow::bail!(nothing(&e.to_string()));
    }
    let (message, resent) = queue(&store, &opts, &args)?;
    let report = hand_off(&mut client, &store, &opts, &args, session);
    remember_gestores(&opts.sessions(), &client);
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            // Nothing carried it (the pass failed on local state or login).
            if !resent && store.withdraw(&message.id)? {
                anyhow::bail!(nothing(&e.to_string()));
            }
            return Err(e.into());
        }
    };
    let sent = settle(&store, &opts, &report, message, resent)?;
    if matches!(
        sent.outcome,
        Outcome::Sent(_) | Outcome::Queued | Outcome::Gone
    ) {
        store.add_contacts(std::slice::from_ref(&args.to))?;
    }
    if args.json {
        print_sent_json(&sent)?;
    }
    tell(&args, &sent)
}

/// The message to send: the unconfirmed one with the same text and
/// recipient when there is one (sent again with its id), else a new one.
fn queue(store: &ChatStore, opts: &ChatOptions, args: &SendArgs) -> Result<(ChatMessage, bool)> {
    if let Some(m) = store.unconfirmed(&args.to, &args.text)? {
        note!(
            "#{} to {} with this text is still unconfirmed in the outbox: sending it again (same id)",
            m.seq, args.to
        );
        return Ok((m, true));
    }
    let m = store.enqueue(&args.to, &args.text, opts.use_mailbox, system_ms())?;
    Ok((m, false))
}

/// One send-pending pass for the recipient; again after a fresh login when
/// the saved session was refused.
fn hand_off(
    client: &mut Client,
    store: &ChatStore,
    opts: &ChatOptions,
    args: &SendArgs,
    session: Session,
) -> Result<PassReport, ChatError> {
    let secure = opts.layer();
    let to = Some(args.to.as_str());
    let report = deliver_pending(client, secure.clone(), store, &session, opts, to)?;
    if !report.unauthorized {
        return Ok(report);
    }
    match relogin(client, store, opts, &args.conn) {
        Ok(fresh) => deliver_pending(client, secure, store, &fresh, opts, to),
        Err(e) => Err(ChatError::Usage(format!("{e:#}"))),
    }
}

/// What became of the message `gestor send` queued.
enum Outcome {
    Sent(Via),
    Failed(Failure),
    Queued,
    Unconfirmed,
    Withdrawn,
    Gone,
}

/// The message, its outcome, and what the pass said about it.
struct Sent {
    message: ChatMessage,
    outcome: Outcome,
    /// Messages still in the outbox.
    waiting: usize,
    /// Why the recipient's first waiting message was not handed off.
    reason: String,
    /// Whether that first waiting message is this one.
    ours_first: bool,
}

/// Decide the outcome from the pass, and leave the outbox to match: a
/// message that cannot have arrived is taken back, one that may have is
/// marked unconfirmed.
fn settle(
    store: &ChatStore,
    opts: &ChatOptions,
    report: &PassReport,
    message: ChatMessage,
    resent: bool,
) -> Result<Sent> {
    let sent = report.sent.iter().find(|(m, _)| m.id == message.id);
    let failed = report.failed.iter().find(|f| f.message.id == message.id);
    let stuck = report.stuck.get(&message.to);
    let ours_first = stuck.is_some_and(|(id, _)| *id == message.id);
    let outcome = match (sent, failed) {
        (Some((_, via)), _) => Outcome::Sent(*via),
        (None, Some(f)) => Outcome::Failed(f.clone()),
        // Asked for: keep it for the recipient's next appearance.
        _ if !opts.use_mailbox || !ours_first => Outcome::Queued,
        _ if resent || report.uncertain.contains(&message.id) => {
            store.mark_unconfirmed(&message.id)?;
            Outcome::Unconfirmed
        }
        _ if store.withdraw(&message.id)? => Outcome::Withdrawn,
        // Handed off meanwhile by another client of this user (`gestor chat`).
        _ => Outcome::Gone,
    };
    Ok(Sent {
        message,
        outcome,
        waiting: report.waiting,
        reason: stuck.map(|(_, why)| why.clone()).unwrap_or_default(),
        ours_first,
    })
}

/// `gestor send --json`: id, to, seq, status, outbox, reason.
fn print_sent_json(sent: &Sent) -> Result<()> {
    let status = match sent.outcome {
        Outcome::Sent(Via::Direct) => "direct",
        Outcome::Sent(Via::Mailbox) => "mailbox",
        Outcome::Failed(_) => "failed",
        Outcome::Queued => "queued",
        Outcome::Unconfirmed => "unconfirmed",
        Outcome::Withdrawn => "not_sent",
        Outcome::Gone => "handed_off",
    };
    let m = &sent.message;
    outln!(
        "{}",
        serde_json::to_string_pretty(&serde_json::json!({
            "id": m.id, "to": m.to, "seq": m.seq, "status": status,
            "outbox": sent.waiting, "reason": sent.reason,
        }))?
    )?;
    Ok(())
}

/// The outcome in words (unless `--json`), and as the exit status.
fn tell(args: &SendArgs, sent: &Sent) -> Result<()> {
    let (user, to, seq) = (&args.user, &args.to, sent.message.seq);
    let reason = &sent.reason;
    let quiet = args.json;
    match &sent.outcome {
        Outcome::Sent(via) if !quiet => outln!("#{seq} to {to}: {}", via_text(*via))?,
        Outcome::Gone if !quiet => {
            outln!("#{seq} to {to}: handed off by another client of {user}")?
        }
        Outcome::Queued if !quiet => {
            let behind = if sent.ours_first {
                String::new()
            } else {
                format!(", behind earlier messages to {to}")
            };
            outln!(
                "#{seq} to {to}: queued in {user}'s outbox ({} waiting{behind}: {reason}); `gestor chat {user}` delivers it when {to} is online",
                sent.waiting
            )?
        }
        Outcome::Sent(_) | Outcome::Gone | Outcome::Queued => {}
        Outcome::Failed(f) => {
            if !quiet {
                outln!("{}", failure_line(f))?;
            }
            anyhow::bail!("#{seq} to {to} not delivered; nothing queued")
        }
        Outcome::Withdrawn => {
            anyhow::bail!("not sent to {to}, nothing queued: {reason}")
        }
        Outcome::Unconfirmed => anyhow::bail!(
            "#{seq} to {to} not confirmed ({reason}); it may have arrived, so it stays queued in {user}'s outbox: the next `gestor send {user}` or `gestor chat {user}` sends it again with the same id and {to} sees it once (running this command again does not send it twice)"
        ),
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
        remember_gestores(&opts.sessions(), &client);
    }
    store.release_held(opts.gap_wait.as_millis() as u64, system_ms())?;
    let messages = store.inbox()?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&messages)?)?;
    } else {
        for m in &messages {
            outln!("{}", message_line(m))?;
        }
        for f in &bounced {
            outln!("{}", failure_line(f))?;
        }
    }
    let held = store.held_count()?;
    if held > 0 {
        note!("{held} message(s) held until the earlier ones from their sender arrive");
    }
    Ok(())
}

const HELP: &str = "commands:
  /to USER            talk to USER: plain text lines go to USER from now on
  /to                 show whom plain text goes to
  TEXT                a line not starting with / or @ goes to the /to user
  /send USER TEXT     send a message to USER (also: @USER TEXT)
  /presence USER      where is USER, online or not
  /contacts           contacts and their presence
  /add USER           watch USER's presence
  /inbox              every message received
  /outbox             messages not handed off yet
  /quit               hand off the outbox (up to --flush-ms), log out, exit (also end of input)
messages show the time they were sent ([HH:MM:SS], with the date when not today)";

/// `gestor chat USER`: interactive; reads commands from stdin, prints events.
///
/// One thread reads standard input; this one prints events and runs
/// commands. The chat ends at `/quit`, at the end of input, or when its
/// output is closed (`gestor chat alice | head`): in every case it hands off
/// the outbox and logs out before exiting.
pub fn chat(args: ChatArgs) -> Result<()> {
    let mut opts = options(&args.user, &args.conn)?;
    let store = ChatStore::open(&opts.home, &args.user)?;
    opts.address = address(&store, &args.conn)?;
    opts.contacts = args.contacts.clone();
    opts.retry_every = Duration::from_millis(args.retry_ms.max(100));
    drop(store);
    let client = ChatClient::start(opts.clone()).map_err(anyhow::Error::from)?;
    let events = client.events().clone();
    let shown = show_start(&client, &args.user, &opts.address);
    let ended = match shown {
        Ok(()) => converse(&client),
        Err(e) => Err(e),
    };
    // Hand off and log out however the conversation ended.
    let flushed = client.flush(Duration::from_millis(args.flush_ms));
    let left = client.outbox_len().unwrap_or(0);
    let quit = client.quit();
    let mut farewell = Ok(());
    if ended.is_ok() {
        // What the hand-off did (sent, undeliverable) before the farewell.
        for e in events.try_iter() {
            farewell = farewell.and_then(|()| print_event(&e));
        }
        if !flushed && farewell.is_ok() {
            farewell = outln!(
                "{left} message(s) stay in the outbox for the next `gestor chat {}`",
                args.user
            );
        }
        quit.map_err(anyhow::Error::from)?;
        if farewell.is_ok() {
            farewell = outln!("bye");
        }
        farewell?;
    } else {
        if let Err(e) = quit {
            tracing::warn!("log out: {e}");
        }
        ended?;
    }
    Ok(())
}

fn show_start(client: &ChatClient, user: &str, address: &str) -> Result<(), StdoutError> {
    outln!("chat: {user} listening on {address}; /help for commands")?;
    for m in &client.initial.delivered {
        outln!("{}", message_line(m))?;
    }
    Ok(())
}

/// What the input thread hands over.
enum Input {
    Line(String),
    End(Option<String>),
}

/// Events and commands until /quit, end of input or a closed output.
fn converse(client: &ChatClient) -> Result<(), StdoutError> {
    let (tx, lines) = crossbeam_channel::bounded::<Input>(16);
    // Blocked in read() until a line or the end of input; when the chat
    // ends first, the process exits under it.
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            for line in std::io::stdin().lock().lines() {
                match line {
                    Ok(l) => {
                        if tx.send(Input::Line(l)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Input::End(Some(e.to_string())));
                        return;
                    }
                }
            }
            let _ = tx.send(Input::End(None));
        })
        .map_err(StdoutError::Io)?;
    let events = client.events().clone();
    let mut talk = Talk::default();
    loop {
        if crate::out::closed() {
            return Err(StdoutError::Closed);
        }
        crossbeam_channel::select! {
            recv(events) -> e => {
                if let Ok(e) = e {
                    print_event(&e)?;
                }
            }
            recv(lines) -> input => match input {
                Ok(Input::Line(line)) => match run_command(client, &mut talk, line.trim()) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(CommandError::Chat(e)) => outln!("error: {e}")?,
                    Err(CommandError::Stdout(e)) => return Err(e),
                },
                Ok(Input::End(Some(e))) => {
                    tracing::warn!("reading commands: {e}");
                    break;
                }
                Ok(Input::End(None)) | Err(_) => break,
            },
            default(Duration::from_millis(250)) => {}
        }
    }
    // Whatever arrived meanwhile is shown before the farewell.
    while let Ok(e) = events.try_recv() {
        print_event(&e)?;
    }
    Ok(())
}

fn print_event(e: &ChatEvent) -> Result<(), StdoutError> {
    match e {
        ChatEvent::Message(m) => outln!("{}", message_line(m)),
        ChatEvent::Presence(p) => outln!("{}", presence_line(p)),
        ChatEvent::Sent { to, seq, via, .. } => outln!("#{seq} to {to}: {}", via_text(*via)),
        ChatEvent::Undeliverable(f) => outln!("{}", failure_line(f)),
        ChatEvent::Problem(p) => outln!("! {p}"),
    }
}

/// The conversation's state: whom plain text goes to.
#[derive(Default)]
struct Talk {
    to: Option<String>,
}

enum CommandError {
    /// Shown, and the chat goes on.
    Chat(ChatError),
    /// Nobody reads the output any more: the chat ends.
    Stdout(StdoutError),
}

impl From<ChatError> for CommandError {
    fn from(e: ChatError) -> Self {
        CommandError::Chat(e)
    }
}

impl From<StdoutError> for CommandError {
    fn from(e: StdoutError) -> Self {
        CommandError::Stdout(e)
    }
}

fn send_to(client: &ChatClient, to: &str, text: &str) -> Result<(), CommandError> {
    if text.is_empty() {
        return Err(ChatError::Usage(format!("nothing to send to {to}")).into());
    }
    let m = client.send(to, text)?;
    outln!("#{} to {to}: queued", m.seq)?;
    Ok(())
}

/// `/to USER` (plain text goes to USER from now on), or `/to` (to whom?).
fn talk_to(client: &ChatClient, talk: &mut Talk, user: &str) -> Result<(), CommandError> {
    if user.is_empty() {
        match &talk.to {
            Some(to) => outln!("plain text goes to {to}")?,
            None => outln!("plain text goes to nobody yet: /to USER")?,
        }
        return Ok(());
    }
    client.add_contact(user)?;
    talk.to = Some(user.to_string());
    outln!("talking to {user}: plain text goes to {user}")?;
    Ok(())
}

/// `/presence USER`: where the ring says USER is now.
fn show_presence(client: &ChatClient, user: &str) -> Result<(), CommandError> {
    let f = client.lookup(user)?;
    outln!(
        "{} is {}{} (last seen {}; gestor {})",
        f.user,
        if f.online { "online" } else { "offline" },
        if f.address.is_empty() {
            String::new()
        } else {
            format!(" at {}", f.address)
        },
        clock_time(f.last_seen_ms),
        f.gestor
    )?;
    Ok(())
}

/// One input line; false means quit.
fn run_command(client: &ChatClient, talk: &mut Talk, line: &str) -> Result<bool, CommandError> {
    let usage = |s: &str| CommandError::Chat(ChatError::Usage(format!("usage: {s}")));
    if line.is_empty() {
        return Ok(true);
    }
    let (cmd, rest) = match line.split_once(char::is_whitespace) {
        Some((c, r)) => (c, r.trim()),
        None => (line, ""),
    };
    match cmd {
        "/quit" | "/exit" => return Ok(false),
        "/help" => outln!("{HELP}")?,
        "/to" if rest.contains(char::is_whitespace) => return Err(usage("/to USER")),
        "/to" => talk_to(client, talk, rest)?,
        "/send" | "/msg" => {
            let (to, text) = rest
                .split_once(char::is_whitespace)
                .ok_or_else(|| usage("/send USER TEXT"))?;
            send_to(client, to, text.trim())?;
        }
        c if c.starts_with('@') && c.len() > 1 => send_to(client, &c[1..], rest)?,
        "/presence" | "/who" if rest.is_empty() => return Err(usage("/presence USER")),
        "/presence" | "/who" => show_presence(client, rest)?,
        "/contacts" => {
            for (user, p) in client.contacts()? {
                match p {
                    Some(p) => outln!("{}", presence_line(&p))?,
                    None => outln!("* {user}: presence not known yet")?,
                }
            }
        }
        "/add" => {
            if rest.is_empty() {
                return Err(usage("/add USER"));
            }
            client.add_contact(rest)?;
            outln!("watching {rest}")?;
        }
        "/inbox" => {
            for m in client.inbox()? {
                outln!("{}", message_line(&m))?;
            }
        }
        "/outbox" => {
            for m in client.store().outbox()? {
                outln!(
                    "[{}] #{} to {}: {}",
                    clock_time(m.message.sent_ms),
                    m.message.seq,
                    m.message.to,
                    m.message.text
                )?;
            }
        }
        c if c.starts_with('/') => outln!("unknown command {c}; /help lists them")?,
        _ => match &talk.to {
            Some(to) => send_to(client, &to.clone(), line)?,
            None => {
                outln!("whom to? /to USER first (then plain text goes to USER), or @USER TEXT")?
            }
        },
    }
    Ok(true)
}
