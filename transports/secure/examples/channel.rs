//! The secure layer's cost, side by side with the bare transport, in one
//! run on this machine: serial round trips of a lookup-sized frame on
//! 127.0.0.1, interleaved so both see the same load.
//!
//!     cargo run --release -p gestor-secure --example channel [ROUND_TRIPS]

use gestor_sdk::transport::{Transport, TransportOptions};
use gestor_secure::{ClusterKey, Peer, SecureConfig, SecureLayer};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("tcp://127.0.0.1:{}", l.local_addr().expect("addr").port())
}

fn pct(v: &mut [Duration], q: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000);
    let transports: Vec<Arc<dyn Transport>> = vec![
        Arc::new(gestor_transport_nng::NngTransport::new()),
        Arc::new(gestor_transport_zmq::ZmqTransport::new()),
    ];
    println!("transport  plain p50 ms  secure p50 ms  ratio  plain p99 ms  secure p99 ms");
    for t in transports {
        let options = TransportOptions::default();
        let plain_url = url();
        let _plain = t
            .replier(&plain_url, Arc::new(|f: &[u8]| f.to_vec()), &options)
            .expect("plain replier");
        let cluster = ClusterKey::generate();
        let server = SecureLayer::new(
            t.clone(),
            SecureConfig::gestor(cluster.admit("bench").expect("admit"), cluster.public()),
        );
        let secure_url = url();
        let _secure = server
            .replier(
                &secure_url,
                Arc::new(|f: &[u8], _: &Peer, _| f.to_vec()),
                &options,
            )
            .expect("secure replier");
        let client = SecureLayer::new(t.clone(), SecureConfig::client(cluster.public()));
        let mut plain = t.requester(&plain_url, &options).expect("requester");
        let mut secure = client.requester(&secure_url, &options).expect("requester");
        let frame = vec![0x5au8; 96];
        let timeout = Duration::from_secs(5);
        for _ in 0..200 {
            plain.request(&frame, timeout).expect("plain");
            secure.request(&frame, timeout).expect("secure");
        }
        let (mut p, mut s) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let t0 = Instant::now();
            plain.request(&frame, timeout).expect("plain");
            p.push(t0.elapsed());
            let t0 = Instant::now();
            secure.request(&frame, timeout).expect("secure");
            s.push(t0.elapsed());
        }
        let (p50, s50) = (pct(&mut p, 0.5), pct(&mut s, 0.5));
        println!(
            "{:<9}  {:>12.3}  {:>13.3}  {:>5.2}  {:>12.3}  {:>13.3}",
            t.name(),
            p50,
            s50,
            s50 / p50,
            pct(&mut p, 0.99),
            pct(&mut s, 0.99)
        );
    }
}
