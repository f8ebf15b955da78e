//! Loopback ports for tests that run in parallel, in one process or several.
//!
//! Asks the kernel for a free port (bind to port 0), and remembers what this
//! process handed out so two tests in one binary never get the same one.
//! Ports handed out are in the kernel's ephemeral range, so a race with
//! another process is possible but unlikely; callers bind soon after.

use std::collections::HashSet;
use std::net::TcpListener;
use std::sync::Mutex;

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let seen = guard.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if seen.insert(port) {
            return port;
        }
    }
    panic!("no free loopback port after 1000 tries");
}

/// `tcp://127.0.0.1:PORT` on a fresh port.
pub fn tcp_url() -> String {
    format!("tcp://127.0.0.1:{}", free_port())
}
