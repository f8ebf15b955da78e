//! `gestor bench`: load against a running ring, for operators sizing one.
//!
//! Runs the phases chosen with `--phases` (default all, in this order):
//! `register` (`--users` accounts; an existing one counts as done), `login`
//! (each user once, keeping the session token), `set_address`
//! (acknowledged address updates of random logged-in users) and `lookup`
//! (random users; after a register phase, login and lookups use only
//! the users that exist), from `--threads` client threads spread over the
//! `--gestor` entry points, each timed phase for `--duration-secs`; and
//! reports throughput and latency percentiles per phase. Bounded by the
//! user count and the duration.
//!
//! `--compare-insecure` ([`compare`]) starts two identical local rings
//! itself, one secure and one `--insecure` (plaintext), and runs the same
//! lookups on both, alternating, to measure what the secure layer costs.

use crate::config::{StorageKind, TransportKind};
use crate::local_ring::{LocalRing, RingSpec};
use anyhow::{bail, Result};
use gestor_client::client::{Client, ClientError};
use gestor_client::trust::Trust;
use gestor_secure::SecureLayer;
use rand::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A phase of `gestor bench`, selectable with `--phases`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "snake_case")]
pub enum PhaseName {
    Register,
    Login,
    SetAddress,
    Lookup,
}

impl PhaseName {
    pub const ALL: [PhaseName; 4] = [
        PhaseName::Register,
        PhaseName::Login,
        PhaseName::SetAddress,
        PhaseName::Lookup,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Register => "register",
            PhaseName::Login => "login",
            PhaseName::SetAddress => "set_address",
            PhaseName::Lookup => "lookup",
        }
    }
}

#[derive(Clone)]
pub struct BenchOptions {
    pub gestores: Vec<String>,
    pub transport: TransportKind,
    pub trust: Trust,
    pub threads: usize,
    pub duration: Duration,
    pub users: usize,
    pub prefix: String,
    /// Register-flood threads (through the first gestor) run beside a second
    /// lookup phase (through the other gestores, when more are given);
    /// 0 = no flooded phase.
    pub flood_threads: usize,
    /// Thread `t` asks gestor `t mod n` first instead of every thread the
    /// first one (a client sticks to the first gestor that answers).
    pub spread: bool,
    /// Phases to run, in [`PhaseName::ALL`] order whatever the order given.
    pub phases: Vec<PhaseName>,
    /// Accounts to load first with `dir.import` (`{prefix}p{i}`), through
    /// `operator` (a layer holding an operator credential); 0 = none.
    pub preload: usize,
    pub operator: Option<SecureLayer>,
}

#[derive(Debug, Serialize)]
pub struct Phase {
    #[serde(rename = "ops")]
    pub operations: u64,
    pub errors: u64,
    /// Answers `busy` or `rate_limited` (the gestor shedding load), not errors.
    pub busy: u64,
    pub seconds: f64,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_hops: f64,
    /// One error's message (the first one met by the lowest-numbered
    /// thread that met any; absent when `errors` is 0): what kind of
    /// failure the count is, without a debug log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub transport: String,
    pub threads: usize,
    pub users: usize,
    pub gestores: Vec<String>,
    /// By phase name (`register`, `login`, `set_address`, `lookup`): the
    /// phases that ran.
    pub phases: BTreeMap<&'static str, Phase>,
    /// Lookups while `flood_threads` register through the first gestor.
    pub lookup_flooded: Option<Phase>,
    /// The flood itself.
    pub flood: Option<Phase>,
    /// The secure layer's own cost, measured side by side in this run.
    pub channel: ChannelCost,
    /// One argon2id hash at the directory's default cost, timed here: the
    /// fastest of several, timed before the phases and again after them,
    /// in milliseconds. The fastest makes the strictest limit, and a
    /// timing disturbed by whatever else the machine was doing cannot
    /// lower the bar.
    pub argon2_hash_ms: f64,
    /// The machine's registration ceiling: cores ÷ the time of one hash
    /// (every registration and login hashes once).
    pub argon2_limit_per_s: f64,
    /// Context for the ceiling (with the register phase only): hashes per
    /// second with one hashing thread per core at once, timed after the
    /// phases. Below the ceiling by what the cores lose sharing memory
    /// bandwidth and cache.
    pub argon2_all_cores_per_s: Option<f64>,
    /// Bench users that do not exist (their registration was not
    /// acknowledged, or they answered `not_found`): login, set_address and
    /// lookup leave them out.
    pub absent_users: usize,
}

/// Serial round trips of a lookup-sized frame on 127.0.0.1: the bare
/// transport (plaintext) to a replier in another process (the floor), and
/// in this process to a bare replier and to one behind the secure layer
/// (session already made). Every reply is made on the replier's I/O thread.
#[derive(Debug, Serialize)]
pub struct ChannelCost {
    pub round_trips: usize,
    /// To `gestor bench-echo`, a process of its own, as a gestor is to its
    /// clients: the floor a lookup is compared with.
    pub process_p50_ms: f64,
    /// Both ends in this process. Not the floor: zmq then serves both ends
    /// from one I/O thread, which two processes never share (faster than
    /// two processes), and nng shares its threads and pollers between them
    /// (slower).
    pub plain_p50_ms: f64,
    pub secure_p50_ms: f64,
    /// secure p50 ÷ plaintext p50, both in this process.
    pub ratio: f64,
}

/// Frame size of a typical lookup request envelope.
const CHANNEL_FRAME: usize = 96;
const CHANNEL_ROUND_TRIPS: usize = 2_000;

fn p50(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v.get(v.len() / 2).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The floor's server: it echoes on the transport's I/O thread (the
/// fastest way a backend answers anything), like lookups on their owner.
struct Echo;

impl gestor_sdk::RequestHandler for Echo {
    fn handle(&self, request: &[u8]) -> Vec<u8> {
        request.to_vec()
    }
    fn triage(&self, request: &[u8], _source: Option<&str>) -> gestor_sdk::Triage {
        gestor_sdk::Triage::Reply(request.to_vec())
    }
}

/// Measure [`ChannelCost`] for `transport` (interleaved, so both see the
/// same machine load).
pub fn channel_cost(transport: TransportKind) -> Result<ChannelCost> {
    use gestor_sdk::transport::TransportOptions;
    let free = || -> Result<String> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        Ok(format!("tcp://127.0.0.1:{}", l.local_addr()?.port()))
    };
    let options = TransportOptions::default();
    let raw = gestor_backends::build_transport(transport);
    let plain_url = free()?;
    let _plain = raw.replier(&plain_url, std::sync::Arc::new(Echo), &options)?;
    // A throwaway cluster: the server is admitted, the client trusts it.
    let cluster = gestor_secure::ClusterKey::generate();
    let server = gestor_secure::SecureLayer::new(
        gestor_backends::build_transport(transport),
        gestor_secure::SecureConfig::gestor(cluster.admit("bench")?, cluster.public()),
    );
    let secure_url = free()?;
    let _secure = server.replier_with_fast_path(
        &secure_url,
        std::sync::Arc::new(|f: &[u8], _: &gestor_secure::Peer, _| f.to_vec()),
        std::sync::Arc::new(|f: &[u8], _: &gestor_secure::Peer| Some(f.to_vec())),
        &options,
    )?;
    let client = Trust::Cluster(cluster.public()).layer(transport);
    let echo = EchoProcess::start(transport, &free()?)?;
    let mut remote = gestor_backends::build_transport(transport).requester(&echo.url, &options)?;
    let mut plain = raw.requester(&plain_url, &options)?;
    let mut secure = client.requester(&secure_url, &options)?;
    let frame = vec![0x5au8; CHANNEL_FRAME];
    let timeout = Duration::from_secs(5);
    // Warm up all three (connection set-up, the handshake).
    for _ in 0..50 {
        remote.request(&frame, timeout)?;
        plain.request(&frame, timeout)?;
        secure.request(&frame, timeout)?;
    }
    let (mut r, mut p, mut s) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..CHANNEL_ROUND_TRIPS {
        let t = Instant::now();
        remote.request(&frame, timeout)?;
        r.push(t.elapsed());
        let t = Instant::now();
        plain.request(&frame, timeout)?;
        p.push(t.elapsed());
        let t = Instant::now();
        secure.request(&frame, timeout)?;
        s.push(t.elapsed());
    }
    let (plain_p50_ms, secure_p50_ms) = (p50(p), p50(s));
    Ok(ChannelCost {
        round_trips: CHANNEL_ROUND_TRIPS,
        process_p50_ms: p50(r),
        plain_p50_ms,
        secure_p50_ms,
        ratio: secure_p50_ms / plain_p50_ms.max(1e-9),
    })
}

/// How long `gestor bench-echo` may take to start, and at most lives.
const ECHO_START: Duration = Duration::from_secs(10);
const ECHO_LIFETIME: Duration = Duration::from_secs(600);

/// A `gestor bench-echo` child: a bare replier in a process of its own.
/// Stopped when dropped (its stdin closes, then it is killed if need be).
struct EchoProcess {
    url: String,
    child: std::process::Child,
}

impl EchoProcess {
    fn start(transport: TransportKind, url: &str) -> Result<EchoProcess> {
        use anyhow::Context;
        use std::io::BufRead;
        use std::process::{Command, Stdio};
        let exe = std::env::current_exe().context("cannot locate the gestor executable")?;
        let mut child = Command::new(exe)
            .args([
                "bench-echo",
                "--transport",
                &transport.to_string(),
                "--url",
                url,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start `gestor bench-echo`")?;
        let stdout = child.stdout.take().context("bench-echo: no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let process = EchoProcess {
            url: url.to_string(),
            child,
        };
        match rx.recv_timeout(ECHO_START) {
            Ok(line) if line.trim() == "ready" => Ok(process),
            Ok(line) => bail!("`gestor bench-echo` did not start: {:?}", line.trim()),
            Err(_) => bail!("`gestor bench-echo` not ready in {ECHO_START:?}"),
        }
    }
}

impl Drop for EchoProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `gestor bench-echo`: answer every request with its own bytes, on the
/// transport's I/O thread (the floor's far end), until stdin closes or
/// [`ECHO_LIFETIME`] passes. Prints `ready` once bound.
pub fn serve_echo(transport: TransportKind, url: &str) -> Result<()> {
    use std::io::{Read, Write};
    let options = gestor_sdk::transport::TransportOptions::default();
    let _replier = gestor_backends::build_transport(transport).replier(
        url,
        std::sync::Arc::new(Echo),
        &options,
    )?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "ready")?;
    stdout.flush()?;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(ECHO_LIFETIME);
    Ok(())
}

fn phase(
    mut latencies: Vec<Duration>,
    (errors, first_error): (u64, Option<String>),
    busy: u64,
    hops: u64,
    elapsed: Duration,
) -> Phase {
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let pick = |q: f64| {
        if latencies.is_empty() {
            0.0
        } else {
            ms(latencies[((latencies.len() - 1) as f64 * q).round() as usize])
        }
    };
    let n = latencies.len() as u64;
    Phase {
        operations: n,
        errors,
        busy,
        seconds: elapsed.as_secs_f64(),
        per_second: n as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: pick(0.50),
        p99_ms: pick(0.99),
        max_ms: latencies.last().map(|d| ms(*d)).unwrap_or(0.0),
        mean_hops: if n == 0 { 0.0 } else { hops as f64 / n as f64 },
        first_error,
    }
}

/// What the threads of one run measured, before percentiles.
#[derive(Default)]
struct Raw {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
    busy: u64,
    hops: u64,
    elapsed: Duration,
}

impl Raw {
    fn merge(&mut self, other: Raw) {
        self.latencies.extend(other.latencies);
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.busy += other.busy;
        self.hops += other.hops;
        self.elapsed += other.elapsed;
    }
    fn phase(self) -> Phase {
        phase(
            self.latencies,
            (self.errors, self.first_error),
            self.busy,
            self.hops,
            self.elapsed,
        )
    }
}

fn run_threads<F>(o: &BenchOptions, threads: usize, duration: Duration, work: F) -> Phase
where
    F: Fn(&mut Client, usize, u64) -> Option<Result<u32, ClientError>> + Send + Sync + Copy,
{
    let layers: Vec<SecureLayer> = (0..threads).map(|_| o.trust.layer(o.transport)).collect();
    run_raw(o, &layers, duration, work).phase()
}

/// One thread per layer in `layers` (a layer keeps its sessions from one
/// run to the next), each running `work` until `duration` has passed.
fn run_raw<F>(o: &BenchOptions, layers: &[SecureLayer], duration: Duration, work: F) -> Raw
where
    F: Fn(&mut Client, usize, u64) -> Option<Result<u32, ClientError>> + Send + Sync + Copy,
{
    let started = Instant::now();
    let results: Vec<Raw> = std::thread::scope(|scope| {
        let handles: Vec<_> = layers
            .iter()
            .enumerate()
            .map(|(t, layer)| {
                let mut gestores = o.gestores.clone();
                if o.spread && !gestores.is_empty() {
                    let n = gestores.len();
                    gestores.rotate_left(t % n);
                }
                let secure = layer.clone();
                scope.spawn(move || {
                    let mut client = Client::new(secure, gestores, Duration::from_secs(5));
                    let mut raw = Raw::default();
                    let mut i = 0u64;
                    while started.elapsed() < duration {
                        let t0 = Instant::now();
                        match work(&mut client, t, i) {
                            None => break,
                            Some(Ok(h)) => {
                                raw.latencies.push(t0.elapsed());
                                raw.hops += h as u64;
                            }
                            Some(Err(e)) if is_shed(&e) => raw.busy += 1,
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "bench: request failed");
                                raw.errors += 1;
                                raw.first_error.get_or_insert_with(|| e.to_string());
                            }
                        }
                        i += 1;
                    }
                    raw
                })
            })
            .collect();
        handles.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    let mut raw = Raw {
        elapsed: started.elapsed(),
        ..Raw::default()
    };
    for thread in results {
        raw.merge(thread);
    }
    raw
}

/// Register `users` (an existing one counts as done): each thread takes
/// every threads-th user. Bounded by the user count, with a generous time
/// cap. Those that exist afterwards go into `registered`.
fn register_users(o: &BenchOptions, users: &[u64], registered: &Mutex<Vec<u64>>) -> Phase {
    every_user_once(o, users, |c, n, name| {
        let hops = match c.register(name, "bench-password") {
            Ok(r) => r.hops,
            Err(ClientError::Remote(e)) if e.code == gestor_sdk::ErrorCode::Conflict => 0,
            Err(e) => return Err(e),
        };
        registered.lock().unwrap_or_else(|p| p.into_inner()).push(n);
        Ok(hops)
    })
}

/// Attempts for one user in a once-per-user phase after the gestor shed
/// the load (`busy`, `rate_limited`: "try again later"). Every user must end
/// up registered and logged in, or the later phases would look up users that
/// do not exist and count those lookups as errors.
const SHED_ATTEMPTS: u32 = 8;

fn is_shed(e: &ClientError) -> bool {
    matches!(e, ClientError::Remote(e) if matches!(
        e.code,
        gestor_sdk::ErrorCode::Busy | gestor_sdk::ErrorCode::RateLimited
    ))
}

/// Run `work(client, n, name)` once for every bench user `n` (each thread
/// takes every threads-th one), retrying a shed attempt after a growing
/// pause, as a client should; the user's latency includes its retries, and
/// the phase's `busy` counts the shed attempts. Bounded by the user count
/// and [`SHED_ATTEMPTS`], with a generous time cap.
fn every_user_once<F>(o: &BenchOptions, users: &[u64], work: F) -> Phase
where
    F: Fn(&mut Client, u64, &str) -> Result<u32, ClientError> + Send + Sync + Copy,
{
    let (threads, prefix) = (o.threads as u64, o.prefix.as_str());
    let shed = AtomicU64::new(0);
    let shed_count = &shed;
    let mut phase = run_threads(o, o.threads, Duration::from_secs(600), move |c, t, i| {
        let at = usize::try_from(t as u64 + i * threads).ok()?;
        let &n = users.get(at)?;
        let name = format!("{prefix}{n}");
        let mut attempt = 1;
        loop {
            match work(c, n, &name) {
                Err(e) if is_shed(&e) && attempt < SHED_ATTEMPTS => {
                    shed_count.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(25 << attempt.min(6)));
                    attempt += 1;
                }
                result => return Some(result),
            }
        }
    });
    phase.busy += shed.into_inner();
    phase
}

/// Lookups of random users among `users`, until `duration` has passed.
fn lookups_raw(o: &BenchOptions, users: &[u64], layers: &[SecureLayer], duration: Duration) -> Raw {
    run_raw(o, layers, duration, random_lookups(&o.prefix, users))
}

/// The address user `n` logs in with, then moves to (`moves` counts its
/// updates), all on 127.0.0.1: the bench never sends anything to them.
fn bench_address(n: u64, moves: u64) -> String {
    format!("127.0.0.1:{}", 20_000 + (n * 7 + moves) % 40_000)
}

/// The users the phases after register use: those that exist, after the
/// register phase (run here when asked for, into `phases`). A registration
/// not acknowledged (its deadline passed while the ring shed load) is the
/// register phase's error; looking that user up again would count it once
/// more, in every later phase. Without a register phase here (an earlier
/// run registered them), an untimed lookup of each tells.
fn users_that_exist(o: &BenchOptions, phases: &mut BTreeMap<&'static str, Phase>) -> Vec<u64> {
    let wants = |p: PhaseName| o.phases.contains(&p);
    let mut users: Vec<u64> = (0..o.users as u64).collect();
    if wants(PhaseName::Register) {
        let registered = Mutex::new(Vec::new());
        phases.insert("register", register_users(o, &users, &registered));
        users = registered.into_inner().unwrap_or_else(|p| p.into_inner());
    } else if wants(PhaseName::Login)
        || wants(PhaseName::SetAddress)
        || wants(PhaseName::Lookup)
        || o.flood_threads > 0
    {
        users = existing_users(o, &users);
    }
    users.sort_unstable();
    users.dedup();
    users
}

/// Which of `users` exist: each looked up once, untimed. Only a
/// `not_found` answer leaves a user out; one that fails otherwise is kept,
/// and its failures count in the phases that follow.
fn existing_users(o: &BenchOptions, users: &[u64]) -> Vec<u64> {
    let absent = Mutex::new(Vec::new());
    let absent_ref = &absent;
    every_user_once(o, users, move |c, n, name| match c.lookup(name) {
        Err(ClientError::Remote(e)) if e.code == gestor_sdk::ErrorCode::NotFound => {
            absent_ref.lock().unwrap_or_else(|p| p.into_inner()).push(n);
            Err(ClientError::Remote(e))
        }
        other => other.map(|f| f.hops),
    });
    let mut absent = absent.into_inner().unwrap_or_else(|p| p.into_inner());
    absent.sort_unstable();
    users
        .iter()
        .copied()
        .filter(|n| absent.binary_search(n).is_err())
        .collect()
}

/// Log every one of `users` in once (each thread takes every threads-th
/// user), keeping the tokens for `set_address`. Bounded by the user count.
fn login_users(o: &BenchOptions, users: &[u64], tokens: &Mutex<BTreeMap<u64, String>>) -> Phase {
    every_user_once(o, users, |c, n, name| {
        c.login(name, "bench-password", &bench_address(n, 0))
            .map(|s| {
                tokens
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(n, s.token);
                s.hops
            })
    })
}

/// Acknowledged address updates of random logged-in users.
fn set_addresses(o: &BenchOptions, tokens: &BTreeMap<u64, String>) -> Phase {
    let logged_in: Vec<(&u64, &String)> = tokens.iter().collect();
    let (logged_in, prefix) = (&logged_in, o.prefix.as_str());
    run_threads(o, o.threads, o.duration, move |c, _t, i| {
        let &(n, token) = logged_in.get(rand::thread_rng().gen_range(0..logged_in.len()))?;
        let name = format!("{prefix}{n}");
        Some(
            c.set_address(&name, token, &bench_address(*n, i + 1))
                .map(|d| d.hops),
        )
    })
}

pub fn run(o: BenchOptions) -> Result<BenchReport> {
    if o.threads == 0 || o.users == 0 {
        bail!("--threads and --users must be at least 1");
    }
    if o.phases.is_empty() {
        bail!("--phases names no phase (register, login, set_address, lookup)");
    }
    let wants = |p: PhaseName| o.phases.contains(&p);
    // Timed before any load and again after it, on the machine the
    // gestores run on.
    let hash_before_ms = time_one_hash()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut phases = BTreeMap::new();
    if o.preload > 0 {
        phases.insert("preload", preload(&o)?);
    }
    let users = users_that_exist(&o, &mut phases);
    let absent_users = o.users.saturating_sub(users.len());
    let tokens = Mutex::new(BTreeMap::new());
    if wants(PhaseName::Login) || wants(PhaseName::SetAddress) {
        let login = login_users(&o, &users, &tokens);
        if wants(PhaseName::Login) {
            phases.insert("login", login);
        }
    }
    if wants(PhaseName::SetAddress) {
        let tokens = tokens.into_inner().unwrap_or_else(|p| p.into_inner());
        if tokens.is_empty() {
            bail!(
                "set_address: no bench user could log in (register them first: --phases register)"
            );
        }
        phases.insert("set_address", set_addresses(&o, &tokens));
    }
    if (wants(PhaseName::Lookup) || o.flood_threads > 0) && users.is_empty() {
        bail!("lookup: no bench user is registered (see the register phase's errors)");
    }
    if wants(PhaseName::Lookup) {
        let lookups = random_lookups(&o.prefix, &users);
        phases.insert("lookup", run_threads(&o, o.threads, o.duration, lookups));
    }
    let (lookup_flooded, flood) = match o.flood_threads {
        0 => (None, None),
        _ => {
            let (flooded, flood) = lookups_under_flood(&o, &users);
            (Some(flooded), flood)
        }
    };
    let argon2_hash_ms = hash_before_ms.min(time_one_hash()?);
    let argon2_all_cores_per_s = match wants(PhaseName::Register) {
        true => Some(hashes_per_second_on_every_core(cores)?),
        false => None,
    };
    Ok(BenchReport {
        transport: o.transport.to_string(),
        threads: o.threads,
        users: o.users,
        gestores: o.gestores.clone(),
        phases,
        lookup_flooded,
        flood,
        channel: channel_cost(o.transport)?,
        argon2_hash_ms,
        argon2_limit_per_s: cores as f64 * 1000.0 / argon2_hash_ms.max(1e-9),
        argon2_all_cores_per_s,
        absent_users,
    })
}

/// Hashes per second at the default cost with `cores` threads hashing at
/// once for about two seconds, each in its own reused block buffer.
fn hashes_per_second_on_every_core(cores: usize) -> Result<f64> {
    let argon = default_argon2()?;
    let started = Instant::now();
    let until = started + Duration::from_secs(2);
    let counts = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cores.max(1))
            .map(|_| {
                let argon = &argon;
                scope.spawn(move || -> Result<u32> {
                    let mut blocks = vec![argon2::Block::default(); argon.params().block_count()];
                    let mut out = [0u8; 32];
                    let mut hashed = 0;
                    while Instant::now() < until {
                        argon
                            .hash_password_into_with_memory(
                                b"bench-password",
                                b"bench-salt-16byt",
                                &mut out,
                                &mut blocks,
                            )
                            .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
                        hashed += 1;
                    }
                    Ok(hashed)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("hashing thread panicked")))
            })
            .collect::<Result<Vec<u32>>>()
    })?;
    let total: u32 = counts.iter().sum();
    Ok(f64::from(total) / started.elapsed().as_secs_f64())
}

/// The directory's default password cost (plugins/directory: 19 MiB, 2
/// passes, 1 lane), which the bench hashes at to know the machine's limit.
fn default_argon2() -> Result<argon2::Argon2<'static>> {
    let params = argon2::Params::new(19_456, 2, 1, None)
        .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
    Ok(argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// Fastest time of one hash at the default cost, in milliseconds, made the
/// way the directory makes it (plugins/directory/src/password.rs): in a
/// block buffer allocated once and wiped after each hash. Timing
/// `hash_password_into` instead would count a fresh 19 MiB allocation per
/// hash, which the gestores no longer pay, and flatter the ratio.
fn time_one_hash() -> Result<f64> {
    use zeroize::Zeroize;
    let argon = default_argon2()?;
    let mut blocks = vec![argon2::Block::default(); argon.params().block_count()];
    let mut out = [0u8; 32];
    let times: Vec<f64> = (0..8)
        .map(|_| {
            let t = Instant::now();
            let hashed = argon.hash_password_into_with_memory(
                b"bench-password",
                b"bench-salt-16byt",
                &mut out,
                &mut blocks,
            );
            blocks.iter_mut().for_each(Zeroize::zeroize);
            hashed
                .map(|_| t.elapsed().as_secs_f64() * 1000.0)
                .map_err(|e| anyhow::anyhow!("argon2: {e}"))
        })
        .collect::<Result<_>>()?;
    // The first hash faults the buffer in (the directory's threads pay
    // that once in their life), so it is never the fastest.
    Ok(times.into_iter().fold(f64::INFINITY, f64::min))
}

/// Lookups of random users among `users`: the lookup phase's work.
fn random_lookups<'a>(
    prefix: &'a str,
    users: &'a [u64],
) -> impl Fn(&mut Client, usize, u64) -> Option<Result<u32, ClientError>> + Send + Sync + Copy + 'a
{
    move |c, _t, _i| {
        let n = users.get(rand::thread_rng().gen_range(0..users.len().max(1)))?;
        Some(c.lookup(&format!("{prefix}{n}")).map(|f| f.hops))
    }
}

/// The same lookups again while a register flood goes through the first
/// gestor: how much does one client's flood cost the others? The flooded
/// lookups, and the flood (none if its threads panicked).
fn lookups_under_flood(o: &BenchOptions, users: &[u64]) -> (Phase, Option<Phase>) {
    let mut flood_opts = o.clone();
    flood_opts.gestores.truncate(1);
    let run_id: u64 = rand::random::<u32>() as u64;
    let flood_opts = &flood_opts;
    let prefix = o.prefix.as_str();
    std::thread::scope(|scope| {
        let flood = scope.spawn(move || {
            run_threads(
                flood_opts,
                flood_opts.flood_threads,
                o.duration,
                move |c, t, i| {
                    let name = format!("{prefix}f{run_id:x}t{t}x{i}");
                    Some(c.register(&name, "bench-password").map(|r| r.hops))
                },
            )
        });
        // Lookups from "another client": through the other gestores
        // given, when there are others.
        let mut others = o.clone();
        if others.gestores.len() > 1 {
            others.gestores.remove(0);
        }
        let lookups = random_lookups(prefix, users);
        let flooded = run_threads(&others, o.threads, o.duration, lookups);
        (flooded, flood.join().ok())
    })
}

/// Fill the ring with `o.preload` accounts through `dir.import`, all with
/// one argon2id hash of the bench password (hashed once here, at the
/// directory's default cost): how operators load a million users.
fn preload(o: &BenchOptions) -> Result<Phase> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let Some(operator) = &o.operator else {
        bail!(
            "--preload needs --credential (an operator credential): importing is gestor-internal"
        );
    };
    let salt = SaltString::encode_b64(b"gestor-bench-preload")
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let hash = default_argon2()?
        .hash_password(b"bench-password", &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?
        .to_string();
    let entries: Vec<gestor_api::dir::ImportEntry> = (0..o.preload)
        .map(|i| gestor_api::dir::ImportEntry {
            username: format!("{}p{i}", o.prefix),
            password_hash: hash.clone(),
            address: None,
        })
        .collect();
    let mut client = Client::new(
        operator.clone(),
        o.gestores.clone(),
        Duration::from_secs(60),
    );
    let started = Instant::now();
    let summary = crate::import::run(&mut client, entries, gestor_api::dir::MAX_IMPORT_BATCH);
    let elapsed = started.elapsed();
    let done = summary.imported + summary.existing;
    Ok(Phase {
        operations: done,
        errors: summary.refused.len() as u64,
        busy: 0,
        seconds: elapsed.as_secs_f64(),
        per_second: done as f64 / elapsed.as_secs_f64().max(1e-9),
        p50_ms: 0.0,
        p99_ms: 0.0,
        max_ms: 0.0,
        mean_hops: 0.0,
        first_error: summary
            .refused
            .first()
            .map(|r| format!("{}: {}", r.username, r.message)),
    })
}

/// One table of phases, first column titled `first`.
fn print_rows(first: &str, rows: &[(&str, &Phase)]) -> Result<(), crate::out::StdoutError> {
    crate::outln!(
        "  {:<18} {:>8} {:>7} {:>6} {:>10} {:>8} {:>8} {:>8} {:>6}",
        first,
        "ops",
        "errors",
        "busy",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "hops"
    )?;
    for (name, p) in rows {
        crate::outln!(
            "  {:<18} {:>8} {:>7} {:>6} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>6.2}",
            name,
            p.operations,
            p.errors,
            p.busy,
            p.per_second,
            p.p50_ms,
            p.p99_ms,
            p.max_ms,
            p.mean_hops
        )?;
    }
    for (name, p) in rows {
        if let Some(e) = &p.first_error {
            crate::outln!("  {name}: first error: {e}")?;
        }
    }
    Ok(())
}

/// [`compare`]'s report as a table.
pub fn print_compare(r: &CompareReport) -> Result<(), crate::out::StdoutError> {
    print_rows(
        "ring",
        &[
            ("register secure", &r.register_secure),
            ("register insecure", &r.register_insecure),
            ("lookup secure", &r.secure),
            ("lookup insecure", &r.insecure),
        ],
    )?;
    crate::outln!(
        "  lookups, secure ÷ insecure: p50 {:.2}x, p99 {:.2}x, throughput {:.2}x (goal: p50 ≤ 1.25x)",
        r.p50_ratio,
        r.p99_ratio,
        r.throughput_ratio
    )
}

/// The report as a table, for `gestor bench` without `--json`.
pub fn print_report(report: &BenchReport) -> Result<(), crate::out::StdoutError> {
    crate::outln!(
        "bench: {} threads, {} users, transport {}, entry points {}",
        report.threads,
        report.users,
        report.transport,
        report.gestores.join(" ")
    )?;
    let mut rows: Vec<(&str, &Phase)> = std::iter::once("preload")
        .chain(PhaseName::ALL.iter().map(|p| p.as_str()))
        .filter_map(|name| Some((name, report.phases.get(name)?)))
        .collect();
    if let (Some(f), Some(l)) = (&report.flood, &report.lookup_flooded) {
        rows.push(("flood register", f));
        rows.push(("lookup, flooded", l));
    }
    print_rows("phase", &rows)?;
    if report.absent_users > 0 {
        crate::outln!(
            "  {} of the {} users do not exist (registration not acknowledged): the phases after register leave them out",
            report.absent_users,
            report.users
        )?;
    }
    if let (Some(l), Some(quiet)) = (&report.lookup_flooded, report.phases.get("lookup")) {
        crate::outln!(
            "  flooded lookup p99 / quiet lookup p99: {:.2}x (same run)",
            l.p99_ms / quiet.p99_ms.max(1e-9)
        )?;
    }
    if let Some(register) = report.phases.get("register") {
        crate::outln!(
            "  registrations: {:.1}/s against an argon2 limit of {:.1}/s (cores ÷ {:.0} ms per hash): {:.0}%",
            register.per_second,
            report.argon2_limit_per_s,
            report.argon2_hash_ms,
            100.0 * register.per_second / report.argon2_limit_per_s.max(1e-9)
        )?;
        if let Some(all_cores) = report.argon2_all_cores_per_s {
            crate::outln!(
                "  (every core hashing at once, nothing else running: {all_cores:.1}/s, {:.0}% of that limit)",
                100.0 * all_cores / report.argon2_limit_per_s.max(1e-9)
            )?;
        }
    }
    let ch = &report.channel;
    crate::outln!(
        "  secure layer: {} serial round trips of {} bytes on 127.0.0.1, p50 {:.3} ms vs {:.3} ms plaintext on the same transport: {:.2}x",
        ch.round_trips, CHANNEL_FRAME, ch.secure_p50_ms, ch.plain_p50_ms, ch.ratio
    )?;
    crate::outln!(
        "  raw round trip to another process (the floor): p50 {:.3} ms",
        ch.process_p50_ms
    )?;
    Ok(())
}

/// `gestor bench --compare-insecure`: the same lookups on a secure ring and
/// on an otherwise identical `--insecure` ring, both started here.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    pub nodes: usize,
    pub transport: TransportKind,
    pub storage: StorageKind,
    pub threads: usize,
    /// Lookup time per ring (split into `rounds`).
    pub duration: Duration,
    pub users: usize,
    /// Lookups alternate between the rings this many times each, so both
    /// see the same machine load (other processes come and go).
    pub rounds: usize,
    pub keep_data: bool,
}

#[derive(Debug, Serialize)]
pub struct CompareReport {
    pub transport: String,
    pub storage: String,
    pub nodes: usize,
    pub threads: usize,
    pub users: usize,
    pub rounds: usize,
    pub register_secure: Phase,
    pub register_insecure: Phase,
    pub secure: Phase,
    pub insecure: Phase,
    /// secure ÷ insecure.
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    pub throughput_ratio: f64,
}

/// Settings of both compared rings: the bench is their only client, so
/// the per-source limit on password attempts (its registrations all come
/// from 127.0.0.1) is off; and one position per gestor, so that the given
/// ids make both rings' ranges the same (further positions would be placed
/// by each ring's own surveys). Everything else is the default.
const COMPARE_CONFIG: &str = "[plugins.config.gestor_directory]\n\
    password_attempts_per_source_per_minute = 0\n\
    [plugins.config.gestor_ring]\n\
    virtual_nodes = 1\n";

/// Warm-up per ring before measuring: connections and (secure) handshakes.
const WARM_UP: Duration = Duration::from_secs(1);

pub fn compare(o: CompareOptions) -> Result<CompareReport> {
    if o.threads == 0 || o.users == 0 || o.nodes == 0 || o.rounds == 0 {
        bail!("--threads, --users, --nodes and --rounds must be at least 1");
    }
    let dir = std::env::temp_dir().join(format!("gestor-bench-{}", std::process::id()));
    let result = compare_in(&dir, &o);
    if !o.keep_data {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

/// Register the bench users on both rings: each ring's register phase, and
/// the users registered on both, which both rings then look up.
fn register_on_both(s: &BenchOptions, i: &BenchOptions) -> Result<(Phase, Phase, Vec<u64>)> {
    let all: Vec<u64> = (0..s.users as u64).collect();
    let (on_secure, on_insecure) = (Mutex::new(Vec::new()), Mutex::new(Vec::new()));
    let register_secure = register_users(s, &all, &on_secure);
    let register_insecure = register_users(i, &all, &on_insecure);
    let mut on_insecure = on_insecure.into_inner().unwrap_or_else(|p| p.into_inner());
    on_insecure.sort_unstable();
    let mut users = on_secure.into_inner().unwrap_or_else(|p| p.into_inner());
    users.retain(|n| on_insecure.binary_search(n).is_ok());
    users.sort_unstable();
    if users.is_empty() {
        bail!("no bench user is registered on both rings (see the register phases' errors)");
    }
    Ok((register_secure, register_insecure, users))
}

fn compare_in(dir: &std::path::Path, o: &CompareOptions) -> Result<CompareReport> {
    // The same ids on both rings, evenly spaced: the same ranges, fingers
    // and hops for every user, so only the security mode differs.
    let step = u64::MAX / o.nodes as u64;
    let ids: Vec<u64> = (0..o.nodes as u64).map(|i| i * step + step / 2).collect();
    let spec = |insecure| RingSpec {
        nodes: o.nodes,
        transport: o.transport,
        storage: o.storage,
        insecure,
        config: COMPARE_CONFIG.to_string(),
        ids: ids.clone(),
    };
    // Both rings run for the whole comparison; they idle while the other
    // is measured.
    let secure_ring = LocalRing::start(&dir.join("secure"), spec(false))?;
    let insecure_ring = LocalRing::start(&dir.join("insecure"), spec(true))?;
    let deadline = Duration::from_secs(120);
    secure_ring.wait_stable(deadline, || {})?;
    insecure_ring.wait_stable(deadline, || {})?;
    let bench = |ring: &LocalRing| BenchOptions {
        gestores: ring.urls(),
        transport: o.transport,
        trust: ring.trust.clone(),
        threads: o.threads,
        duration: o.duration,
        users: o.users,
        prefix: "bench-".into(),
        flood_threads: 0,
        spread: true,
        phases: vec![PhaseName::Register, PhaseName::Lookup],
        preload: 0,
        operator: None,
    };
    let (s, i) = (bench(&secure_ring), bench(&insecure_ring));
    let (register_secure, register_insecure, users) = register_on_both(&s, &i)?;
    let users = users.as_slice();
    // One client layer per thread and ring for the whole run: sessions are
    // made once (in the warm-up), as a long-running client's would be.
    let layers = |b: &BenchOptions| -> Vec<SecureLayer> {
        (0..b.threads).map(|_| b.trust.layer(b.transport)).collect()
    };
    let (s_layers, i_layers) = (layers(&s), layers(&i));
    lookups_raw(&s, users, &s_layers, WARM_UP);
    lookups_raw(&i, users, &i_layers, WARM_UP);
    let slice = o.duration / o.rounds as u32;
    let (mut secure, mut insecure) = (Raw::default(), Raw::default());
    for round in 0..o.rounds {
        // Alternate which goes first, so neither always follows the other.
        if round % 2 == 0 {
            secure.merge(lookups_raw(&s, users, &s_layers, slice));
            insecure.merge(lookups_raw(&i, users, &i_layers, slice));
        } else {
            insecure.merge(lookups_raw(&i, users, &i_layers, slice));
            secure.merge(lookups_raw(&s, users, &s_layers, slice));
        }
    }
    let (secure, insecure) = (secure.phase(), insecure.phase());
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    Ok(CompareReport {
        transport: o.transport.to_string(),
        storage: o.storage.to_string(),
        nodes: o.nodes,
        threads: o.threads,
        users: o.users,
        rounds: o.rounds,
        p50_ratio: ratio(secure.p50_ms, insecure.p50_ms),
        p99_ratio: ratio(secure.p99_ms, insecure.p99_ms),
        throughput_ratio: ratio(secure.per_second, insecure.per_second),
        register_secure,
        register_insecure,
        secure,
        insecure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(errors: u64, first: Option<&str>) -> Raw {
        Raw {
            latencies: vec![Duration::from_millis(2)],
            errors,
            first_error: first.map(str::to_string),
            ..Raw::default()
        }
    }

    #[test]
    fn a_phase_names_its_first_error_and_only_when_it_had_one() {
        let mut raw = failed(0, None);
        raw.merge(failed(
            2,
            Some("no reply from tcp://127.0.0.1:1 within 1249 ms"),
        ));
        raw.merge(failed(1, Some("later")));
        let phase = raw.phase();
        assert_eq!(phase.errors, 3);
        assert_eq!(
            phase.first_error.as_deref(),
            Some("no reply from tcp://127.0.0.1:1 within 1249 ms")
        );
        let clean = serde_json::to_value(failed(0, None).phase()).unwrap();
        assert!(clean.get("first_error").is_none(), "{clean}");
        assert_eq!(clean["errors"], 0);
    }
}
