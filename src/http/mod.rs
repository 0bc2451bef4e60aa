//! HTTP on two listeners: the public one (webhooks, `/healthz`) and the private admin one
//! (`/api/*`). The only module that imports tiny_http.
//!
//! tiny_http traps handled here: accepted sockets get read/write timeouts by setting them
//! on the listening socket (Linux copies them to accepted sockets), which bounds how long
//! an idle or stalled client holds one of tiny_http's per-connection threads. The same
//! timeout makes `accept()` return EAGAIN after an idle spell, and tiny_http's accept loop
//! stops for good on any accept error; so when `recv()` reports an error the listener is
//! restarted on the same socket (nothing queued in the kernel is lost) and the old server
//! is drained of requests its live connections still send.

pub mod admin;
mod charts;
mod links;
mod offers;
pub mod page;
pub mod public;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tiny_http::{Header, Request, Response, Server};

use crate::ingest::Headers;

/// How often idle workers look at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// When stopping, workers answer requests that have already arrived until none has come
/// for `DRAIN_QUIET`, and for at most `DRAIN_MAX`: a keep-alive client that goes on
/// sending is cut off then (its unanswered request is retried by its sender).
const DRAIN_QUIET: Duration = Duration::from_millis(100);
const DRAIN_MAX: Duration = Duration::from_secs(1);
/// How often the public listener is looked after (see [`spawn_upkeep`]); the admin
/// listener, where a stranded connection only delays an operator, needs it less often.
pub const UPKEEP_PUBLIC: Duration = Duration::from_millis(50);
pub const UPKEEP_ADMIN: Duration = Duration::from_millis(500);

pub type Handler = Arc<dyn Fn(Request) + Send + Sync>;

/// A listening socket and the tiny_http server currently accepting on it.
pub struct Listener {
    socket: TcpListener,
    current: RwLock<Arc<Server>>,
    addr: SocketAddr,
    io_timeout: Duration,
}

impl Listener {
    /// Binds `addr` with socket timeouts that accepted connections inherit.
    pub fn bind(addr: SocketAddr, io_timeout: Duration) -> io::Result<Arc<Listener>> {
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.set_read_timeout(Some(io_timeout))?;
        sock.set_write_timeout(Some(io_timeout))?;
        sock.bind(&addr.into())?;
        sock.listen(1024)?;
        let socket: TcpListener = sock.into();
        let addr = socket.local_addr()?;
        let server = Self::server_on(&socket)?;
        Ok(Arc::new(Listener {
            socket,
            current: RwLock::new(server),
            addr,
            io_timeout,
        }))
    }

    fn server_on(socket: &TcpListener) -> io::Result<Arc<Server>> {
        Server::from_listener(socket.try_clone()?, None)
            .map(Arc::new)
            .map_err(io::Error::other)
    }

    /// Stops accepting: from now on connection attempts are refused, connections waiting
    /// in the kernel's queue are reset (neither was answered, so both are retried by their
    /// sender), and tiny_http's accept loop ends. Set the workers' stop flag first.
    pub fn close(&self) {
        if let Err(e) = socket2::SockRef::from(&self.socket).shutdown(std::net::Shutdown::Read) {
            log::warn!("http {}: cannot stop accepting: {e}", self.addr);
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    fn server(&self) -> Arc<Server> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces a server whose accept loop has stopped; returns the old one to drain.
    fn restart(&self, failed: &Arc<Server>, err: &io::Error) -> Option<Arc<Server>> {
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        if !Arc::ptr_eq(&cur, failed) {
            return None; // another worker already restarted it
        }
        if err.kind() != io::ErrorKind::WouldBlock {
            log::warn!(
                "http {}: accept failed ({err}); restarting the listener",
                self.addr
            );
        }
        match Self::server_on(&self.socket) {
            Ok(new) => Some(std::mem::replace(&mut *cur, new)),
            Err(e) => {
                log::error!("http {}: cannot restart the listener: {e}", self.addr);
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        }
    }
}

/// The most workers one listener runs (see [`Workers`]).
pub const MAX_WORKERS: usize = 1024;
/// Added workers end once the pool has not needed to grow for this long.
const EXTRA_IDLE: Duration = Duration::from_secs(10);

/// The threads answering one listener's requests. A worker is busy for as long as its
/// handler reads the body, and a client that stalls in the middle of its body keeps it
/// busy until the socket timeout; so a fixed pool would let a handful of such clients
/// stop every webhook. There are always `base` workers; [`Workers::grow_if_stuck`],
/// called every few tens of milliseconds, doubles them (up to `max`) when none is idle
/// and they finished fewer requests than there are workers since the last call; once the
/// pool has not grown for [`EXTRA_IDLE`], added workers end when idle. A handler that
/// panics costs its request (tiny_http answers 500), not the worker. (Starting a worker whenever the
/// last idle one takes a request also works, but under ordinary full load it keeps
/// dozens of extra threads contending for the CPU: 30% fewer acks/s in the benchmark.)
pub struct Workers {
    name: String,
    listener: Arc<Listener>,
    handler: Handler,
    stop: Arc<AtomicBool>,
    base: usize,
    max: usize,
    born: Instant,
    /// Milliseconds after `born` of the last growth.
    grown_at_ms: AtomicU64,
    idle: AtomicUsize,
    total: AtomicUsize,
    spawned: AtomicUsize,
    /// Requests answered, and the count at the last `grow_if_stuck`.
    served: AtomicUsize,
    served_before: AtomicUsize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Workers {
    pub fn start(
        name: &str,
        listener: &Arc<Listener>,
        base: usize,
        max: usize,
        handler: Handler,
        stop: &Arc<AtomicBool>,
    ) -> io::Result<Arc<Workers>> {
        let workers = Arc::new(Workers {
            name: name.to_string(),
            listener: listener.clone(),
            handler,
            stop: stop.clone(),
            base,
            max: max.max(base),
            born: Instant::now(),
            grown_at_ms: AtomicU64::new(0),
            idle: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            spawned: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            served_before: AtomicUsize::new(0),
            threads: Mutex::new(Vec::new()),
        });
        for _ in 0..base {
            workers.add(false)?;
        }
        Ok(workers)
    }

    /// Doubles the workers when every one is busy and they have been slow since the last
    /// call: clients stalled in their bodies are holding them.
    pub fn grow_if_stuck(self: &Arc<Self>) {
        let served = self.served.load(Ordering::Relaxed);
        let since = served.wrapping_sub(self.served_before.swap(served, Ordering::Relaxed));
        let total = self.running();
        if self.idle.load(Ordering::Acquire) > 0 || since >= total {
            return;
        }
        self.grown_at_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        for _ in 0..total.max(1) {
            if let Err(e) = self.add(true) {
                log::error!("{}: cannot start another worker: {e}", self.name);
                return;
            }
        }
    }

    /// How many workers are running now.
    pub fn running(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    fn add(self: &Arc<Self>, extra: bool) -> io::Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Ok(());
        }
        self.idle.fetch_add(1, Ordering::AcqRel);
        let n = self.spawned.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("{}-{n}", self.name))
            .spawn(move || me.work(extra));
        match spawned {
            Ok(t) => {
                let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
                threads.retain(|t| !t.is_finished());
                threads.push(t);
                Ok(())
            }
            Err(e) => {
                self.idle.fetch_sub(1, Ordering::AcqRel);
                self.total.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Whether an added worker should end: the pool has not needed to grow for a while.
    /// (Judged for the pool, not per worker: tiny_http hands requests to any waiting
    /// worker, so under steady light traffic every extra one would keep getting some.)
    fn surplus(&self, extra: bool) -> bool {
        let since = (self.born.elapsed().as_millis() as u64)
            .saturating_sub(self.grown_at_ms.load(Ordering::Relaxed));
        extra && since >= EXTRA_IDLE.as_millis() as u64
    }

    fn work(self: Arc<Self>, extra: bool) {
        let listener = &self.listener;
        while !self.stop.load(Ordering::Relaxed) {
            let server = listener.server();
            match server.recv_timeout(POLL) {
                Ok(Some(rq)) => {
                    self.idle.fetch_sub(1, Ordering::AcqRel);
                    let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        (self.handler)(rq)
                    }));
                    if handled.is_err() {
                        log::error!(
                            "{}: a request handler panicked; the worker goes on",
                            self.name
                        );
                    }
                    self.idle.fetch_add(1, Ordering::AcqRel);
                    self.served.fetch_add(1, Ordering::Relaxed);
                    if self.surplus(extra) && self.idle.load(Ordering::Relaxed) > self.base {
                        break;
                    }
                }
                Ok(None) if self.surplus(extra) => break,
                Ok(None) => {}
                // After `close` the accept loop ends on purpose.
                Err(_) if self.stop.load(Ordering::Relaxed) => {}
                Err(e) => {
                    if let Some(old) = listener.restart(&server, &e) {
                        drop(server);
                        spawn_drain(
                            old,
                            listener.io_timeout,
                            self.handler.clone(),
                            self.stop.clone(),
                        );
                    }
                }
            }
        }
        if self.stop.load(Ordering::Relaxed) {
            self.drain();
        }
        self.idle.fetch_sub(1, Ordering::AcqRel);
        self.total.fetch_sub(1, Ordering::AcqRel);
    }

    /// Stopping: answers the requests that have already arrived, until none has come for
    /// a moment. Whatever arrives later gets no answer, so its sender retries it.
    fn drain(&self) {
        let server = self.listener.server();
        let until = Instant::now() + DRAIN_MAX;
        while Instant::now() < until {
            match server.recv_timeout(DRAIN_QUIET) {
                Ok(Some(rq)) => (self.handler)(rq),
                Ok(None) => break,
                Err(_) => {} // the accept loop's end, queued by `close`
            }
        }
    }

    /// Waits until `deadline` for the workers to end (set the stop flag first); returns
    /// the names of those that panicked or are still busy.
    pub fn join(&self, deadline: Instant) -> (Vec<String>, Vec<String>) {
        let (mut panicked, mut busy) = (Vec::new(), Vec::new());
        // Growth may add one just as the stop begins: take until none is left.
        loop {
            let threads =
                std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
            if threads.is_empty() {
                return (panicked, busy);
            }
            for t in threads {
                while !t.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                let name = t.thread().name().unwrap_or("http").to_string();
                if !t.is_finished() {
                    busy.push(name);
                } else if t.join().is_err() {
                    panicked.push(name);
                }
            }
        }
    }
}

/// Looks after a listener every `every` (20 times a second for the public one): calls
/// [`Workers::grow_if_stuck`], and connects and hangs up, for two tiny_http traps:
///
/// - Its connection thread pool can leave a new connection queued with no thread to serve
///   it when several arrive at once (it counts a waiting thread that was already woken
///   for another), and a queued connection waits until some other keep-alive connection
///   ends: seconds under steady load. A kick is a connection that ends at once, so the
///   thread that takes it moves on to the queued one.
/// - An `accept()` idle for the socket timeout returns EAGAIN and ends tiny_http's accept
///   loop; kicks keep it from ever idling that long (a restart remains the fallback).
pub fn spawn_upkeep(
    listener: &Arc<Listener>,
    workers: &Arc<Workers>,
    every: Duration,
    stop: &Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let mut addr = listener.local_addr();
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    let (workers, stop) = (workers.clone(), stop.clone());
    std::thread::Builder::new()
        .name(format!("{}-upkeep", workers.name))
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                workers.grow_if_stuck();
                let kick = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1));
                drop(kick);
                std::thread::sleep(every);
            }
        })
}

/// Serves what a retired server's open connections still send, until they have all been
/// quiet for longer than the socket timeout (by then each has been closed).
fn spawn_drain(old: Arc<Server>, io_timeout: Duration, handler: Handler, stop: Arc<AtomicBool>) {
    let spawned = std::thread::Builder::new()
        .name("http-drain".into())
        .spawn(move || {
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) && last.elapsed() < io_timeout * 2 {
                if let Ok(Some(rq)) = old.recv_timeout(POLL) {
                    last = Instant::now();
                    handler(rq);
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("http: cannot start a drain thread: {e}");
    }
}

/// The request's headers with lower-cased names.
pub fn headers_of(rq: &Request) -> Headers {
    Headers(
        rq.headers()
            .iter()
            .map(|h| {
                (
                    h.field.as_str().as_str().to_ascii_lowercase(),
                    h.value.as_str().to_string(),
                )
            })
            .collect(),
    )
}

/// Why a body could not be read.
pub enum BodyError {
    TooLarge,
    /// The client sent nothing for the socket timeout.
    Stalled,
    /// Too many bodies are being read at once ([`BODY_BUDGET`]).
    Busy,
    Io(io::Error),
}

/// The most bytes of request bodies being read at once, across all workers. Bodies are
/// read before their signature can be checked, and up to 1,024 workers may be reading
/// (see [`Workers`]): without a budget, clients that send most of a large body and then
/// stall could hold gigabytes on a 512 MB machine. Over it, a request is answered 503.
pub const BODY_BUDGET: usize = 64 << 20;
static BODIES_READING: AtomicUsize = AtomicUsize::new(0);

/// Bytes of [`BODY_BUDGET`] held by one body being read; given back on drop.
struct Held(usize);

impl Held {
    fn grow(&mut self, n: usize) -> bool {
        let before = BODIES_READING.fetch_add(n, Ordering::AcqRel);
        self.0 += n;
        before + n <= BODY_BUDGET
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        BODIES_READING.fetch_sub(self.0, Ordering::AcqRel);
    }
}

/// Reads the body, refusing (without reading it all) one larger than `cap`, and one that
/// would take the bodies being read past [`BODY_BUDGET`].
pub fn read_body(rq: &mut Request, cap: usize) -> Result<Vec<u8>, BodyError> {
    if rq.body_length().is_some_and(|n| n > cap) {
        return Err(BodyError::TooLarge);
    }
    let announced = rq.body_length();
    let mut held = Held(0);
    let mut body = Vec::with_capacity(announced.unwrap_or(0).min(cap).min(64 << 10));
    let mut reader = rq.as_reader().take(cap as u64 + 1);
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(BodyError::Stalled)
            }
            Err(e) => return Err(BodyError::Io(e)),
        };
        if !held.grow(n) {
            return Err(BodyError::Busy);
        }
        body.extend_from_slice(&buf[..n]);
    }
    if body.len() > cap {
        return Err(BodyError::TooLarge);
    }
    // tiny_http ends the body quietly when the client hangs up early.
    if let Some(want) = announced.filter(|&n| body.len() < n) {
        return Err(BodyError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the body ended before its Content-Length ({} of {want} bytes)",
                body.len()
            ),
        )));
    }
    Ok(body)
}

pub fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("static header is valid ASCII")
}

/// A plain-text response.
pub fn text(status: u16, body: &str) -> Response<io::Cursor<Vec<u8>>> {
    Response::from_string(body.to_string())
        .with_status_code(status)
        .with_header(header("Content-Type", "text/plain; charset=utf-8"))
}

/// A JSON response.
pub fn json(status: u16, value: &serde_json::Value) -> Response<io::Cursor<Vec<u8>>> {
    Response::from_data(value.to_string().into_bytes())
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

/// Sends a response, ignoring a client that has gone away.
pub fn respond<R: Read>(rq: Request, resp: Response<R>) {
    let _ = rq.respond(resp);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_budget_refuses_past_the_limit_and_gives_back_on_drop() {
        let before = BODIES_READING.load(Ordering::Acquire);
        {
            let mut a = Held(0);
            assert!(a.grow(BODY_BUDGET / 2));
            let mut b = Held(0);
            assert!(!b.grow(BODY_BUDGET), "past the budget");
        }
        assert_eq!(BODIES_READING.load(Ordering::Acquire), before);
    }
}
