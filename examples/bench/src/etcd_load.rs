//! Load on an etcd cluster through its JSON gateway (`/v3/kv/range`,
//! `/v3/kv/put` over HTTP/1.1 keep-alive), shaped like `gestor bench`:
//! N client threads, one connection each, for a set time; one JSON line out.
//!
//! etcd's own `benchmark` tool speaks gRPC and needs a Go toolchain, which
//! this machine cannot fetch; the gateway adds a JSON translation inside
//! etcd, so the figures here are, if anything, a little slower than etcd's
//! native API. examples/bench/README.md says so beside every table.

use anyhow::{bail, Context, Result};
use base64ct::{Base64, Encoding};
use clap::{Parser, ValueEnum};
use serde::Serialize;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Op {
    /// Read one key (`serializable`: answered by the member asked, like a
    /// gestor answering from its own store).
    Range,
    /// Write one key (acknowledged after the raft quorum has it on disk).
    Put,
}

#[derive(Parser, Debug)]
struct Args {
    /// host:port of the members' client URLs; threads are spread over them.
    #[arg(long, value_delimiter = ',', required = true)]
    endpoints: Vec<String>,
    #[arg(long, value_enum)]
    op: Op,
    #[arg(long, default_value_t = 32)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    duration_secs: u64,
    /// Keys written/read: `bench-0` … `bench-(keys-1)`.
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Range reads without a quorum round (etcd's `--consistency=s`).
    #[arg(long)]
    serializable: bool,
}

#[derive(Serialize)]
struct Report {
    op: &'static str,
    clients: usize,
    ops: usize,
    errors: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

struct Conn {
    host: String,
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(host: &str) -> Result<Conn> {
        let stream = TcpStream::connect(host).with_context(|| format!("connect {host}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            host: host.to_string(),
            reader: BufReader::new(stream),
        })
    }

    /// POST `body` to `path`; the response body when the status is 200.
    fn post(&mut self, path: &str, body: &str) -> Result<Vec<u8>> {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.host,
            body.len()
        );
        self.reader.get_mut().write_all(request.as_bytes())?;
        let (status, length, chunked) = self.read_head()?;
        let body = if chunked {
            self.read_chunked()?
        } else {
            let mut b = vec![0; length];
            self.reader.read_exact(&mut b)?;
            b
        };
        if status != 200 {
            bail!("HTTP {status}: {}", String::from_utf8_lossy(&body));
        }
        Ok(body)
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        Ok(line.trim_end().to_string())
    }

    fn read_head(&mut self) -> Result<(u16, usize, bool)> {
        let status_line = self.read_line()?;
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let (mut length, mut chunked) = (0, false);
        loop {
            let line = self.read_line()?;
            if line.is_empty() {
                return Ok((status, length, chunked));
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse()?;
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
    }

    fn read_chunked(&mut self) -> Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let size =
                usize::from_str_radix(self.read_line()?.split(';').next().unwrap_or(""), 16)?;
            let mut chunk = vec![0; size + 2];
            self.reader.read_exact(&mut chunk)?;
            if size == 0 {
                return Ok(body);
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
}

fn request_for(args: &Args, n: usize) -> (&'static str, String) {
    let key = Base64::encode_string(format!("bench-{}", n % args.keys).as_bytes());
    match args.op {
        Op::Range => (
            "/v3/kv/range",
            format!(r#"{{"key":"{key}","serializable":{}}}"#, args.serializable),
        ),
        Op::Put => {
            // An address-sized value, like a gestor record's address.
            let value =
                Base64::encode_string(format!("127.0.0.1:{}", 20000 + n % 40000).as_bytes());
            (
                "/v3/kv/put",
                format!(r#"{{"key":"{key}","value":"{value}"}}"#),
            )
        }
    }
}

/// One client thread: its latencies and error count.
fn client(args: &Args, index: usize, deadline: Instant) -> (Vec<Duration>, usize) {
    let host = &args.endpoints[index % args.endpoints.len()];
    let (mut latencies, mut errors) = (Vec::new(), 0);
    let mut conn = None;
    let mut n = index;
    while Instant::now() < deadline {
        if conn.is_none() {
            conn = Conn::open(host).ok();
            if conn.is_none() {
                errors += 1;
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let (path, body) = request_for(args, n);
        n += args.clients;
        let started = Instant::now();
        match conn.as_mut().map(|c| c.post(path, &body)) {
            Some(Ok(_)) => latencies.push(started.elapsed()),
            _ => {
                errors += 1;
                conn = None;
            }
        }
    }
    (latencies, errors)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let args = Args::parse();
    let duration = Duration::from_secs(args.duration_secs);
    let deadline = Instant::now() + duration;
    let results: Vec<(Vec<Duration>, usize)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.clients)
            .map(|i| {
                let args = &args;
                s.spawn(move || client(args, i, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut latencies: Vec<Duration> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    let errors = results.iter().map(|r| r.1).sum();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| ms(*d))
    };
    let report = Report {
        op: match args.op {
            Op::Range => "range",
            Op::Put => "put",
        },
        clients: args.clients,
        ops: latencies.len(),
        errors,
        per_second: latencies.len() as f64 / duration.as_secs_f64(),
        p50_ms: at(0.5),
        p99_ms: at(0.99),
        max_ms: latencies.last().map_or(0.0, |d| ms(*d)),
    };
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
