//! `serve`: accepts TCP on the one port, runs the TLS handshake itself (so the verified
//! client certificate can be attached to each request), and hands the connection to hyper
//! with the axum router. On shutdown it stops accepting, ends long-polls, and drains the
//! requests in flight before the store is closed, so no acknowledged batch is lost.
//! At most `max_handshakes_in_flight` handshakes run at once (a reconnect storm waits its
//! turn within the handshake timeout); the ingest limit is in `api` (`IngestSlot`).

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
use crate::config::GatewayConfig;
use crate::error::ServeError;
use crate::store::Store;
use crate::tls::{self, PeerCert};

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
    let (cmd_tx, cmd_rx) = watch::channel(0u64);
    let watcher = tokio::spawn(watch_commands(store.clone(), cmd_tx, stop_rx.clone()));
    let state = AppState {
        store: store.clone(),
        ca: Arc::new(ca),
        cfg: Arc::new(cfg),
        commands_changed: cmd_rx,
        shutdown: stop_rx,
        ingest_permits: Arc::new(Semaphore::new(cfg_limits.0)),
    };
    let app = api::router(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: pause instead of spinning.
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
    store.close().await;
    info!("stopped");
    Ok(())
}

/// Polls the store for newly queued commands and wakes long-polls when there are some.
/// Polling the store (not an in-process channel) is what makes commands queued by the CLI,
/// or by another gateway of a pool, reach the appliance wherever it is connected.
async fn watch_commands(store: Store, tx: watch::Sender<u64>, mut stop: watch::Receiver<bool>) {
    let mut last = (0, 0);
    loop {
        match store.command_queue_mark().await {
            Ok(mark) if mark != last => {
                last = mark;
                tx.send_modify(|n| *n += 1);
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "command queue poll failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(COMMAND_POLL) => {}
            _ = stop.changed() => return,
        }
    }
}
