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
pub mod public;

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tiny_http::{Header, Request, Response, Server};

use crate::ingest::Headers;

/// How often idle workers look at the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// How often the public listener is kicked (see [`spawn_kicker`]); the admin listener,
/// where a stranded connection only delays an operator, needs it only to keep `accept()`
/// from idling into its timeout.
pub const KICK_PUBLIC: Duration = Duration::from_millis(50);
pub const KICK_ADMIN: Duration = Duration::from_secs(1);

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
            eprintln!(
                "http {}: accept failed ({err}); restarting the listener",
                self.addr
            );
        }
        match Self::server_on(&self.socket) {
            Ok(new) => Some(std::mem::replace(&mut *cur, new)),
            Err(e) => {
                eprintln!("http {}: cannot restart the listener: {e}", self.addr);
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        }
    }
}

/// Starts `n` named worker threads answering requests with `handler` until `stop` is set.
pub fn spawn_workers(
    name: &str,
    listener: &Arc<Listener>,
    n: usize,
    handler: Handler,
    stop: &Arc<AtomicBool>,
) -> io::Result<Vec<JoinHandle<()>>> {
    (0..n)
        .map(|i| {
            let listener = listener.clone();
            let handler = handler.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(&listener, &handler, &stop))
        })
        .collect()
}

fn worker(listener: &Arc<Listener>, handler: &Handler, stop: &Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let server = listener.server();
        match server.recv_timeout(POLL) {
            Ok(Some(rq)) => handler(rq),
            Ok(None) => {}
            Err(e) => {
                if let Some(old) = listener.restart(&server, &e) {
                    drop(server);
                    spawn_drain(old, listener.io_timeout, handler.clone(), stop.clone());
                }
            }
        }
    }
}

/// Connects to the listener and hangs up, twenty times a second, for two tiny_http traps:
///
/// - Its connection thread pool can leave a new connection queued with no thread to serve
///   it when several arrive at once (it counts a waiting thread that was already woken
///   for another), and a queued connection waits until some other keep-alive connection
///   ends: seconds under steady load. A kick is a connection that ends at once, so the
///   thread that takes it moves on to the queued one.
/// - An `accept()` idle for the socket timeout returns EAGAIN and ends tiny_http's accept
///   loop; kicks keep it from ever idling that long (a restart remains the fallback).
pub fn spawn_kicker(
    listener: &Arc<Listener>,
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
    let stop = stop.clone();
    std::thread::Builder::new()
        .name("http-kick".into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
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
        eprintln!("http: cannot start a drain thread: {e}");
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
    Io(io::Error),
}

/// Reads the body, refusing (without reading it all) one larger than `cap`.
pub fn read_body(rq: &mut Request, cap: usize) -> Result<Vec<u8>, BodyError> {
    if rq.body_length().is_some_and(|n| n > cap) {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::with_capacity(rq.body_length().unwrap_or(0).min(cap));
    rq.as_reader()
        .take(cap as u64 + 1)
        .read_to_end(&mut body)
        .map_err(BodyError::Io)?;
    if body.len() > cap {
        return Err(BodyError::TooLarge);
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
