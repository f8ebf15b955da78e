//! A recording TCP relay on 127.0.0.1: forwards every connection to a
//! target and keeps every byte that crosses it, both ways — what someone on
//! the network path would see. Bounded: it keeps at most [`MAX_CAPTURE`]
//! bytes and stops its threads when dropped.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Most bytes one relay records (later bytes are still forwarded).
pub const MAX_CAPTURE: usize = 256 * 1024 * 1024;

pub struct Relay {
    /// `tcp://127.0.0.1:PORT` to give out instead of the target.
    pub url: String,
    pub port: u16,
    captured: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("tcp://").to_string()
}

impl Relay {
    /// Listen on `listener` and forward to `target` (`tcp://h:p`).
    pub fn start(listener: TcpListener, target: &str) -> Relay {
        let port = listener.local_addr().expect("relay addr").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking relay listener");
        let captured = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let target = host_port(target);
        let acceptor = {
            let (captured, stop) = (captured.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let Ok(server) = TcpStream::connect(&target) else {
                                continue;
                            };
                            let _ = client.set_nonblocking(false);
                            pump(&client, &server, &captured, &stop);
                            pump(&server, &client, &captured, &stop);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Relay {
            url: format!("tcp://127.0.0.1:{port}"),
            port,
            captured,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Everything recorded so far.
    pub fn captured(&self) -> Vec<u8> {
        self.captured
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Copy `from` → `to` on a thread of its own, recording what passes.
fn pump(from: &TcpStream, to: &TcpStream, captured: &Arc<Mutex<Vec<u8>>>, stop: &Arc<AtomicBool>) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    let (captured, stop) = (captured.clone(), stop.clone());
    let _ = from.set_read_timeout(Some(Duration::from_millis(100)));
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while !stop.load(Ordering::SeqCst) {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    {
                        let mut c = captured.lock().unwrap_or_else(|p| p.into_inner());
                        if c.len() + n <= MAX_CAPTURE {
                            c.extend_from_slice(&buf[..n]);
                        }
                    }
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// Two listeners on consecutive loopback ports (P, P+1): a relayed gestor
/// advertises P, and its default signal endpoint is then P + 1.
pub fn consecutive_listeners() -> (TcpListener, TcpListener) {
    for _ in 0..200 {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let p = a.local_addr().expect("addr").port();
        if p == u16::MAX {
            continue;
        }
        if let Ok(b) = TcpListener::bind(("127.0.0.1", p + 1)) {
            return (a, b);
        }
    }
    panic!("no two consecutive free loopback ports");
}

/// Whether `needle` occurs anywhere in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
