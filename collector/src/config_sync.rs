//! Config from the centre: `GET /v1/config` with `If-None-Match`, at start and every
//! minute. A `200` carries a [`CollectorConfigDoc`]; its `interval`, when set, replaces the
//! local one (and its absence restores the local one). A `304` changes nothing. Health packs
//! in the document are not used yet.

use std::time::{Duration, Instant};

use outpost_proto::{paths, CollectorConfigDoc, DurationError};
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::failover::{AfterFailure, GatewayRing};
use crate::http::{error_chain, url, ErrorReply};
use crate::shutdown::Shutdown;

/// How often the config is fetched.
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

/// The config task: fetches at start and every [`CONFIG_SYNC_PERIOD`], publishes interval
/// changes on `interval`. `local` is the interval from `collector.toml`.
pub async fn config_loop(
    client: reqwest::Client,
    mut ring: GatewayRing,
    local: Duration,
    interval: watch::Sender<Duration>,
    appliance_id: String,
    mut shutdown: Shutdown,
) {
    let mut etag: Option<String> = None;
    loop {
        ring.maybe_fail_back(Instant::now());
        let gateway = ring.current().to_string();
        let fetched = tokio::select! {
            f = fetch(&client, &gateway, etag.as_deref()) => f,
            () = shutdown.wait() => return,
        };
        let pause = match fetched {
            Fetch::Changed { doc, etag: tag } => {
                ring.on_success(Instant::now());
                debug!(gateway = %gateway, packs = doc.packs.len(), "config document received");
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
                        etag = tag;
                    }
                    Err(e) => {
                        warn!(gateway = %gateway, "ignoring the gateway's interval: {e}");
                        // Keep the old ETag so a corrected document is fetched in full.
                    }
                }
                CONFIG_SYNC_PERIOD
            }
            Fetch::NotModified => {
                ring.on_success(Instant::now());
                CONFIG_SYNC_PERIOD
            }
            Fetch::Forbidden(reply) => {
                ring.on_success(Instant::now());
                error!(appliance = %appliance_id, gateway = %gateway, "config fetch refused: {}", reply.message);
                CONFIG_SYNC_PERIOD
            }
            Fetch::Failed(why) => {
                debug!(gateway = %gateway, "config fetch failed: {why}");
                match ring.on_failure() {
                    AfterFailure::TryNext => Duration::ZERO,
                    AfterFailure::BackOff => CONFIG_SYNC_PERIOD,
                }
            }
        };
        if shutdown.sleep(pause).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
