//! Steps shared by many tests: an approved appliance client, and waiting on
//! `appliances show` until a condition holds.

use std::time::Duration;

use serde_json::Value;

use crate::client::ApplianceClient;
use crate::gateway::Gateway;
use crate::wait::wait_for;

/// Bound on waits that depend on a collector doing a few rounds.
pub const COLLECTOR_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on waits for an enrolment to be answered.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between polls of the gateway CLI.
pub const POLL: Duration = Duration::from_millis(300);

/// A new appliance client, enrolled through an auto-approve token for `customer`, holding
/// its certificate.
///
/// # Errors
/// When any step fails.
pub async fn approved_appliance(gw: &Gateway, customer: &str) -> anyhow::Result<ApplianceClient> {
    let token = gw.token_create(customer, true, None, None)?;
    let mut c = ApplianceClient::new(gw.addr(), &gw.ca_pem()?)?;
    c.enroll_and_fetch(&token, ENROLL_TIMEOUT).await?;
    Ok(c)
}

/// Polls `appliances show ID --json` until `pred` holds; returns that answer.
///
/// # Errors
/// On timeout, naming `what` and carrying the last answer seen.
pub fn wait_show(
    gw: &Gateway,
    id: &str,
    what: &str,
    timeout: Duration,
    mut pred: impl FnMut(&Value) -> bool,
) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    let r = wait_for(what, timeout, POLL, || {
        let v = gw.show_json(id)?;
        let ok = pred(&v);
        last = v.clone();
        Ok(ok.then_some(v))
    });
    r.map_err(|e| {
        e.context(format!(
            "last `appliances show {id} --json`: {}",
            serde_json::to_string(&last).unwrap_or_default()
        ))
    })
}
