//! Commands from the centre, over the appliance's own connection.
//!
//! `GET /v1/commands?wait=…` is a long-poll: the gateway answers as soon as a command is
//! queued, or with an empty list when the wait runs out. Each command is parsed into a
//! [`CommandAction`] and executed separately; the outcome goes to
//! `POST /v1/commands/{id}/result`. A result that cannot be delivered is not retried here:
//! the gateway hands an unanswered command out again later.

use std::time::{Duration, Instant};

use outpost_proto::{paths, Command, CommandList, CommandResult};
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::failover::{AfterFailure, GatewayRing};
use crate::http::{error_chain, url, ErrorReply};
use crate::shutdown::Shutdown;
use crate::tls::LONG_POLL_GRACE;

/// A long-poll that comes back empty faster than this is followed by a short pause, so a
/// gateway that does not hold the request cannot make the loop spin.
const MIN_POLL_SPACING: Duration = Duration::from_secs(1);

/// What a command asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandAction {
    /// `ping`: answer `pong`.
    Ping,
    /// A kind this collector does not know.
    Unknown(String),
}

/// Parses a command into an action; never fails.
#[must_use]
pub fn parse_command(cmd: &Command) -> CommandAction {
    match cmd.kind.as_str() {
        "ping" => CommandAction::Ping,
        other => CommandAction::Unknown(other.to_string()),
    }
}

/// Executes an action.
#[must_use]
pub fn execute(action: &CommandAction) -> CommandResult {
    match action {
        CommandAction::Ping => CommandResult {
            ok: true,
            output: "pong".into(),
        },
        CommandAction::Unknown(kind) => CommandResult {
            ok: false,
            output: format!("unknown command kind: {kind}"),
        },
    }
}

/// The `wait` query value for a long-poll of `d` (milliseconds, never zero).
#[must_use]
pub fn wait_param(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

enum Poll {
    Commands(Vec<Command>),
    Forbidden(ErrorReply),
    Failed(String),
}

async fn poll_commands(client: &reqwest::Client, gateway: &str, wait: Duration) -> Poll {
    let target = format!(
        "{}?wait={}",
        url(gateway, paths::COMMANDS),
        wait_param(wait)
    );
    let resp = match client
        .get(target)
        .timeout(wait + LONG_POLL_GRACE)
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => return Poll::Failed(error_chain(&e)),
    };
    let status = resp.status();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Poll::Failed(error_chain(&e)),
    };
    if status.is_success() {
        return match serde_json::from_slice::<CommandList>(&body) {
            Ok(list) => Poll::Commands(list.commands),
            Err(e) => Poll::Failed(format!("unreadable command list: {e}")),
        };
    }
    let reply = ErrorReply::parse(status.as_u16(), &body);
    if status.as_u16() == 403 {
        Poll::Forbidden(reply)
    } else {
        Poll::Failed(reply.to_string())
    }
}

async fn post_result(
    client: &reqwest::Client,
    gateway: &str,
    id: &str,
    result: &CommandResult,
) -> Result<(), String> {
    let resp = client
        .post(url(gateway, &paths::command_result(id)))
        .json(result)
        .send()
        .await
        .map_err(|e| error_chain(&e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.bytes().await.unwrap_or_default();
    Err(ErrorReply::parse(status.as_u16(), &body).to_string())
}

/// The command task: long-polls, executes, reports; backs off with jitter on errors and
/// fails over along the gateway list. Stops at once on shutdown.
pub async fn command_loop(
    client: reqwest::Client,
    mut ring: GatewayRing,
    mut backoff: Backoff,
    wait: Duration,
    appliance_id: String,
    mut shutdown: Shutdown,
) {
    loop {
        ring.maybe_fail_back(Instant::now());
        let gateway = ring.current().to_string();
        let started = Instant::now();
        let polled = tokio::select! {
            p = poll_commands(&client, &gateway, wait) => p,
            () = shutdown.wait() => return,
        };
        let pause = match polled {
            Poll::Commands(commands) => {
                ring.on_success(Instant::now());
                backoff.reset();
                let empty = commands.is_empty();
                for cmd in commands {
                    let action = parse_command(&cmd);
                    let result = execute(&action);
                    info!(command = %cmd.id, kind = %cmd.kind, ok = result.ok, "command executed");
                    let posted = tokio::select! {
                        r = post_result(&client, &gateway, &cmd.id, &result) => r,
                        () = shutdown.wait() => return,
                    };
                    if let Err(e) = posted {
                        warn!(command = %cmd.id, gateway = %gateway, "could not report the result: {e}; the gateway will hand the command out again");
                    }
                }
                if empty && started.elapsed() < MIN_POLL_SPACING {
                    MIN_POLL_SPACING
                } else {
                    Duration::ZERO
                }
            }
            Poll::Forbidden(reply) => {
                ring.on_success(Instant::now());
                error!(appliance = %appliance_id, gateway = %gateway, "command poll refused: {}", reply.message);
                backoff.next_random_delay()
            }
            Poll::Failed(why) => {
                debug!(gateway = %gateway, "command poll failed: {why}");
                match ring.on_failure() {
                    AfterFailure::TryNext => Duration::ZERO,
                    AfterFailure::BackOff => {
                        warn!(gateway = %gateway, "command poll failed on every gateway: {why}");
                        backoff.next_random_delay()
                    }
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

    fn cmd(kind: &str) -> Command {
        Command {
            id: "c-1".into(),
            kind: kind.into(),
            args: serde_json::Value::Null,
            created_at_ms: 0,
        }
    }

    #[test]
    fn ping_answers_pong() {
        let r = execute(&parse_command(&cmd("ping")));
        assert!(r.ok);
        assert_eq!(r.output, "pong");
    }

    #[test]
    fn unknown_kind_is_refused_by_name() {
        let r = execute(&parse_command(&cmd("reboot-now")));
        assert!(!r.ok);
        assert_eq!(r.output, "unknown command kind: reboot-now");
    }

    #[test]
    fn wait_param_is_never_zero() {
        assert_eq!(wait_param(Duration::from_secs(30)), "30000ms");
        assert_eq!(wait_param(Duration::ZERO), "1ms");
        assert!(outpost_proto::parse_duration(&wait_param(Duration::from_millis(1500))).is_ok());
    }
}
