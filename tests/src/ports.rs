//! Loopback ports for tests that run in parallel, in one process or several.
//!
//! Asks the kernel for a free port (bind to port 0), then reserves it: within
//! this process in a set, and across processes with an exclusive lock on a
//! file named after the port in the temporary directory, held until this
//! process exits. `./bootstrap test` runs two test processes at once, and a
//! port one of them has picked but not bound yet is free to the kernel.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::Mutex;

struct Reserved {
    ports: HashSet<u16>,
    /// Open, locked files: the lock lasts as long as the descriptor.
    locks: Vec<File>,
}

static RESERVED: Mutex<Option<Reserved>> = Mutex::new(None);

/// One directory per user, so another user's directory (or locks) cannot
/// switch the reservation off or block it.
fn lock_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    std::env::temp_dir().join(format!("gestor-test-ports-{uid}"))
}

/// Whether no other process holds `port` (then this one does, until it
/// exits). A lock that cannot be taken for another reason (say, an
/// unwritable temporary directory) does not stop the test: the in-process
/// set still holds.
fn lock_across_processes(port: u16, locks: &mut Vec<File>) -> bool {
    let dir = lock_dir();
    let _ = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    if !ours_alone(&dir) {
        // Someone else's directory could switch the reservation off or
        // block it: rely on the in-process set only.
        return true;
    }
    let file = match OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(format!("{port}.lock")))
    {
        Ok(file) => file,
        Err(_) => return true,
    };
    match file.try_lock() {
        Ok(()) => {
            locks.push(file);
            true
        }
        Err(std::fs::TryLockError::WouldBlock) => false,
        Err(std::fs::TryLockError::Error(_)) => true,
    }
}

/// `dir` is a real directory of this user's that nobody else may use.
fn ours_alone(dir: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    std::fs::symlink_metadata(dir)
        .is_ok_and(|m| m.file_type().is_dir() && m.uid() == me && m.mode() & 0o077 == 0)
}

/// A free TCP port on 127.0.0.1, handed out once across the test processes
/// running now.
pub fn free_port() -> u16 {
    let mut guard = RESERVED.lock().unwrap_or_else(|p| p.into_inner());
    let reserved = guard.get_or_insert_with(|| Reserved {
        ports: HashSet::new(),
        locks: Vec::new(),
    });
    for _ in 0..1000 {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local addr").port();
        if reserved.ports.contains(&port) {
            continue;
        }
        if lock_across_processes(port, &mut reserved.locks) {
            reserved.ports.insert(port);
            return port;
        }
    }
    panic!("no free loopback port after 1000 tries");
}

/// `tcp://127.0.0.1:PORT` on a fresh port.
pub fn tcp_url() -> String {
    format!("tcp://127.0.0.1:{}", free_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_handed_out_once() {
        let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
    }

    #[test]
    fn a_port_locked_by_another_holder_is_skipped() {
        let port = free_port();
        if !lock_dir().join(format!("{port}.lock")).is_file() {
            // The documented fallback: no usable lock directory here.
            eprintln!("skipped: no lock files in {}", lock_dir().display());
            return;
        }
        // A second open file description on the same path stands in for
        // another process: flock conflicts between descriptions.
        let mut other = Vec::new();
        assert!(
            !lock_across_processes(port, &mut other),
            "port {port} is locked by this process and must not be taken again"
        );
    }
}
