//! A small HTTP/1.1 server on std's `TcpListener`, for the operator's
//! endpoint (`http.listen`): GET and HEAD only, one request per connection.
//!
//! Everything a client sends is hostile, so everything is bounded: one
//! accept thread and [`Limits::workers`] worker threads (no thread per
//! connection); at most [`Limits::queue`] accepted connections waiting for a
//! worker, beyond which a new connection is closed unanswered; a request head
//! of at most [`Limits::max_head`] bytes, which must arrive within
//! [`Limits::read_deadline`] in total (a client dribbling bytes is cut off
//! at the deadline, not per read); a write timeout; bodies are never read.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How often the accept thread looks at the stop flag while idle.
const ACCEPT_POLL_MS: i32 = 200;

/// The bounds of one server.
#[derive(Debug, Clone)]
pub struct Limits {
    pub workers: usize,
    pub queue: usize,
    pub max_head: usize,
    pub read_deadline: Duration,
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            workers: 4,
            queue: 32,
            max_head: 8 * 1024,
            read_deadline: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
        }
    }
}

/// The request line of a GET or HEAD request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub head_only: bool,
    /// The path, without the query string.
    pub path: String,
}

/// A complete response; `Connection: close` and `Content-Length` are added.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, &'static str)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A one-line plain-text response.
    pub fn text(status: u16, line: impl AsRef<str>) -> Response {
        let mut body = line.as_ref().replace(['\r', '\n'], " ");
        body.push('\n');
        Response::new(status, "text/plain; charset=utf-8", body)
    }

    pub fn with_header(mut self, name: &'static str, value: &'static str) -> Response {
        self.headers.push((name, value));
        self
    }
}

/// What serves each request (runs on a worker thread).
pub type Handler = Arc<dyn Fn(&Request) -> Response + Send + Sync>;
/// Told when a connection is turned away because every worker and queue
/// place is taken, and of each answer given (`path` of the request if it had
/// one, status code).
pub trait Observer: Send + Sync {
    fn refused(&self);
    fn answered(&self, request: Option<&Request>, status: u16);
}

/// A running server; stopped (threads joined) on drop.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Bind `addr` and serve with `handler`.
    pub fn start(
        addr: SocketAddr,
        limits: Limits,
        handler: Handler,
        observer: Arc<dyn Observer>,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(limits.queue.max(1));
        let mut threads = Vec::new();
        for i in 0..limits.workers.max(1) {
            let rx: Receiver<TcpStream> = rx.clone();
            let handler = handler.clone();
            let observer = observer.clone();
            let limits = limits.clone();
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || {
                        // Ends when the accept thread drops the sender;
                        // once stopping, what is still queued is closed.
                        for stream in rx.iter() {
                            if stop.load(Ordering::SeqCst) {
                                continue;
                            }
                            // A panic in a handler closes that connection,
                            // not this worker.
                            let served = std::panic::catch_unwind(AssertUnwindSafe(|| {
                                serve_connection(stream, &limits, &*handler, &*observer)
                            }));
                            if let Err(payload) = served {
                                tracing::error!(
                                    "http handler panicked: {}",
                                    gestor_sdk::plugin::panic_message(&*payload)
                                );
                            }
                        }
                    })?,
            );
        }
        let accept_stop = stop.clone();
        threads.push(
            std::thread::Builder::new()
                .name("http-accept".into())
                .spawn(move || accept_loop(listener, tx, &accept_stop, &*observer))?,
        );
        Ok(Server {
            addr,
            stop,
            threads,
        })
    }

    /// The bound address (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stop accepting, let the workers finish what they hold, join them.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Wait until `listener` has a connection or `ms` pass.
fn wait_readable(listener: &TcpListener, ms: i32) {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for a descriptor the listener owns for the
    // duration of the call.
    unsafe {
        libc::poll(&mut fd, 1, ms);
    }
}

fn accept_loop(
    listener: TcpListener,
    tx: Sender<TcpStream>,
    stop: &AtomicBool,
    observer: &dyn Observer,
) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => match tx.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(stream)) => {
                    observer.refused();
                    drop(stream);
                }
                Err(TrySendError::Disconnected(_)) => return,
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                wait_readable(&listener, ACCEPT_POLL_MS)
            }
            Err(e) => {
                // Out of descriptors and the like: back off, keep serving.
                tracing::warn!("http: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS as u64));
            }
        }
    }
}

/// Why a request head could not be read.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Closed, reset, or nothing sent: nobody to answer.
    Gone,
    TooSlow,
    TooLarge,
}

/// Read until the blank line ending the head, within the limits.
fn read_head(stream: &mut TcpStream, limits: &Limits) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + limits.read_deadline;
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(HeadError::TooSlow);
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Gone)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Gone),
            Ok(n) => {
                // Search only the new bytes (and the 3 before them).
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(&chunk[..n]);
                if let Some(end) = find_blank_line(&head[from..]) {
                    head.truncate(from + end);
                    return Ok(head);
                }
                if head.len() > limits.max_head {
                    return Err(HeadError::TooLarge);
                }
            }
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                return Err(HeadError::TooSlow)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Gone),
        }
    }
}

fn find_blank_line(bytes: &[u8]) -> Option<usize> {
    bytes.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parse the request line; `Err` is the response to give.
pub fn parse_head(head: &[u8]) -> Result<Request, Response> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let line = std::str::from_utf8(&head[..line_end])
        .map_err(|_| Response::text(400, "bad request: request line is not UTF-8"))?;
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Response::text(400, "bad request: malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::text(400, "bad request: HTTP/1.x only"));
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => {
            return Err(Response::text(405, "method not allowed: GET or HEAD only")
                .with_header("Allow", "GET, HEAD"))
        }
    };
    if !target.starts_with('/') {
        return Err(Response::text(
            400,
            "bad request: origin-form path expected",
        ));
    }
    let path = target.split(['?', '#']).next().unwrap_or("/").to_string();
    Ok(Request { head_only, path })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn write_response(
    stream: &mut TcpStream,
    response: &Response,
    head_only: bool,
    limits: &Limits,
) -> io::Result<()> {
    stream.set_write_timeout(Some(limits.write_timeout))?;
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
        response.status,
        reason(response.status),
        response.content_type,
        response.body.len()
    );
    for (name, value) in &response.headers {
        out.push_str(name);
        out.push_str(": ");
        out.push_str(value);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    if !head_only {
        bytes.extend_from_slice(&response.body);
    }
    stream.write_all(&bytes)?;
    stream.flush()
}

fn serve_connection(
    mut stream: TcpStream,
    limits: &Limits,
    handler: &(dyn Fn(&Request) -> Response + Send + Sync),
    observer: &dyn Observer,
) {
    // Accepted sockets may inherit the listener's non-blocking mode.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let (request, response) = match read_head(&mut stream, limits) {
        Err(HeadError::Gone) => return,
        Err(HeadError::TooSlow) => (None, Response::text(408, "request timeout")),
        Err(HeadError::TooLarge) => (None, Response::text(431, "request head too large")),
        Ok(head) => match parse_head(&head) {
            Err(r) => (None, r),
            Ok(req) => {
                let resp = handler(&req);
                (Some(req), resp)
            }
        },
    };
    let head_only = request.as_ref().is_some_and(|r| r.head_only);
    observer.answered(request.as_ref(), response.status);
    if let Err(e) = write_response(&mut stream, &response, head_only, limits) {
        tracing::debug!("http: response not sent: {e}");
    }
    let _ = stream.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[derive(Default)]
    struct Count {
        refused: AtomicU64,
        answered: AtomicU64,
    }
    impl Observer for Count {
        fn refused(&self) {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        fn answered(&self, _: Option<&Request>, _: u16) {
            self.answered.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn server(limits: Limits) -> (Server, Arc<Count>) {
        let count = Arc::new(Count::default());
        let handler: Handler = Arc::new(|req: &Request| match req.path.as_str() {
            "/hello" => Response::text(200, "hello"),
            _ => Response::text(404, "not found"),
        });
        let s = Server::start(
            "127.0.0.1:0".parse().unwrap(),
            limits,
            handler,
            count.clone(),
        )
        .unwrap();
        (s, count)
    }

    fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // A turned-away connection may be closed before we write: no answer.
        if s.write_all(raw).is_err() {
            return String::new();
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    #[test]
    fn parses_request_lines() {
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a").unwrap(),
            Request {
                head_only: false,
                path: "/metrics".into()
            }
        );
        assert!(parse_head(b"HEAD / HTTP/1.0").unwrap().head_only);
        assert_eq!(parse_head(b"POST / HTTP/1.1").unwrap_err().status, 405);
        assert_eq!(
            parse_head(b"GET http://x/ HTTP/1.1").unwrap_err().status,
            400
        );
        assert_eq!(parse_head(b"GET / HTTP/2 extra").unwrap_err().status, 400);
        assert_eq!(parse_head(b"\xff\xfe").unwrap_err().status, 400);
        assert_eq!(parse_head(b"").unwrap_err().status, 400);
    }

    #[test]
    fn answers_and_refuses_what_it_must() {
        let (s, count) = server(Limits::default());
        let ok = exchange(s.local_addr(), b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 6\r\n") && ok.ends_with("\r\n\r\nhello\n"));
        let head = exchange(s.local_addr(), b"HEAD /hello HTTP/1.1\r\n\r\n");
        assert!(
            head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
            "{head}"
        );
        let missing = exchange(s.local_addr(), b"GET /nope HTTP/1.1\r\n\r\n");
        assert!(missing.starts_with("HTTP/1.1 404"));
        let post = exchange(s.local_addr(), b"POST /hello HTTP/1.1\r\n\r\n");
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"));
        let mut huge = b"GET /hello HTTP/1.1\r\nX: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 20_000));
        let big = exchange(s.local_addr(), &huge);
        assert!(big.starts_with("HTTP/1.1 431"), "{big}");
        assert_eq!(count.answered.load(Ordering::SeqCst), 5);
    }

    #[test]
    fn silent_clients_neither_hold_a_worker_forever_nor_block_others() {
        let limits = Limits {
            workers: 1,
            queue: 4,
            read_deadline: Duration::from_millis(300),
            ..Limits::default()
        };
        let (s, _) = server(limits);
        // Holds the only worker until the read deadline cuts it off.
        let mut silent = TcpStream::connect(s.local_addr()).unwrap();
        silent.write_all(b"GET /hel").unwrap();
        let ok = exchange(s.local_addr(), b"GET /hello HTTP/1.1\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        silent
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut cut = String::new();
        let _ = silent.read_to_string(&mut cut);
        assert!(cut.starts_with("HTTP/1.1 408"), "{cut}");
    }

    #[test]
    fn a_full_queue_turns_connections_away() {
        let limits = Limits {
            workers: 1,
            queue: 1,
            read_deadline: Duration::from_secs(3),
            ..Limits::default()
        };
        let (s, count) = server(limits);
        // One in the queue, one held by the worker once it has taken it,
        // the rest turned away.
        let held: Vec<TcpStream> = (0..6)
            .map(|_| TcpStream::connect(s.local_addr()).unwrap())
            .collect();
        let until = Instant::now() + Duration::from_secs(10);
        while count.refused.load(Ordering::SeqCst) < 4 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        let refused = count.refused.load(Ordering::SeqCst);
        assert!((4..=5).contains(&refused), "{refused}");
        drop(held);
        // Served again once the held connections are gone: the worker may
        // still sit on one until its read deadline, so poll.
        let until = Instant::now() + Duration::from_secs(10);
        let mut ok = String::new();
        while !ok.starts_with("HTTP/1.1 200") && Instant::now() < until {
            ok = exchange(s.local_addr(), b"GET /hello HTTP/1.1\r\n\r\n");
            if !ok.starts_with("HTTP/1.1 200") {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        assert!(ok.starts_with("HTTP/1.1 200"), "never served again: {ok:?}");
    }
}
