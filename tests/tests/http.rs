//! The operator's HTTP endpoint of real `gestor node` processes (`--http`):
//! `/metrics` scraped during a lookup load (counters moving, histograms
//! filled, made-up kinds bucketed as `unknown`), `/ready` false before the
//! gestor has joined and true only after, on all four combinations; and the
//! dashboard of a 5-gestor ring loaded in a real headless Chromium, its DOM
//! checked for every gestor and a screenshot written (path in the output).

use gestor::config::{StorageKind, TransportKind};
use gestor_client::client::{Client, ClientError};
use gestor_sdk::hash::ring_position;
use gestor_sdk::{ErrorCode, Kind, Value};
use gestor_tests::cluster::{call, client_layer, target_dir, wait_until, NodeProc};
use gestor_tests::ports::{free_port, tcp_url};
use gestor_tests::ring::Ring;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One GET: (status, head, body). Panics only on a broken connection.
fn get(addr: &str, path: &str) -> (u16, String, String) {
    try_get(addr, path).unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

fn try_get(addr: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_string(), body.to_string()))
}

/// A Prometheus text scrape: every sample line, `name{labels}` → value.
fn scrape(addr: &str) -> BTreeMap<String, f64> {
    let (status, head, body) = get(addr, "/metrics");
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn sample(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

/// Start one more gestor of `ring` with its HTTP endpoint on a fresh port;
/// returns that `HOST:PORT`.
fn add_http_node(ring: &mut Ring, extra: &[&str]) -> String {
    let http = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--http", http.as_str()];
    args.extend_from_slice(extra);
    ring.add_node_with(&args, "");
    http
}

fn client(transport: TransportKind, url: &str) -> Client {
    Client::new(
        client_layer(transport),
        vec![url.to_string()],
        Duration::from_secs(10),
    )
}

/// Register `names` through `url`, retrying while the ring settles.
fn register_all(transport: TransportKind, url: &str, names: &[String]) {
    let mut c = client(transport, url);
    for name in names {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match c.register(name, "pw-http") {
                Ok(_) => break,
                Err(ClientError::Remote(e))
                    if matches!(e.code, ErrorCode::Busy | ErrorCode::Unavailable)
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("register {name}: {e}"),
            }
        }
    }
}

/// A formed ring of three gestores, each with its HTTP endpoint (returned).
fn ring_of_three_with_http(transport: TransportKind, storage: StorageKind) -> (Ring, Vec<String>) {
    let mut ring = Ring::start(0, transport, storage);
    let https: Vec<String> = (0..3).map(|_| add_http_node(&mut ring, &[])).collect();
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));
    (ring, https)
}

fn metrics_move_under_lookup_load(transport: TransportKind, storage: StorageKind) {
    let (ring, https) = ring_of_three_with_http(transport, storage);
    let urls = ring.urls();
    let names: Vec<String> = (0..20).map(|i| format!("scraped{i:02}")).collect();
    let flushes = |https: &[String]| -> f64 {
        https
            .iter()
            .map(|h| sample(&scrape(h), "gestor_store_flushes_total"))
            .sum()
    };
    let flushes_before = flushes(&https);
    register_all(transport, &urls[1], &names);
    // Every registration was acknowledged durable on its owner and on both
    // copy holders (a ring of three): a flush asked on each, one by one.
    let flushed = flushes(&https) - flushes_before;
    assert!(
        flushed >= (3 * names.len()) as f64,
        "{flushed} store flushes for {} acknowledged registrations on three gestores",
        names.len()
    );
    assert!(sample(&scrape(&https[0]), "gestor_store_flush_seconds_total") > 0.0);

    // A lookup load through the first gestor, bounded in time.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, done, url, names) = (stop.clone(), done.clone(), urls[0].clone(), names.clone());
        std::thread::spawn(move || {
            let mut c = client(transport, &url);
            let until = Instant::now() + Duration::from_secs(90);
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                if c.lookup(&names[i % names.len()]).is_ok() {
                    done.fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
            }
        })
    };

    let lookups_ok = r#"gestor_requests_total{kind="user.lookup",origin="client",outcome="ok"}"#;
    let hist_count = r#"gestor_request_duration_seconds_count{kind="user.lookup"}"#;
    // Counters moving: two scrapes during the load, the second higher.
    assert!(
        wait_until(Duration::from_secs(30), || sample(
            &scrape(&https[0]),
            lookups_ok
        ) >= 20.0),
        "no lookups counted on {}: {:?}",
        https[0],
        scrape(&https[0])
    );
    let first = scrape(&https[0]);
    let mut second = first.clone();
    assert!(
        wait_until(Duration::from_secs(30), || {
            second = scrape(&https[0]);
            sample(&second, lookups_ok) > sample(&first, lookups_ok)
                && sample(&second, hist_count) > sample(&first, hist_count)
        }),
        "lookup counter did not move between scrapes ({} then {})",
        sample(&first, lookups_ok),
        sample(&second, lookups_ok)
    );
    stop.store(true, Ordering::SeqCst);
    load.join().expect("load thread");
    assert!(done.load(Ordering::SeqCst) > 0);
    // The owners answered the repeated lookups from their record caches.
    let cache_hits: f64 = https
        .iter()
        .map(|h| sample(&scrape(h), "gestor_record_cache_hits_total"))
        .sum();
    assert!(cache_hits > 0.0, "no record cache hit on any gestor");

    // Histograms filled: a finite bucket holds lookups, the sum is positive,
    // and the +Inf bucket equals the count.
    let m = scrape(&https[0]);
    let count = sample(&m, hist_count);
    assert!(count >= 20.0, "{count}");
    assert!(
        sample(
            &m,
            r#"gestor_request_duration_seconds_sum{kind="user.lookup"}"#
        ) > 0.0
    );
    assert_eq!(
        sample(
            &m,
            r#"gestor_request_duration_seconds_bucket{kind="user.lookup",le="+Inf"}"#
        ),
        count,
        "{m:?}"
    );
    let finite = m
        .iter()
        .filter(|(k, v)| {
            k.starts_with(r#"gestor_request_duration_seconds_bucket{kind="user.lookup",le=""#)
                && !k.contains("+Inf")
                && **v > 0.0
        })
        .count();
    assert!(finite > 0, "no finite bucket filled: {m:?}");
    // The local calls a lookup makes are counted too, and its routing:
    // `ring.route` (from the ring table) first, `ring.lookup` on retries
    // and before the first table walk.
    let routed = sample(
        &m,
        r#"gestor_requests_total{kind="ring.route",origin="local",outcome="ok"}"#,
    ) + sample(
        &m,
        r#"gestor_requests_total{kind="ring.lookup",origin="local",outcome="ok"}"#,
    );
    assert!(routed > 0.0, "{m:?}");
    assert!(sample(&m, "gestor_ring_lookups_total") > 0.0);
    assert!(m.contains_key("gestor_ring_lookup_hops_total"));
    assert!(m.contains_key("gestor_ring_timeouts_alive_total"));
    assert!(m.contains_key("gestor_ring_gestors_dropped_total"));
    // The owners checked they were responsible and ready for each name
    // (`replica.ready`, a local call), whether the lookup was forwarded to
    // them (`dir.lookup`) or reached them first and was served in place,
    // which counts no `dir.lookup`.
    let owners: f64 = https
        .iter()
        .map(|h| {
            sample(
                &scrape(h),
                r#"gestor_requests_total{kind="replica.ready",origin="local",outcome="ok"}"#,
            )
        })
        .sum();
    assert!(owners > 0.0, "no owner check counted on any gestor");
    // What node.status knows, as gauges and counters.
    assert_eq!(sample(&m, "gestor_ring_joined"), 1.0);
    assert_eq!(sample(&m, "gestor_ready"), 1.0);
    assert_eq!(sample(&m, "gestor_ring_known_members"), 3.0);
    assert!(sample(&m, "gestor_records") >= 1.0, "{m:?}");
    assert!(sample(&m, "gestor_password_hash_slots") >= 1.0);
    assert!(sample(&m, "gestor_secure_handshakes_total") >= 1.0);
    for present in [
        "gestor_mailbox_items",
        "gestor_replica_records_under_target",
        "gestor_password_hash_waiting",
        "gestor_clients_turned_away_total",
        r#"gestor_signals_received_total{topic="replica.hb"}"#,
    ] {
        assert!(m.contains_key(present), "{present} missing: {m:?}");
    }

    // Kinds made up by a client are counted as `unknown`, never by name.
    for i in 0..5 {
        let e = call(&urls[0], transport, &format!("evil.kind{i}"), Value::Null).unwrap_err();
        assert!(
            matches!(e, ClientError::Remote(ref r) if r.code == ErrorCode::UnknownKind),
            "{e}"
        );
    }
    let (_, _, text) = get(&https[0], "/metrics");
    assert!(!text.contains("evil"), "a made-up kind became a label");
    let m = scrape(&https[0]);
    assert!(
        sample(
            &m,
            r#"gestor_requests_total{kind="unknown",origin="client",outcome="unknown_kind"}"#
        ) >= 5.0
    );
}

fn ready_only_after_join(transport: TransportKind, storage: StorageKind) {
    let mut ring = Ring::start(0, transport, storage);
    // B joins through A, which does not exist yet.
    let a_url = tcp_url();
    let a_signal = tcp_url();
    let b_http = add_http_node(&mut ring, &["--join", &a_url]);
    let (status, _, body) = get(&b_http, "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _, body) = get(&b_http, "/ready");
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: not joined"), "{body}");
    let m = scrape(&b_http);
    assert_eq!(sample(&m, "gestor_ring_joined"), 0.0);
    assert_eq!(sample(&m, "gestor_ready"), 0.0);

    // Now A starts a ring at that URL; B joins it and only then is ready.
    let a_http = format!("127.0.0.1:{}", free_port());
    let args: Vec<String> = [
        "--config",
        &ring.config_path.display().to_string(),
        "--listen",
        &a_url,
        "--signal",
        &a_signal,
        "--transport",
        &transport.to_string(),
        "--storage",
        &storage.to_string(),
        "--data-dir",
        &ring.path().join("data-a").display().to_string(),
        "--http",
        &a_http,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let a = NodeProc::spawn(
        &a_url,
        transport,
        &args,
        ring.path(),
        &[("RUST_LOG", "info")],
    );
    ring.nodes.push(a);
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            match try_get(&b_http, "/ready") {
                Ok((200, _, _)) => true,
                Ok((_, _, body)) => {
                    last = body;
                    false
                }
                Err(e) => {
                    last = e.to_string();
                    false
                }
            }
        }),
        "B never became ready; last answer: {last}\n{}",
        ring.logs()
    );
    let ring_section = ring
        .status(&ring.nodes[0].url)
        .and_then(|s| s.pointer("/sections/ring/joined").cloned());
    assert_eq!(ring_section, Some(serde_json::Value::Bool(true)));
    assert!(
        wait_until(Duration::from_secs(60), || try_get(&a_http, "/ready")
            .is_ok_and(|(s, _, _)| s == 200)),
        "A never became ready"
    );
    let m = scrape(&b_http);
    assert_eq!(sample(&m, "gestor_ring_joined"), 1.0);
    assert_eq!(sample(&m, "gestor_ready"), 1.0);
    let (status, _, body) = get(&b_http, "/no-such-page");
    assert_eq!(status, 404, "{body}");
}

/// A lookup is tried on the I/O thread of the gestor it reaches: served
/// there when that gestor owns the user, otherwise deferred to a worker
/// that forwards it (where the owner serves the forwarded `dir.lookup` on
/// its I/O thread). Every answer is right either way.
fn lookups_take_the_fast_path_on_their_owner(transport: TransportKind, storage: StorageKind) {
    let (ring, https) = ring_of_three_with_http(transport, storage);
    let urls = ring.urls();
    let names: Vec<String> = (0..20).map(|i| format!("fast{i:02}")).collect();
    register_all(transport, &urls[0], &names);
    let positions = ring.positions();
    for (i, url) in urls.iter().enumerate() {
        for name in &names {
            let found = gestor_tests::cluster::request::<gestor_api::user::Lookup>(
                url,
                transport,
                &gestor_api::user::UserOnly {
                    username: name.clone(),
                },
            )
            .unwrap_or_else(|e| panic!("lookup {name} at gestor {i}: {e}"));
            assert_eq!(&found.user, name);
        }
        let owned = names
            .iter()
            .filter(|n| Ring::owner_in(&positions, ring_position(n.as_bytes())) == i)
            .count() as f64;
        let m = scrape(&https[i]);
        let fast = |kind: &str, outcome: &str| {
            sample(
                &m,
                &format!(r#"gestor_fast_path_requests_total{{kind="{kind}",outcome="{outcome}"}}"#),
            )
        };
        assert_eq!(
            fast(gestor_api::user::Lookup::NAME, "served"),
            owned,
            "gestor {i}: {m:?}"
        );
        assert_eq!(
            fast(gestor_api::user::Lookup::NAME, "deferred"),
            names.len() as f64 - owned,
            "gestor {i}: {m:?}"
        );
    }
    // The forwarded halves: every lookup of a user its owner was not asked
    // directly reached the owner as a `dir.lookup`, served on its I/O thread
    // (more than once when a forward was retried: say, an owner still
    // merging a range it took over answered `unavailable` first).
    let forwarded: f64 = https
        .iter()
        .map(|h| {
            sample(
                &scrape(h),
                r#"gestor_fast_path_requests_total{kind="dir.lookup",outcome="served"}"#,
            )
        })
        .sum();
    let expected = (names.len() * (urls.len() - 1)) as f64;
    assert!(
        forwarded >= expected,
        "{forwarded} forwarded lookups served, expected at least {expected}"
    );
}

gestor_tests::matrix!(
    metrics_under_load => metrics_move_under_lookup_load,
    lookups_fast_path => lookups_take_the_fast_path_on_their_owner,
    ready_after_join => ready_only_after_join,
);

/// Debian's Chromium, if installed.
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Run headless Chromium on `url` with `action` flags; its stdout, or a
/// failure after `deadline`.
fn run_chromium(browser: &Path, profile: &Path, action: &[String], url: &str) -> String {
    let mut child = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--virtual-time-budget=6000")
        .args(action)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let mut stdout = child.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let until = Instant::now() + Duration::from_secs(90);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            _ if Instant::now() >= until => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("chromium did not finish within 90 s");
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    reader.join().unwrap_or_default()
}

/// The dashboard of a 5-gestor ring, in a real browser: every gestor drawn
/// (one SVG group per gestor, each address), and a screenshot.
#[test]
fn dashboard_draws_every_gestor_in_chromium() {
    let Some(browser) = chromium() else {
        if std::env::var_os("GESTOR_REQUIRE_BROWSER").is_some() {
            panic!("GESTOR_REQUIRE_BROWSER is set but chromium is not on PATH");
        }
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED dashboard_draws_every_gestor_in_chromium: no chromium on PATH (./bootstrap test installs Debian's chromium)"
        );
        return;
    };
    let transport = TransportKind::Nng;
    let mut ring = Ring::start(0, transport, StorageKind::Sqlite);
    let https: Vec<String> = (0..5).map(|_| add_http_node(&mut ring, &[])).collect();
    ring.wait_stable(Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("ring did not form: {e}\n{}", ring.logs()));
    let names: Vec<String> = (0..12).map(|i| format!("pictured{i:02}")).collect();
    register_all(transport, &ring.urls()[2], &names);
    let urls = ring.urls();

    // What the page will draw: every gestor, each answering and ready.
    let mut last = serde_json::Value::Null;
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (status, _, body) = get(&https[0], "/ring.json");
            last = serde_json::from_str(&body).unwrap_or_default();
            status == 200
                && last["members"]
                    .as_array()
                    .is_some_and(|ms| ms.len() == 5 && ms.iter().all(|m| m["health"] == "ok"))
        }),
        "ring.json never showed 5 healthy gestores: {last}"
    );

    let profile = tempfile::tempdir().expect("profile dir");
    let page = format!("http://{}/", https[0]);
    let dom = run_chromium(&browser, profile.path(), &["--dump-dom".into()], &page);
    let drawn = dom.matches(r#"class="gestor""#).count();
    assert_eq!(drawn, 5, "gestores drawn in the page's SVG:\n{dom}");
    for url in &urls {
        assert!(
            dom.contains(&format!(r#"data-address="{url}""#)),
            "{url} not drawn:\n{dom}"
        );
    }
    assert!(dom.contains(r#"data-members="5""#), "{dom}");
    assert!(dom.contains(r#"data-self="true""#), "{dom}");
    assert!(
        !dom.contains(r#"class="chip stale""#),
        "the page could not poll /ring.json:\n{dom}"
    );
    // The page polled and redrew.
    let updates = dom
        .split(r#"data-updates=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or(0);
    assert!(updates >= 1, "the page never drew /ring.json:\n{dom}");

    let dir = target_dir().join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let shot = dir.join("dashboard-5-gestores.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().expect("profile dir");
    run_chromium(
        &browser,
        profile.path(),
        &[
            format!("--screenshot={}", shot.display()),
            "--window-size=1400,900".into(),
        ],
        &page,
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().expect("IHDR"));
    let height = u32::from_be_bytes(png[20..24].try_into().expect("IHDR"));
    assert_eq!((width, height), (1400, 900));
    assert!(png.len() > 20_000, "suspiciously small screenshot");
    // Past libtest's capture, so it shows in every run's output.
    let _ = writeln!(
        std::io::stderr(),
        "dashboard screenshot of a 5-gestor ring: {}",
        shot.display()
    );
}
