//! Ordered failover across the configured gateways.
//!
//! Requests go to the current gateway. A failure moves on to the next one at once; when
//! every gateway failed in a row the caller backs off before starting again from the
//! primary. After [`FAIL_BACK_AFTER`] on a secondary, the primary is tried first again so
//! the fleet drifts back to it once it recovers. Time is an argument, for tests.

use std::time::{Duration, Instant};

/// How long the collector stays on a secondary before probing the primary again.
pub const FAIL_BACK_AFTER: Duration = Duration::from_secs(300);

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
}

impl GatewayRing {
    /// A ring over `gateways` (the first is the primary). An empty list is allowed but every
    /// request then fails; the config refuses it before we get here.
    #[must_use]
    pub fn new(gateways: Vec<String>) -> Self {
        Self {
            gateways,
            current: 0,
            failed_in_round: 0,
            on_secondary_since: None,
        }
    }

    /// The gateway to use now (`host:port`), or "" with an empty list.
    #[must_use]
    pub fn current(&self) -> &str {
        self.gateways.get(self.current).map_or("", String::as_str)
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
        } else if self.on_secondary_since.is_none() {
            self.on_secondary_since = Some(now);
        }
    }

    /// Records a failure on the current gateway and moves on.
    pub fn on_failure(&mut self) -> AfterFailure {
        let n = self.gateways.len().max(1);
        self.failed_in_round += 1;
        if self.failed_in_round >= n {
            self.failed_in_round = 0;
            self.current = 0;
            self.on_secondary_since = None;
            AfterFailure::BackOff
        } else {
            self.current = (self.current + 1) % n;
            AfterFailure::TryNext
        }
    }

    /// Switches back to the primary when we have been on a secondary for
    /// [`FAIL_BACK_AFTER`]; returns whether it did.
    pub fn maybe_fail_back(&mut self, now: Instant) -> bool {
        match self.on_secondary_since {
            Some(since) if self.current != 0 && now.duration_since(since) >= FAIL_BACK_AFTER => {
                self.current = 0;
                self.failed_in_round = 0;
                self.on_secondary_since = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring() -> GatewayRing {
        GatewayRing::new(vec!["a:1".into(), "b:1".into(), "c:1".into()])
    }

    #[test]
    fn failures_walk_the_list_in_order_then_back_off() {
        let mut r = ring();
        assert_eq!(r.current(), "a:1");
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
        assert!(r.maybe_fail_back(t0 + FAIL_BACK_AFTER));
        assert!(r.on_primary());
        // The primary is still down: the next failure goes to b again, not a backoff.
        assert_eq!(r.on_failure(), AfterFailure::TryNext);
        assert_eq!(r.current(), "b:1");
    }

    #[test]
    fn single_gateway_backs_off_at_once() {
        let mut r = GatewayRing::new(vec!["a:1".into()]);
        assert_eq!(r.on_failure(), AfterFailure::BackOff);
        assert_eq!(r.current(), "a:1");
    }
}
