//! Ordered failover across the configured gateways, and fail-back to the primary.
//!
//! Requests go to the current gateway. A failure moves on to the next one at once; when
//! every gateway failed in a row the caller backs off before starting again from the
//! primary. While on a secondary, the primary is probed every `failback_probe` (default
//! 5 min, [`DEFAULT_FAIL_BACK_AFTER`]): the uplink asks the primary's `/v1/health` and
//! switches back when it answers ([`GatewayRing::probe_due`], [`GatewayRing::record_probe`]);
//! the command and config loops simply try the primary again
//! ([`GatewayRing::maybe_fail_back`]). Time is an argument, for tests.

use std::time::{Duration, Instant};

/// Default time on a secondary before the primary is probed (and between probes).
pub const DEFAULT_FAIL_BACK_AFTER: Duration = Duration::from_secs(300);

/// What the caller should do after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Another gateway is left in this round: try it now.
    TryNext,
    /// Every gateway failed in a row: back off, then start again from the primary.
    BackOff,
}

/// The ordered gateway list and where we are in it.
#[derive(Debug, Clone)]
pub struct GatewayRing {
    gateways: Vec<String>,
    current: usize,
    failed_in_round: usize,
    on_secondary_since: Option<Instant>,
    last_probe: Option<Instant>,
    fail_back_after: Duration,
}

impl GatewayRing {
    /// A ring over `gateways` (the first is the primary) that probes the primary every
    /// `fail_back_after` while on a secondary. An empty list is allowed but every request
    /// then fails; the config refuses it before we get here.
    #[must_use]
    pub fn new(gateways: Vec<String>, fail_back_after: Duration) -> Self {
        Self {
            gateways,
            current: 0,
            failed_in_round: 0,
            on_secondary_since: None,
            last_probe: None,
            fail_back_after,
        }
    }

    /// The gateway to use now (`host:port`), or "" with an empty list.
    #[must_use]
    pub fn current(&self) -> &str {
        self.gateways.get(self.current).map_or("", String::as_str)
    }

    /// The primary (`host:port`), or "" with an empty list.
    #[must_use]
    pub fn primary(&self) -> &str {
        self.gateways.first().map_or("", String::as_str)
    }

    /// Whether the current gateway is the primary.
    #[must_use]
    pub fn on_primary(&self) -> bool {
        self.current == 0
    }

    /// Records a success on the current gateway.
    pub fn on_success(&mut self, now: Instant) {
        self.failed_in_round = 0;
        if self.current == 0 {
            self.on_secondary_since = None;
            self.last_probe = None;
        } else if self.on_secondary_since.is_none() {
            self.on_secondary_since = Some(now);
        }
    }

    /// Records a failure on the current gateway and moves on.
    pub fn on_failure(&mut self) -> AfterFailure {
        let n = self.gateways.len().max(1);
        self.failed_in_round += 1;
        if self.failed_in_round >= n {
            self.back_to_primary();
            AfterFailure::BackOff
        } else {
            self.current = (self.current + 1) % n;
            AfterFailure::TryNext
        }
    }

    fn back_to_primary(&mut self) {
        self.current = 0;
        self.failed_in_round = 0;
        self.on_secondary_since = None;
        self.last_probe = None;
    }

    /// Whether the primary should be probed now: we have been working on a secondary for
    /// `fail_back_after`, and the last probe (if any) is as old.
    #[must_use]
    pub fn probe_due(&self, now: Instant) -> bool {
        match self.on_secondary_since {
            Some(since) if self.current != 0 => {
                let from = self.last_probe.map_or(since, |p| p.max(since));
                now.saturating_duration_since(from) >= self.fail_back_after
            }
            _ => false,
        }
    }

    /// Applies the outcome of a probe of the primary: back to it when it answered,
    /// otherwise stay and probe again after `fail_back_after`. Returns whether it switched.
    pub fn record_probe(&mut self, now: Instant, primary_ok: bool) -> bool {
        if primary_ok && self.current != 0 {
            self.back_to_primary();
            true
        } else {
            self.last_probe = Some(now);
            false
        }
    }

    /// Switches back to the primary without probing once we have been on a secondary for
    /// `fail_back_after`; returns whether it did. A primary still down costs one failed
    /// request, then the ring moves on again.
    pub fn maybe_fail_back(&mut self, now: Instant) -> bool {
        if self.probe_due(now) {
            self.back_to_primary();
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACK: Duration = DEFAULT_FAIL_BACK_AFTER;

    fn ring() -> GatewayRing {
        GatewayRing::new(vec!["a:1".into(), "b:1".into(), "c:1".into()], BACK)
    }

    #[test]
    fn failures_walk_the_list_in_order_then_back_off() {
        let mut r = ring();
        assert_eq!(r.current(), "a:1");
        assert_eq!(r.primary(), "a:1");
        assert_eq!(r.on_failure(), AfterFailure::TryNext);
        assert_eq!(r.current(), "b:1");
        assert_eq!(r.on_failure(), AfterFailure::TryNext);
        assert_eq!(r.current(), "c:1");
        assert_eq!(r.on_failure(), AfterFailure::BackOff);
        assert_eq!(r.current(), "a:1");
    }

    #[test]
    fn success_on_secondary_sticks_until_fail_back() {
        let t0 = Instant::now();
        let mut r = ring();
        r.on_failure();
        r.on_success(t0);
        assert_eq!(r.current(), "b:1");
        assert!(!r.maybe_fail_back(t0 + Duration::from_secs(10)));
        r.on_success(t0 + Duration::from_secs(20));
        assert!(r.maybe_fail_back(t0 + BACK));
        assert!(r.on_primary());
        // The primary is still down: the next failure goes to b again, not a backoff.
        assert_eq!(r.on_failure(), AfterFailure::TryNext);
        assert_eq!(r.current(), "b:1");
    }

    #[test]
    fn probe_is_due_every_period_on_a_secondary_only() {
        let t0 = Instant::now();
        let p = Duration::from_secs(2);
        let mut r = GatewayRing::new(vec!["a:1".into(), "b:1".into()], p);
        assert!(
            !r.probe_due(t0 + p * 10),
            "on the primary nothing is probed"
        );
        r.on_failure();
        assert!(!r.probe_due(t0 + p * 10), "no success on b yet");
        r.on_success(t0);
        assert!(!r.probe_due(t0 + Duration::from_millis(1999)));
        assert!(r.probe_due(t0 + p));
        // The primary is still down: wait a whole period before the next probe.
        assert!(!r.record_probe(t0 + p, false));
        assert_eq!(r.current(), "b:1");
        assert!(!r.probe_due(t0 + p + Duration::from_secs(1)));
        assert!(r.probe_due(t0 + p * 2));
        // It answers: back to it, and no more probing.
        assert!(r.record_probe(t0 + p * 2, true));
        assert!(r.on_primary());
        assert!(!r.probe_due(t0 + p * 100));
        r.on_success(t0 + p * 3);
        assert!(!r.probe_due(t0 + p * 100));
    }

    #[test]
    fn a_new_round_forgets_the_secondary() {
        let t0 = Instant::now();
        let p = Duration::from_secs(2);
        let mut r = GatewayRing::new(vec!["a:1".into(), "b:1".into()], p);
        r.on_failure();
        r.on_success(t0);
        // b fails too: the ring wraps to a, which also fails: back off from the primary.
        assert_eq!(r.on_failure(), AfterFailure::TryNext);
        assert!(r.on_primary());
        assert_eq!(r.on_failure(), AfterFailure::BackOff);
        assert!(r.on_primary());
        assert!(!r.probe_due(t0 + p * 10));
    }

    #[test]
    fn single_gateway_backs_off_at_once() {
        let mut r = GatewayRing::new(vec!["a:1".into()], BACK);
        assert_eq!(r.on_failure(), AfterFailure::BackOff);
        assert_eq!(r.current(), "a:1");
        assert!(!r.probe_due(Instant::now() + BACK * 2));
    }
}
