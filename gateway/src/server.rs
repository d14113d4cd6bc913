//! `serve`: accepts TCP on the one port, runs the TLS handshake itself (so the verified
//! client certificate can be attached to each request), and hands the connection to hyper
//! with the axum router. On shutdown it stops accepting, ends long-polls, and drains the
//! requests in flight before the store is closed, so no acknowledged batch is lost.
//! At most `max_handshakes_in_flight` handshakes run at once (a reconnect storm waits its
//! turn within the handshake timeout); the ingest limit is in `api` (`IngestSlot`).
//!
//! Open files: `serve` raises its soft `RLIMIT_NOFILE` to the hard limit (one descriptor per
//! connection) and logs both. When it runs out of descriptors anyway, it does not spin on
//! `accept` failing with `EMFILE`: it keeps one descriptor in reserve, gives it up to
//! accept the waiting connection and close it at once (the client sees the connection
//! closed and retries with its backoff), takes the reserve back, and logs how many it
//! refused so, at most every few seconds.
//!
//! Background tasks: the command watcher (the queue and revocation marks, twice a second:
//! wakes the long-polls of appliances with queued commands, verifies the certificate cache)
//! and the `last_seen` flusher.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use crate::api::{self, AppState};
use crate::ca::Ca;
use crate::cert_cache::CertCache;
use crate::config::GatewayConfig;
use crate::error::ServeError;
use crate::last_seen::{LastSeen, LAST_SEEN_FLUSH};
use crate::store::Store;
use crate::tls::{self, PeerCert};
use crate::wakeups::Wakeups;

/// Time allowed for a TLS handshake before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed to drain in-flight requests on shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the command queue is checked for new commands (pool-wide, through the store).
pub const COMMAND_POLL: Duration = Duration::from_millis(500);

/// Options of `serve` beyond the config file.
#[derive(Debug, Default, Clone)]
pub struct ServeOptions {
    /// Overrides `listen` from the config.
    pub listen: Option<SocketAddr>,
    /// Where to write the bound address once listening.
    pub addr_file: Option<PathBuf>,
}

/// Runs the gateway until `shutdown` resolves.
///
/// # Errors
/// [`ServeError`] when binding, TLS set-up or the address file fails.
pub async fn serve(
    cfg: GatewayConfig,
    store: Store,
    ca: Ca,
    opts: ServeOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    let (before, now) = raise_open_file_limit();
    info!(
        soft_before = before,
        soft = now,
        "open-file limit {now} (a connection takes one): at most about that many appliances connected"
    );
    let tls_cfg = tls::server_config(&cfg)?;
    let acceptor = TlsAcceptor::from(tls_cfg);
    let addr = opts.listen.unwrap_or(cfg.listen);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    if let Some(path) = &opts.addr_file {
        crate::ca::write_file(path, bound.to_string().as_bytes(), false).map_err(|e| {
            ServeError::AddrFile {
                path: path.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
    }
    info!(addr = %bound, store = %cfg.store.redacted(), "listening on {bound}");

    // (ingest requests, TLS handshakes) handled at once.
    let cfg_limits = (
        usize::try_from(cfg.max_ingest_in_flight).unwrap_or(usize::MAX),
        usize::try_from(cfg.max_handshakes_in_flight).unwrap_or(usize::MAX),
    );
    let handshakes = Arc::new(Semaphore::new(cfg_limits.1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let wakeups = Arc::new(Wakeups::default());
    let cert_cache = Arc::new(CertCache::default());
    let last_seen = Arc::new(LastSeen::default());
    let watcher = tokio::spawn(watch_store(
        store.clone(),
        Arc::clone(&wakeups),
        Arc::clone(&cert_cache),
        stop_rx.clone(),
    ));
    let flusher = tokio::spawn(flush_last_seen(
        store.clone(),
        Arc::clone(&last_seen),
        stop_rx.clone(),
    ));
    let state = AppState {
        store: store.clone(),
        ca: Arc::new(ca),
        cfg: Arc::new(cfg),
        wakeups,
        last_seen: Arc::clone(&last_seen),
        cert_cache,
        shutdown: stop_rx,
        ingest_permits: Arc::new(Semaphore::new(cfg_limits.0)),
    };
    let app = api::router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shedding = FdShedding::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) if is_out_of_files(&e) => {
                    shedding.refuse_one(&listener).await;
                    continue;
                }
                Err(e) => {
                    // Anything else (a connection reset before accept): pause, do not spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let handshakes = Arc::clone(&handshakes);
        let conn_watcher = graceful.watcher();
        tokio::spawn(async move {
            // Waiting for a handshake slot counts against the handshake timeout: a client
            // that queued too long gives up and retries with its backoff.
            let handshake = async {
                let _slot = handshakes.acquire_owned().await;
                acceptor.accept(tcp).await
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.clone().into_owned()));
            let peer_cert = PeerCert(cert);
            let svc =
                tower::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer_cert.clone());
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(svc));
            if let Err(e) = conn_watcher.watch(conn).await {
                debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    info!("shutting down: no longer accepting; draining requests in flight");
    drop(listener);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        warn!("drain timed out after {DRAIN_TIMEOUT:?}; closing remaining connections");
    }
    watcher.abort();
    let _ = flusher.await;
    match last_seen.flush(&store).await {
        Ok(n) if n > 0 => debug!(appliances = n, "last_seen written on shutdown"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "could not write last_seen on shutdown"),
    }
    store.close().await;
    info!("stopped");
    Ok(())
}

/// Polls the store for newly queued commands and for revocations, twice a second.
/// Polling the store (not an in-process channel) is what makes commands queued and
/// appliances revoked by the CLI, or by another gateway of a pool, reach this gateway.
/// A changed queue wakes the long-polls of the appliances that have queued commands
/// (only theirs); the revocation mark verifies or empties the certificate cache.
async fn watch_store(
    store: Store,
    wakeups: Arc<Wakeups>,
    cert_cache: Arc<CertCache>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = (0, 0);
    loop {
        let started = std::time::Instant::now();
        match store.revocation_mark().await {
            Ok(mark) => cert_cache.observe(mark, started),
            Err(e) => warn!(error = %e, "revocation poll failed; certificate cache unverified"),
        }
        match store.command_queue_mark().await {
            Ok(mark) if mark != last => match store.appliances_with_queued_commands().await {
                Ok(ids) => {
                    last = mark;
                    let woken = wakeups.wake(ids.iter().map(String::as_str));
                    debug!(queued_for = ids.len(), woken, "command queue changed");
                }
                Err(e) => warn!(error = %e, "command queue poll failed"),
            },
            Ok(_) => {}
            Err(e) => warn!(error = %e, "command queue poll failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(COMMAND_POLL) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Writes the long-polls' `last_seen` every [`LAST_SEEN_FLUSH`] until shutdown.
async fn flush_last_seen(store: Store, last_seen: Arc<LastSeen>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(LAST_SEEN_FLUSH) => {}
            _ = stop.changed() => return,
        }
        if let Err(e) = last_seen.flush(&store).await {
            warn!(error = %e, "could not write last_seen; retrying at the next flush");
        }
    }
}

fn is_out_of_files(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::MFILE.raw_os_error()
            || code == rustix::io::Errno::NFILE.raw_os_error()
    )
}

/// How often "out of open files" is logged at most.
const SHED_LOG_EVERY: Duration = Duration::from_secs(5);

/// Refusing connections cleanly when out of file descriptors (see the module docs).
struct FdShedding {
    reserve: Option<std::fs::File>,
    refused: u64,
    logged_at: Option<tokio::time::Instant>,
}

impl FdShedding {
    fn new() -> Self {
        Self {
            reserve: std::fs::File::open("/dev/null").ok(),
            refused: 0,
            logged_at: None,
        }
    }

    /// `accept` failed with EMFILE/ENFILE: accept one waiting connection with the
    /// reserved descriptor and close it, or pause when there is no reserve.
    async fn refuse_one(&mut self, listener: &TcpListener) {
        let had_reserve = self.reserve.take().is_some();
        if had_reserve {
            // Bounded: the connection is waiting (that is why accept was woken).
            if let Ok(Ok((tcp, _))) =
                tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
            {
                drop(tcp);
                self.refused += 1;
            }
            self.reserve = std::fs::File::open("/dev/null").ok();
        }
        let now = tokio::time::Instant::now();
        if self
            .logged_at
            .is_none_or(|t| now.duration_since(t) >= SHED_LOG_EVERY)
        {
            warn!(
                refused = self.refused,
                "out of open files: refusing new connections (closed at once) until some end"
            );
            self.logged_at = Some(now);
        }
        if !had_reserve || self.reserve.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Raises the soft open-file limit to the hard one (a connection is a descriptor) and
/// returns `(soft before, soft now)`.
#[must_use]
pub fn raise_open_file_limit() -> (u64, u64) {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut l = getrlimit(Resource::Nofile);
    let before = l.current.unwrap_or(u64::MAX);
    if l.current != l.maximum {
        l.current = l.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, l) {
            warn!(error = %e, "could not raise the open-file limit");
        }
    }
    let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    (before, now)
}
