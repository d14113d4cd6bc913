//! Config from the centre: `GET /v1/config` with `If-None-Match`, at start and every
//! `config_poll` (default a minute). A `200` carries a [`CollectorConfigDoc`]; its
//! `interval`, when set, replaces the local one (and its absence restores the local one).
//! A `304` changes nothing.
//!
//! Its health packs, together with the built-in one, replace the health engine's packs
//! without a restart ([`plan_packs`]) — only when they differ from the ones applied last,
//! and only when all of them are valid: an invalid set is logged with every problem's
//! file (`gateway:PACK`), line and reason, and the last good set stays in force. The
//! engine keeps its history (states, windows, open alerts) across the switch.
//!
//! Either way the outcome is noted in the engine ([`HealthEngine::note_delivery`]: the
//! document's ETag, the pack names, applied or refused with every problem), and the
//! collecting task reports it to the gateway as a `pack_status` record.
//!
//! What is in force — the delivered packs of the last good set, the interval, and the ETag
//! while nothing was refused — is kept in `delivered.json` in the state directory
//! ([`Delivered`], written atomically whenever it changes) and taken back at start
//! ([`restore_delivered`]), so a collector restarted while no gateway answers judges with
//! the same packs at the same interval, and its first fetch costs a `304`.
//!
//! [`HealthEngine::note_delivery`]: outpost_health::HealthEngine::note_delivery

use std::path::PathBuf;
use std::time::{Duration, Instant};

use outpost_health::{pack_set_with_default, parse_pack, PackErrors, PackSet};
use outpost_proto::health::PackStatus;
use outpost_proto::{paths, CollectorConfigDoc, DurationError, PackDoc};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::collect::SharedHealth;
use crate::failover::{AfterFailure, GatewayRing};
use crate::http::{error_chain, url, ErrorReply};
use crate::shutdown::Shutdown;
use crate::state::Delivered;

/// What to do with the packs of a document.
#[derive(Debug)]
pub enum PackUpdate {
    /// The same packs as applied last: nothing to do.
    Unchanged,
    /// A valid new set (the delivered packs plus the built-in one).
    Apply(PackSet),
    /// Invalid: every problem, with file (`gateway:PACK`), line and reason. Keep the
    /// packs in force.
    Invalid(PackErrors),
}

/// Checks the delivered packs against the ones applied last (`applied`; empty: the
/// built-in pack alone) and, when they differ, parses and validates them together with the
/// built-in pack, exactly as `outpost-gateway packs import` does.
#[must_use]
pub fn plan_packs(delivered: &[PackDoc], applied: &[PackDoc]) -> PackUpdate {
    if delivered == applied {
        return PackUpdate::Unchanged;
    }
    let mut packs = Vec::with_capacity(delivered.len());
    let mut errors = Vec::new();
    for doc in delivered {
        match parse_pack(&format!("gateway:{}", doc.name), &doc.toml) {
            Ok(p) => packs.push(p),
            Err(PackErrors(mut e)) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return PackUpdate::Invalid(PackErrors(errors));
    }
    match pack_set_with_default(packs) {
        Ok(set) => PackUpdate::Apply(set),
        Err(e) => PackUpdate::Invalid(e),
    }
}

/// How often the config is fetched by default.
pub const CONFIG_SYNC_PERIOD: Duration = Duration::from_secs(60);

/// The collection interval a document asks for, or `local` when it does not say.
///
/// # Errors
/// [`DurationError`] when the document's interval does not parse.
pub fn effective_interval(
    doc: &CollectorConfigDoc,
    local: Duration,
) -> Result<Duration, DurationError> {
    match doc.interval.as_deref() {
        Some(text) => outpost_proto::parse_duration(text),
        None => Ok(local),
    }
}

/// What config sync knows between fetches.
#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// The ETag to send (`If-None-Match`).
    etag: Option<String>,
    /// The packs delivered last, applied or refused (not re-checked while unchanged).
    seen: Vec<PackDoc>,
    /// Whether `seen` was refused.
    refused: bool,
    /// The delivered packs in force (the last good set).
    in_force: Vec<PackDoc>,
    /// What `delivered.json` holds.
    saved: Delivered,
}

/// Puts back what a previous run had in force (`delivered.json`): its packs go to the
/// engine (noted as delivered with their ETag), and the interval it asked for is returned
/// (`local` when it did not ask). A saved set that no longer validates (the built-in pack
/// changed under it) is logged and dropped: the built-in pack alone until the gateway
/// answers.
#[must_use]
pub fn restore_delivered(
    saved: Delivered,
    health: &SharedHealth,
    local: Duration,
) -> (SyncState, Duration) {
    let doc = CollectorConfigDoc {
        interval: saved.interval.clone(),
        packs: saved.packs.clone(),
    };
    let interval = effective_interval(&doc, local).unwrap_or(local);
    let mut engine = health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match plan_packs(&saved.packs, &[]) {
        PackUpdate::Unchanged => {
            // A document without packs: the built-in pack alone, as delivered.
            if saved.etag.is_some() {
                engine.note_delivery(PackStatus {
                    etag: saved.etag.clone(),
                    applied: true,
                    ..PackStatus::default()
                });
            }
        }
        PackUpdate::Apply(set) => {
            engine.set_packs(set);
            engine.note_delivery(PackStatus {
                etag: saved.etag.clone(),
                packs: saved.packs.iter().map(|p| p.name.clone()).collect(),
                applied: true,
                error: None,
                conflicts: Vec::new(),
            });
            info!(
                packs = %saved.packs.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(","),
                "health packs the gateway delivered before the restart applied"
            );
        }
        PackUpdate::Invalid(errors) => {
            warn!("the saved health packs are no longer valid; the built-in pack alone until the gateway answers:\n{errors}");
            return (SyncState::default(), local);
        }
    }
    let state = SyncState {
        etag: saved.etag.clone(),
        seen: saved.packs.clone(),
        refused: false,
        in_force: saved.packs.clone(),
        saved,
    };
    (state, interval)
}

/// Writes `delivered.json` when what is in force changed; a failure is logged (the next
/// change tries again).
async fn save_delivered(state_dir: &std::path::Path, state: &mut SyncState, now: Delivered) {
    if now == state.saved {
        return;
    }
    let dir = state_dir.to_path_buf();
    let doc = now.clone();
    match tokio::task::spawn_blocking(move || doc.write(&dir)).await {
        Ok(Ok(())) => state.saved = now,
        Ok(Err(e)) => warn!("could not keep the delivered config for the next start: {e}"),
        Err(e) => warn!("could not keep the delivered config for the next start: {e}"),
    }
}

enum Fetch {
    Changed {
        doc: CollectorConfigDoc,
        etag: Option<String>,
    },
    NotModified,
    Forbidden(ErrorReply),
    Failed(String),
}

async fn fetch(client: &reqwest::Client, gateway: &str, etag: Option<&str>) -> Fetch {
    let mut req = client.get(url(gateway, paths::CONFIG));
    if let Some(tag) = etag {
        req = req.header(reqwest::header::IF_NONE_MATCH, tag);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return Fetch::Failed(error_chain(&e)),
    };
    let status = resp.status();
    if status == reqwest::StatusCode::NOT_MODIFIED {
        return Fetch::NotModified;
    }
    let etag = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Fetch::Failed(error_chain(&e)),
    };
    if status.is_success() {
        return match serde_json::from_slice::<CollectorConfigDoc>(&body) {
            Ok(doc) => Fetch::Changed { doc, etag },
            Err(e) => Fetch::Failed(format!("unreadable config document: {e}")),
        };
    }
    let reply = ErrorReply::parse(status.as_u16(), &body);
    if status.as_u16() == 403 {
        Fetch::Forbidden(reply)
    } else {
        Fetch::Failed(reply.to_string())
    }
}

/// The config task: fetches at start and every `poll`, publishes interval changes on
/// `interval`, gives new valid packs to `health`, keeps what is in force in `state_dir`.
/// `local` is the interval from `collector.toml`; `state` what [`restore_delivered`]
/// put back.
#[allow(clippy::too_many_arguments)] // one task, wired once in agent.rs
pub async fn config_loop(
    client: reqwest::Client,
    mut ring: GatewayRing,
    local: Duration,
    poll: Duration,
    interval: watch::Sender<Duration>,
    health: SharedHealth,
    appliance_id: String,
    state_dir: PathBuf,
    mut state: SyncState,
    mut shutdown: Shutdown,
) {
    loop {
        ring.maybe_fail_back(Instant::now());
        let gateway = ring.current().to_string();
        let fetched = tokio::select! {
            f = fetch(&client, &gateway, state.etag.as_deref()) => f,
            () = shutdown.wait() => return,
        };
        let pause = match fetched {
            Fetch::Changed { doc, etag: tag } => {
                ring.on_success(Instant::now());
                debug!(gateway = %gateway, packs = doc.packs.len(), "config document received");
                let outcome = apply_packs(&doc.packs, &mut state.seen, &health, tag.as_deref());
                match outcome {
                    PackOutcome::Applied => {
                        state.refused = false;
                        state.in_force.clone_from(&doc.packs);
                    }
                    PackOutcome::Refused => state.refused = true,
                    PackOutcome::Unchanged => {}
                }
                let mut in_force = Delivered {
                    etag: None,
                    interval: doc.interval.clone(),
                    packs: state.in_force.clone(),
                };
                match effective_interval(&doc, local) {
                    Ok(next) => {
                        let current = *interval.borrow();
                        if next != current {
                            info!(
                                "collection interval changed from {} to {} by the gateway",
                                outpost_proto::format_duration(current),
                                outpost_proto::format_duration(next)
                            );
                            interval.send_replace(next);
                        }
                        state.etag = tag;
                        if !state.refused {
                            in_force.etag.clone_from(&state.etag);
                        }
                    }
                    Err(e) => {
                        warn!(gateway = %gateway, "ignoring the gateway's interval: {e}");
                        // Keep the old ETag so a corrected document is fetched in full.
                        in_force.interval.clone_from(&state.saved.interval);
                    }
                }
                save_delivered(&state_dir, &mut state, in_force).await;
                poll
            }
            Fetch::NotModified => {
                ring.on_success(Instant::now());
                poll
            }
            Fetch::Forbidden(reply) => {
                ring.on_success(Instant::now());
                error!(appliance = %appliance_id, gateway = %gateway, "config fetch refused: {}", reply.message);
                poll
            }
            Fetch::Failed(why) => {
                debug!(gateway = %gateway, "config fetch failed: {why}");
                match ring.on_failure() {
                    AfterFailure::TryNext => Duration::ZERO,
                    AfterFailure::BackOff => poll,
                }
            }
        };
        if shutdown.sleep(pause).await {
            return;
        }
    }
}

/// The most bytes of refusal reasons reported to the gateway.
pub const MAX_REFUSAL_REPORT: usize = 16 * 1024;

/// Cuts `text` to at most `max` bytes on a character boundary, saying so.
fn truncate_report(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("\n… (cut)");
    }
    text
}

/// What [`apply_packs`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PackOutcome {
    /// The same packs as delivered last.
    Unchanged,
    /// A new valid set is in force.
    Applied,
    /// A new set was refused; the last good one stays.
    Refused,
}

/// Applies delivered packs when they changed and are valid; logs why otherwise. The
/// outcome (and `etag`) is noted in the engine for the `pack_status` record.
fn apply_packs(
    delivered: &[PackDoc],
    applied: &mut Vec<PackDoc>,
    health: &SharedHealth,
    etag: Option<&str>,
) -> PackOutcome {
    let names: Vec<String> = delivered.iter().map(|p| p.name.clone()).collect();
    let mut engine = health
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match plan_packs(delivered, applied) {
        PackUpdate::Unchanged => {
            // Same packs (another part of the document changed): same outcome, new ETag.
            let status = engine.pack_status();
            engine.note_delivery(PackStatus {
                etag: etag.map(str::to_string),
                ..status
            });
            PackOutcome::Unchanged
        }
        PackUpdate::Apply(set) => {
            engine.set_packs(set);
            engine.note_delivery(PackStatus {
                etag: etag.map(str::to_string),
                packs: names.clone(),
                applied: true,
                error: None,
                conflicts: Vec::new(),
            });
            info!(packs = %names.join(","), "health packs from the gateway applied");
            *applied = delivered.to_vec();
            PackOutcome::Applied
        }
        PackUpdate::Invalid(errors) => {
            // Remember them as seen, so the same bad set is not re-checked (and re-logged)
            // every poll; the packs in force stay.
            error!("health packs from the gateway refused, keeping the last good ones:\n{errors}");
            engine.note_delivery(PackStatus {
                etag: etag.map(str::to_string),
                packs: names,
                applied: false,
                error: Some(truncate_report(errors.to_string(), MAX_REFUSAL_REPORT)),
                conflicts: Vec::new(),
            });
            *applied = delivered.to_vec();
            PackOutcome::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[pack]
name = "t.good"
version = "1"
"#;

    fn doc(name: &str, toml: &str) -> PackDoc {
        PackDoc {
            name: name.into(),
            toml: toml.into(),
        }
    }

    #[test]
    fn packs_apply_only_when_changed_and_valid() {
        assert!(matches!(plan_packs(&[], &[]), PackUpdate::Unchanged));
        let good = [doc("t.good", GOOD)];
        assert!(matches!(plan_packs(&good, &[]), PackUpdate::Apply(_)));
        assert!(matches!(plan_packs(&good, &good), PackUpdate::Unchanged));
        // Unassigned again: back to the built-in pack alone.
        assert!(matches!(plan_packs(&[], &good), PackUpdate::Apply(_)));
        let bad = [doc("t.bad", "[pack]\nname = \"t.bad\"\nversion = \"1\"\n\n[[monitor]]\nid = \"m\"\nclass = \"host\"\ntype = \"bogus\"\n")];
        match plan_packs(&bad, &good) {
            PackUpdate::Invalid(e) => {
                let text = e.to_string();
                assert!(text.starts_with("gateway:t.bad:"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refusal_is_noted_for_the_gateway_and_the_last_good_set_kept() {
        let health: SharedHealth = std::sync::Arc::new(std::sync::Mutex::new(
            outpost_health::HealthEngine::new(outpost_health::default_pack_set()),
        ));
        let mut applied = Vec::new();
        let good = [doc("t.good", GOOD)];
        assert_eq!(
            apply_packs(&good, &mut applied, &health, Some("\"v1\"")),
            PackOutcome::Applied
        );
        let st = health.lock().unwrap().pack_status();
        assert!(st.applied, "{st:?}");
        assert_eq!(st.etag.as_deref(), Some("\"v1\""));
        assert_eq!(st.packs, ["t.good"]);
        let bad = [doc("t.bad", "[pack]\nname = \"t.bad\"\nversion = \"1\"\n\n[[monitor]]\nid = \"m\"\nclass = \"host\"\ntype = \"bogus\"\n")];
        assert_eq!(
            apply_packs(&bad, &mut applied, &health, Some("\"v2\"")),
            PackOutcome::Refused
        );
        let engine = health.lock().unwrap();
        let st = engine.pack_status();
        assert!(!st.applied);
        assert_eq!(st.etag.as_deref(), Some("\"v2\""));
        let why = st.error.unwrap();
        assert!(why.starts_with("gateway:t.bad:8:"), "{why}");
        assert!(why.contains("bogus"), "{why}");
        // The last good set is still in force.
        assert!(engine.packs().nodes().iter().all(|n| n.id != "m"));
        assert_eq!(truncate_report("ééé".into(), 3), "é\n… (cut)");
    }

    #[test]
    fn saved_packs_and_interval_are_put_back_at_start() {
        let health: SharedHealth = std::sync::Arc::new(std::sync::Mutex::new(
            outpost_health::HealthEngine::new(outpost_health::default_pack_set()),
        ));
        let monitor = "[pack]\nname = \"t.saved\"\nversion = \"1\"\n\n[[monitor]]\nid = \"t.load\"\nclass = \"host\"\ntype = \"threshold\"\nmetric = \"load1\"\nwarning = 1\n";
        let saved = Delivered {
            etag: Some("\"e7\"".into()),
            interval: Some("20s".into()),
            packs: vec![doc("t.saved", monitor)],
        };
        let (state, interval) = restore_delivered(saved.clone(), &health, Duration::from_secs(10));
        assert_eq!(interval, Duration::from_secs(20));
        assert_eq!(state.etag.as_deref(), Some("\"e7\""));
        assert_eq!(state.saved, saved);
        let engine = health.lock().unwrap();
        assert!(engine.packs().nodes().iter().any(|n| n.id == "t.load"));
        let st = engine.pack_status();
        assert!(st.applied);
        assert_eq!(st.etag.as_deref(), Some("\"e7\""));
        assert_eq!(st.packs, ["t.saved"]);
        drop(engine);
        // Nothing saved: the built-in pack and the local interval.
        let fresh: SharedHealth = std::sync::Arc::new(std::sync::Mutex::new(
            outpost_health::HealthEngine::new(outpost_health::default_pack_set()),
        ));
        let (state, interval) =
            restore_delivered(Delivered::default(), &fresh, Duration::from_secs(10));
        assert_eq!(interval, Duration::from_secs(10));
        assert!(state.etag.is_none());
    }

    #[test]
    fn interval_from_document_or_local() {
        let local = Duration::from_secs(10);
        let doc = CollectorConfigDoc::default();
        assert_eq!(effective_interval(&doc, local).unwrap(), local);
        let doc = CollectorConfigDoc {
            interval: Some("30s".into()),
            packs: Vec::new(),
        };
        assert_eq!(
            effective_interval(&doc, local).unwrap(),
            Duration::from_secs(30)
        );
        let doc = CollectorConfigDoc {
            interval: Some("soon".into()),
            packs: Vec::new(),
        };
        assert!(effective_interval(&doc, local).is_err());
    }
}
