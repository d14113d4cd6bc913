//! Bounded polling. Every wait has a deadline and names what it waited for when it gives up,
//! with the last error seen, so a timeout explains itself.

use std::time::{Duration, Instant};

use anyhow::anyhow;

/// An error that ends a wait at once (e.g. the process being waited on exited), where any
/// other error from a check is taken as "not yet".
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Abort(pub String);

/// Makes an error that ends a [`wait_for`] at once.
#[must_use]
pub fn abort(message: impl Into<String>) -> anyhow::Error {
    Abort(message.into()).into()
}

/// Polls `check` every `poll` until it returns `Ok(Some(value))`, for at most `timeout`.
/// An `Err` from `check` does not stop the wait (the condition may not be reachable yet),
/// unless it is an [`Abort`]; the last one is reported if time runs out.
///
/// # Errors
/// When `timeout` passes first: "timed out after … waiting for {what}"; or the [`Abort`].
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) if e.is::<Abort>() => {
                return Err(e.context(format!("gave up waiting for {what}")));
            }
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            let last = last_err.map_or_else(String::new, |e| format!(" (last error: {e:#})"));
            return Err(anyhow!(
                "timed out after {timeout:?} waiting for {what}{last}"
            ));
        }
        std::thread::sleep(poll);
    }
}

/// Polls `check` every `poll` until it returns `Ok(true)`, for at most `timeout`.
///
/// # Errors
/// As [`wait_for`].
pub fn wait_until(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    wait_for(what, timeout, poll, || Ok(check()?.then_some(())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abort_ends_the_wait_at_once() {
        let mut calls = 0;
        let e = wait_until(
            "a dead process",
            Duration::from_secs(30),
            Duration::from_millis(5),
            || {
                calls += 1;
                Err(abort("it exited"))
            },
        )
        .unwrap_err();
        assert_eq!(calls, 1);
        assert!(format!("{e:#}").contains("it exited"), "{e:#}");
    }

    #[test]
    fn returns_the_value_once_ready() {
        let mut n = 0;
        let v = wait_for(
            "n to reach 3",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                Ok((n >= 3).then_some(n))
            },
        )
        .unwrap();
        assert_eq!(v, 3);
    }

    #[test]
    fn times_out_naming_what_and_the_last_error() {
        let e = wait_until(
            "the moon",
            Duration::from_millis(30),
            Duration::from_millis(5),
            || Err(anyhow!("still dark")),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("waiting for the moon"), "{e}");
        assert!(e.contains("still dark"), "{e}");
    }
}
