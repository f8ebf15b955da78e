//! A user-space Ethernet switch that delays and drops frames: what the
//! kernel's netem qdisc does, for kernels built without it
//! (`CONFIG_NET_SCH_NETEM` unset), so multi-host tests still see latency
//! and loss there.
//!
//! It serves veth ports inside one network namespace (the "switch"
//! namespace of a test), with one `AF_PACKET` socket per port: every frame
//! arriving on a port is dropped with probability `loss`, or sent out
//! `delay` later on the port where its destination MAC was last seen (all
//! other ports for broadcasts and unknown destinations). Sockets use
//! `PACKET_VNET_HDR`, so the kernel's large segments (TSO/GSO on veths) are
//! forwarded whole, with their offload header, rather than refused as
//! oversize. The delay is the same for every frame, so nothing is
//! reordered. A port whose link is down simply passes nothing.
//!
//! Threads: one receiver per port and one sender; every loop ends within
//! 100 ms of [`DelaySwitch`] being dropped, and the queue between them is
//! bounded (a full queue drops the frame, as a full qdisc would).

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_OUTGOING: u8 = 4;
/// `struct virtio_net_hdr` before every frame on a `PACKET_VNET_HDR` socket.
const VNET_HDR: usize = 10;
const MAX_FRAME: usize = VNET_HDR + 65_550;
const QUEUE: usize = 20_000;
const POLL: Duration = Duration::from_millis(100);

/// Frames forwarded and dropped so far.
#[derive(Default)]
pub struct Counters {
    pub forwarded: AtomicU64,
    pub lost: AtomicU64,
    pub overflow: AtomicU64,
}

pub struct DelaySwitch {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    pub counters: Arc<Counters>,
}

struct Due {
    at: Instant,
    to: Vec<usize>,
    frame: Vec<u8>,
}

fn check(rc: libc::c_int, what: &str) -> io::Result<libc::c_int> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(rc)
    }
}

/// A packet socket on interface `name`, with offload headers, a receive
/// timeout of [`POLL`], created in the calling thread's network namespace.
fn port_socket(name: &str) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: plain libc calls on a descriptor we own; structures are
    // zeroed and filled as the kernel expects.
    unsafe {
        let index = libc::if_nametoindex(cname.as_ptr());
        if index == 0 {
            return Err(io::Error::other(format!("no interface {name}")));
        }
        let protocol = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
        let fd = check(
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol),
            "socket(AF_PACKET)",
        )?;
        let fd = OwnedFd::from_raw_fd(fd);
        let on: libc::c_int = 1;
        check(
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_VNET_HDR,
                &on as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            ),
            "PACKET_VNET_HDR",
        )?;
        let timeout = libc::timeval {
            tv_sec: 0,
            tv_usec: POLL.as_micros() as libc::suseconds_t,
        };
        check(
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            ),
            "SO_RCVTIMEO",
        )?;
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = index as i32;
        check(
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            ),
            "bind",
        )?;
        Ok(fd)
    }
}

/// Sockets for `ports`, made in network namespace `netns` by a thread that
/// enters it (this thread's namespace does not change).
fn sockets_in(netns: &str, ports: &[String]) -> io::Result<Vec<OwnedFd>> {
    let path = format!("/var/run/netns/{netns}");
    let ports = ports.to_vec();
    std::thread::spawn(move || {
        let ns = File::open(&path)?;
        // SAFETY: enters the namespace for this short-lived thread only.
        check(
            unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) },
            "setns",
        )?;
        ports.iter().map(|p| port_socket(p)).collect()
    })
    .join()
    .map_err(|_| io::Error::other("socket thread panicked"))?
}

impl DelaySwitch {
    /// Switch between `ports` (interfaces in namespace `netns`, not on a
    /// bridge), delaying every frame by `delay` and dropping `loss` of them.
    pub fn start(
        netns: &str,
        ports: &[String],
        delay: Duration,
        loss: f64,
    ) -> io::Result<DelaySwitch> {
        let fds: Vec<Arc<OwnedFd>> = sockets_in(netns, ports)?
            .into_iter()
            .map(Arc::new)
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let learned: Arc<Mutex<HashMap<[u8; 6], usize>>> = Arc::default();
        let (tx, rx) = crossbeam_channel::bounded::<Due>(QUEUE);
        let mut threads = Vec::new();
        for (port, fd) in fds.iter().enumerate() {
            let (fd, stop, counters, learned, tx) = (
                fd.clone(),
                stop.clone(),
                counters.clone(),
                learned.clone(),
                tx.clone(),
            );
            let n = fds.len();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("switch-rx-{port}"))
                    .spawn(move || {
                        receive(port, n, &fd, &stop, &counters, &learned, &tx, delay, loss)
                    })?,
            );
        }
        drop(tx);
        let (stop2, out, counters2) = (stop.clone(), fds.clone(), counters.clone());
        threads.push(
            std::thread::Builder::new()
                .name("switch-tx".into())
                .spawn(move || send(&rx, &out, &stop2, &counters2))?,
        );
        Ok(DelaySwitch {
            stop,
            threads,
            counters,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn receive(
    port: usize,
    ports: usize,
    fd: &OwnedFd,
    stop: &AtomicBool,
    counters: &Counters,
    learned: &Mutex<HashMap<[u8; 6], usize>>,
    tx: &crossbeam_channel::Sender<Due>,
    delay: Duration,
    loss: f64,
) {
    let mut buf = vec![0u8; MAX_FRAME];
    while !stop.load(Ordering::SeqCst) {
        // SAFETY: receive into our buffer; `from` is a zeroed sockaddr_ll.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                0,
                &mut from as *mut _ as *mut libc::sockaddr,
                &mut len,
            )
        };
        // Timeout (to look at `stop`), a down link, or our own sends.
        if n < (VNET_HDR + 14) as isize || from.sll_pkttype == PACKET_OUTGOING {
            continue;
        }
        let frame = &buf[..n as usize];
        let eth = &frame[VNET_HDR..];
        let dst: [u8; 6] = eth[0..6].try_into().expect("6 bytes");
        let src: [u8; 6] = eth[6..12].try_into().expect("6 bytes");
        if rand::random::<f64>() < loss {
            counters.lost.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let to: Vec<usize> = {
            let mut table = learned.lock().unwrap_or_else(|p| p.into_inner());
            table.insert(src, port);
            match table.get(&dst) {
                Some(&p) if dst[0] & 1 == 0 => vec![p],
                _ => (0..ports).collect(),
            }
        };
        let to: Vec<usize> = to.into_iter().filter(|&p| p != port).collect();
        if to.is_empty() {
            continue;
        }
        let due = Due {
            at: Instant::now() + delay,
            to,
            frame: frame.to_vec(),
        };
        if tx.try_send(due).is_err() {
            counters.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn send(
    rx: &crossbeam_channel::Receiver<Due>,
    fds: &[Arc<OwnedFd>],
    stop: &AtomicBool,
    counters: &Counters,
) {
    while !stop.load(Ordering::SeqCst) {
        let Ok(due) = rx.recv_timeout(POLL) else {
            continue;
        };
        let wait = due.at.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        for &p in &due.to {
            // SAFETY: send our buffer on a bound packet socket. A port whose
            // link is down refuses (ENETDOWN): the frame is lost, as on a wire.
            unsafe {
                libc::send(
                    fds[p].as_raw_fd(),
                    due.frame.as_ptr() as *const libc::c_void,
                    due.frame.len(),
                    0,
                );
            }
        }
        counters.forwarded.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for DelaySwitch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
