//! Wiring only: open storage, bind the listeners, make the channels, spawn the named
//! threads, and shut them down in order (stop accepting, drain the writer, let the
//! processor catch up, sync, join every thread).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};

use crate::clock::{Clock, SystemClock};
use crate::config::Config;
use crate::http::{self, admin::AdminCtx, public::PublicCtx, Listener, Workers};
use crate::pipeline::writer::{self, Health, Rejections};
use crate::pipeline::{jobs, processor};
use crate::storage::{self, Storage};

/// How long accepted sockets may sit idle in a read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Jobs waiting for the writer before HTTP workers block (backpressure).
const QUEUE: usize = 8192;

/// The writer is the one serial step every webhook waits for; under load it competes for
/// the CPU with one tiny_http thread per connection and the parallel stages. Raising its
/// priority took durable acks/s from ~5,400 to ~6,500 in the ingest benchmark. Needs root
/// or CAP_SYS_NICE (systemd: `AmbientCapabilities=CAP_SYS_NICE`); without it the writer
/// runs at the default priority. (Lowering the processor instead let it fall behind and
/// grow memory: measured, rejected.)
const WRITER_NICE: i32 = -10;

/// Changes the calling thread's nice value by `delta`; a refusal is reported, not fatal.
fn renice(thread: &str, delta: i32) {
    let tid = rustix::thread::gettid();
    let result = rustix::process::getpriority_process(Some(tid))
        .and_then(|now| rustix::process::setpriority_process(Some(tid), now + delta));
    if let Err(e) = result {
        log::info!(
            "{thread}: running at the default priority ({e}); it takes more webhooks per second with CAP_SYS_NICE (the packaged unit grants none: README \"The unit's hardening\")"
        );
    }
}

/// Raises the open-file soft limit to the hard limit and returns the limit now in force.
/// Every open connection is a file descriptor (and a tiny_http thread), and systemd starts
/// services with a soft limit of 1,024, which a burst of slow clients would exhaust.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        lim.current = lim.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, lim) {
            log::warn!("cannot raise the open-file limit to {:?}: {e}", lim.maximum);
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Tells systemd how the service stands (`Type=notify`, sd_notify(3)): `READY=1` once it
/// listens, `STOPPING=1` when it begins to stop. Does nothing when not started by systemd
/// (no `NOTIFY_SOCKET`); a failure is logged, not fatal.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = (|| -> std::io::Result<()> {
        use std::os::linux::net::SocketAddrExt;
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::net::{SocketAddr, UnixDatagram};
        let socket = UnixDatagram::unbound()?;
        // A leading '@' names a socket in the abstract namespace.
        let addr = match path.as_bytes().strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        socket.send_to_addr(state.as_bytes(), &addr)?;
        Ok(())
    })();
    if let Err(e) = sent {
        log::warn!("cannot tell systemd {state:?} through {path:?}: {e}");
    }
}

pub struct Options {
    pub faults: storage::Faults,
    pub clock: Arc<dyn Clock>,
    /// Socket read/write timeout of accepted connections.
    pub io_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            faults: storage::Faults::default(),
            clock: Arc::new(SystemClock),
            io_timeout: IO_TIMEOUT,
        }
    }
}

/// A started service.
pub struct Running {
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub storage: Arc<Storage>,
    /// What the scheduler reports (start-up catch-up, rounds, errors).
    pub scheduler_report: crate::pipeline::scheduler::SharedReport,
    /// The scheduled jobs' last results.
    pub jobs: Arc<jobs::Status>,
    stop: Arc<AtomicBool>,
    listeners: [Arc<Listener>; 2],
    workers: [Arc<Workers>; 2],
    upkeep: Vec<JoinHandle<()>>,
    /// Dropping it tells the writer to commit what is queued and end.
    writer_stop: crossbeam_channel::Sender<()>,
    writer: JoinHandle<()>,
    responder: JoinHandle<()>,
    processor: JoinHandle<()>,
    fetcher: JoinHandle<()>,
    scheduler: crate::pipeline::scheduler::Scheduler,
    jobs_thread: JoinHandle<()>,
}

pub fn start(config: Config, opts: Options) -> anyhow::Result<Running> {
    let config = Arc::new(config);
    raise_open_file_limit();
    let storage = Storage::open(
        &config.data_dir,
        &storage::Options {
            cache_size_mb: config.cache_size_mb,
            faults: opts.faults,
        },
    )?;
    let public = Listener::bind(config.listen, opts.io_timeout)
        .with_context(|| format!("listen = {}: cannot listen there", config.listen))?;
    let admin = Listener::bind(config.admin_listen, opts.io_timeout).with_context(|| {
        format!(
            "admin_listen = {}: cannot listen there",
            config.admin_listen
        )
    })?;

    let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(QUEUE);
    let (committed_tx, committed_rx) = crossbeam_channel::bounded(1);
    let (answers_tx, answers_rx) = crossbeam_channel::bounded(64);
    let (writer_stop, writer_stop_rx) = crossbeam_channel::bounded(0);
    let rejections = Arc::new(Rejections::new(&config.store_ids()));
    let health = Arc::new(Health::default());
    let commits = Arc::new(crate::metrics::Commits::default());
    let stop = Arc::new(AtomicBool::new(false));

    let writer = {
        let (storage, rejections, health, commits, clock) = (
            storage.clone(),
            rejections.clone(),
            health.clone(),
            commits.clone(),
            opts.clock.clone(),
        );
        std::thread::Builder::new()
            .name("writer".into())
            .spawn(move || {
                let now = || clock.now();
                renice("writer", WRITER_NICE);
                writer::run(
                    storage,
                    jobs_rx,
                    writer_stop_rx,
                    rejections,
                    health,
                    commits,
                    committed_tx,
                    answers_tx,
                    now,
                )
            })?
    };
    let responder = std::thread::Builder::new()
        .name("responder".into())
        .spawn(move || writer::respond(answers_rx))?;
    // The stores' platform APIs: BigCommerce's orders are fetched after their webhooks,
    // and the sync job reconciles every store with one.
    let apis = crate::pipeline::sync::apis(&config, Some(stop.clone()));
    let (fetch_tx, fetch_rx) = crossbeam_channel::bounded(QUEUE);
    let fetcher = {
        let (storage, config, apis, clock, stop) = (
            storage.clone(),
            config.clone(),
            apis.clone(),
            opts.clock.clone(),
            stop.clone(),
        );
        std::thread::Builder::new()
            .name("fetcher".into())
            .spawn(move || {
                crate::pipeline::sync::run_fetcher(storage, config, apis, fetch_rx, clock, stop)
            })?
    };
    let processor = {
        let (storage, stop) = (storage.clone(), stop.clone());
        let mut settings = processor::Settings::service(config.clone(), opts.clock.clone());
        settings.fetch = Some(fetch_tx);
        std::thread::Builder::new()
            .name("processor".into())
            .spawn(move || processor::run(storage, settings, committed_rx, stop))?
    };
    let scheduler_report = crate::pipeline::scheduler::SharedReport::default();
    // Each store's link-signing key, generated once and kept in the database.
    let mut keys = crate::outbound::LinkKeys::new();
    for s in &config.stores {
        keys.insert(s.id.clone(), storage.link_key(&s.id)?);
    }
    let link_keys = Arc::new(keys);
    // Paused stores, as the database has them: a restart does not resume sending.
    let pauses = Arc::new(crate::pipeline::pause::Pauses::load(
        &storage,
        &config.store_ids(),
    )?);
    let scheduler = {
        let (storage, stop, config, clock, scheduler_report, link_keys, pauses) = (
            storage.clone(),
            stop.clone(),
            config.clone(),
            opts.clock.clone(),
            scheduler_report.clone(),
            link_keys.clone(),
            pauses.clone(),
        );
        let outbox =
            crate::outbound::outbox::Outbox::open(&config.data_dir).with_context(|| {
                format!(
                    "opening {}",
                    config
                        .data_dir
                        .join(crate::outbound::outbox::Outbox::FILE)
                        .display()
                )
            })?;
        crate::pipeline::scheduler::start(
            storage,
            config,
            clock,
            outbox,
            link_keys,
            pauses,
            Arc::new(apis.clone()),
            scheduler_report,
            stop,
        )?
    };

    let jobs = Arc::new(jobs::Status::default());
    let jobs_thread = {
        let (storage, stop, config, clock, jobs, apis) = (
            storage.clone(),
            stop.clone(),
            config.clone(),
            opts.clock.clone(),
            jobs.clone(),
            apis.clone(),
        );
        std::thread::Builder::new()
            .name("jobs".into())
            .spawn(move || jobs::run(storage, config, clock, jobs, apis, stop))?
    };

    let public_ctx = Arc::new(PublicCtx {
        config: config.clone(),
        storage: storage.clone(),
        link_keys,
        jobs: jobs_tx,
        rejections,
        clock: opts.clock.clone(),
    });
    let admin_ctx = Arc::new(AdminCtx {
        config: config.clone(),
        storage: storage.clone(),
        health,
        commits,
        started: Instant::now(),
        clock: opts.clock.clone(),
        scheduler: scheduler_report.clone(),
        pauses,
        lift: Default::default(),
        apis,
    });
    let workers = [
        Workers::start(
            "http",
            &public,
            config.http_workers,
            http::MAX_WORKERS,
            Arc::new(move |rq| http::public::handle(&public_ctx, rq)),
            &stop,
        )?,
        Workers::start(
            "admin",
            &admin,
            2,
            16,
            Arc::new(move |rq| http::admin::handle(&admin_ctx, rq)),
            &stop,
        )?,
    ];
    let upkeep = vec![
        http::spawn_upkeep(&public, &workers[0], http::UPKEEP_PUBLIC, &stop)?,
        http::spawn_upkeep(&admin, &workers[1], http::UPKEEP_ADMIN, &stop)?,
    ];
    Ok(Running {
        public_addr: public.local_addr(),
        admin_addr: admin.local_addr(),
        storage,
        scheduler_report,
        jobs,
        stop,
        listeners: [public, admin],
        workers,
        upkeep,
        writer_stop,
        writer,
        responder,
        processor,
        fetcher,
        scheduler,
        jobs_thread,
    })
}

/// How long a stop waits for HTTP workers to answer the requests that had arrived.
const HTTP_GRACE: Duration = Duration::from_secs(8);

impl Running {
    /// Stops accepting, answers the requests that had arrived (for a bounded time), lets
    /// the writer commit and answer what it holds, lets the processor catch up for a
    /// bounded time, makes it durable, and joins every thread. A worker still busy after
    /// [`HTTP_GRACE`] (a client trickling its body) is left behind, unanswered.
    pub fn shutdown(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for l in &self.listeners {
            l.close();
        }
        let mut panicked = Vec::new();
        for t in self.upkeep {
            if t.join().is_err() {
                panicked.push("upkeep".to_string());
            }
        }
        let deadline = Instant::now() + HTTP_GRACE;
        for w in &self.workers {
            let (failed, busy) = w.join(deadline);
            panicked.extend(failed);
            for name in busy {
                log::warn!(
                    "{name}: still busy with a request after {HTTP_GRACE:?}; leaving it unanswered"
                );
            }
        }
        drop(self.writer_stop);
        if self.writer.join().is_err() {
            panicked.push("writer".into());
        }
        if self.responder.join().is_err() {
            panicked.push("responder".into());
        }
        if self.processor.join().is_err() {
            panicked.push("processor".into());
        }
        if self.fetcher.join().is_err() {
            panicked.push("fetcher".into());
        }
        if self.scheduler.join().is_err() {
            panicked.push("scheduler".into());
        }
        if self.jobs_thread.join().is_err() {
            panicked.push("jobs".into());
        }
        self.storage.sync().context("final sync")?;
        if panicked.is_empty() {
            Ok(())
        } else {
            Err(anyhow!("threads panicked: {}", panicked.join(", ")))
        }
    }
}
