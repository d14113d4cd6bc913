//! `run`: the long-running collector, wiring enrolment, collection, the uplink, the
//! command channel and config sync together.
//!
//! ```text
//! key.pem ─► enroll (bootstrap token, no client cert) ─► cert.pem
//!                                                          │ mTLS client
//!   collect_loop ─► spool/ ──► Sender ─► POST /v1/ingest ◄─┤
//!        ▲                                                 ├─ command_loop  (GET /v1/commands)
//!        └──── interval ◄──────────── config_loop ◄────────┘  (GET /v1/config)
//! ```
//!
//! Every task watches the same [`Shutdown`]; `run` returns once all of them have stopped.
//! A task that fails stops the others and its error is returned.

use std::sync::{Arc, Mutex};

use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::enroll::{self, EnrollError, EnrollOutcome};
use crate::failover::GatewayRing;
use crate::files::{self, FileError};
use crate::health::{self, HealthEngine};
use crate::identity::{self, IdentityError};
use crate::shutdown::{self, Shutdown};
use crate::spool::{BatchLimits, Spool, SpoolError};
use crate::state::{Delivered, LEGACY_OUTBOX_DIR};
use crate::status::{self, StatusError};
use crate::tls::{self, ClientAuth, TlsError};
use crate::uplink::{HttpsIngest, Sender, UplinkError, UplinkStats};
use crate::{collect, commands, config_sync};

/// Why `run` stopped with an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The state directory could not be created.
    #[error(transparent)]
    CreateStateDir(FileError),
    /// Key or certificate trouble.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Enrolment failed for good.
    #[error(transparent)]
    Enroll(#[from] EnrollError),
    /// The TLS client could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The uplink failed.
    #[error(transparent)]
    Uplink(#[from] UplinkError),
    /// A state file is unreadable.
    #[error(transparent)]
    State(#[from] StatusError),
    /// A task panicked.
    #[error("internal task failed: {0}")]
    Task(String),
}

impl RunError {
    /// Whether the failure is a configuration problem (exit code 3).
    #[must_use]
    pub fn is_config_error(&self) -> bool {
        matches!(self, Self::Enroll(EnrollError::Config(_)))
    }
}

/// Runs the collector until `shutdown` fires or a task fails.
///
/// # Errors
/// [`RunError`] for failures that retrying cannot fix (bad key, refused enrolment, broken
/// state directory).
pub async fn run(config: Config, shutdown: Shutdown) -> Result<(), RunError> {
    files::ensure_dir(&config.state_dir).map_err(RunError::CreateStateDir)?;
    let key = identity::load_or_create_key(&config.state_dir)?;
    let mut enrol_stop = shutdown.clone();
    if enroll::ensure_enrolled(&config, &key, &mut enrol_stop).await? == EnrollOutcome::Stopped {
        info!("stopped before enrolment finished");
        return Ok(());
    }
    drop(key);

    let appliance_id = status::appliance_id(&config.state_dir)?.unwrap_or_else(|| "unknown".into());
    let (certs, key_der) = identity::load_client_auth(&config.state_dir)?;
    let client = tls::http_client(tls::client_config(
        &config.ca_certs,
        Some(ClientAuth {
            certs,
            key: key_der,
        }),
    )?)?;
    let state_dir = config.state_dir.clone();
    let spool_config = config.spool;
    let spool = tokio::task::spawn_blocking(move || Spool::open(&state_dir, spool_config))
        .await
        .map_err(|e| RunError::Task(e.to_string()))??;
    warn_about_legacy_outbox(&config.state_dir);
    let st = spool.stats();
    info!(
        appliance = %appliance_id,
        gateways = %config.gateways.join(","),
        interval = %outpost_proto::format_duration(config.interval),
        spool_records = st.records,
        spool_bytes = st.bytes,
        next_rid = st.next_rid,
        last_acked_seq = st.last_acked_seq,
        "collector running"
    );
    let spool = Arc::new(Mutex::new(spool));
    let uplink_stats = Arc::new(UplinkStats::default());
    let ring = || GatewayRing::new(config.gateways.clone(), config.failback_probe);

    // Tasks stop on the operator's signal or when one of them fails.
    let (stop_tx, stop) = shutdown::channel();
    let stop_tx = Arc::new(stop_tx);
    let forward = {
        let stop_tx = Arc::clone(&stop_tx);
        let mut outer = shutdown.clone();
        tokio::spawn(async move {
            outer.wait().await;
            stop_tx.trigger();
        })
    };

    // Health is judged from the first collection on: with the packs and judgement the
    // previous run kept in the state directory, else the built-in default pack until the
    // gateway delivers others.
    let health = Arc::new(Mutex::new(HealthEngine::new(health::default_pack_set())));
    let saved = Delivered::load(&config.state_dir).unwrap_or_else(|e| {
        warn!("ignoring the delivered config kept by the previous run: {e}");
        None
    });
    let (sync_state, start_interval) =
        config_sync::restore_delivered(saved.unwrap_or_default(), &health, config.interval);
    restore_health(&config.state_dir, &health);
    let (interval_tx, interval_rx) = watch::channel(start_interval);
    let wake = Arc::new(Notify::new());
    let mut tasks: JoinSet<Result<(), RunError>> = JoinSet::new();
    tasks.spawn({
        let fut = collect::collect_loop(
            Some(config.state_dir.join(crate::state::CERT_FILE)),
            Some(config.state_dir.clone()),
            Arc::clone(&spool),
            Arc::clone(&health),
            Arc::clone(&uplink_stats),
            Arc::clone(&wake),
            interval_rx.clone(),
            stop.clone(),
        );
        async move { fut.await.map_err(RunError::from) }
    });
    tasks.spawn({
        let sender = Sender {
            spool: Arc::clone(&spool),
            wake: Arc::clone(&wake),
            transport: HttpsIngest::new(client.clone()),
            ring: ring(),
            interval: interval_rx,
            appliance_id: appliance_id.clone(),
            limits: BatchLimits::default(),
            stats: Arc::clone(&uplink_stats),
        };
        let stop = stop.clone();
        let backoff = Backoff::new(config.backoff_max);
        async move {
            sender.run(backoff, stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        let fut = commands::command_loop(
            client.clone(),
            ring(),
            Backoff::new(config.backoff_max),
            config.long_poll,
            appliance_id.clone(),
            stop.clone(),
        );
        async move {
            fut.await;
            Ok(())
        }
    });
    tasks.spawn({
        let fut = config_sync::config_loop(
            client,
            ring(),
            config.interval,
            config.config_poll,
            interval_tx,
            Arc::clone(&health),
            appliance_id,
            config.state_dir.clone(),
            sync_state,
            stop.clone(),
        );
        async move {
            fut.await;
            Ok(())
        }
    });

    let mut first_error: Option<RunError> = None;
    while let Some(joined) = tasks.join_next().await {
        let failure = match joined {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(RunError::Task(e.to_string())),
        };
        if let Some(e) = failure {
            error!("stopping: {e}");
            stop_tx.trigger();
            first_error.get_or_insert(e);
        }
    }
    forward.abort();
    match first_error {
        Some(e) => Err(e),
        None => {
            info!("stopped");
            Ok(())
        }
    }
}

/// Takes back the judgement the previous run kept (`health.json`); an unreadable one is
/// logged and ignored (health is judged afresh).
fn restore_health(state_dir: &std::path::Path, health: &Mutex<HealthEngine>) {
    match crate::state::load_health(state_dir) {
        Ok(Some(snapshot)) => {
            let alerts = snapshot.alerts.len();
            let mut engine = health
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if engine.restore(snapshot) {
                info!(
                    open_alerts = alerts,
                    "health judgement of the previous run restored"
                );
            } else {
                warn!("health judgement of the previous run has another format; judging afresh");
            }
        }
        Ok(None) => {}
        Err(e) => warn!("ignoring the health judgement kept by the previous run: {e}"),
    }
}

/// The foundation's collector kept batches in `outbox/`; they are not imported.
fn warn_about_legacy_outbox(state_dir: &std::path::Path) {
    let dir = state_dir.join(LEGACY_OUTBOX_DIR);
    let waiting = std::fs::read_dir(&dir).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    });
    if waiting > 0 {
        tracing::warn!(
            dir = %dir.display(),
            "{waiting} batch file(s) of an older collector are left in {}; they are not sent \
             (the spool replaced the outbox)",
            dir.display()
        );
    }
}
