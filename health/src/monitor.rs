//! Unit monitors: from one object's sample to a raw level, and from raw levels over
//! consecutive samples to a state.
//!
//! # The sample window
//!
//! Each sample gives a raw level (Healthy, Warning or Critical). A monitor with
//! `samples = N` keeps the last N raw levels and changes state only on N consecutive
//! samples that agree:
//!
//! * it **worsens** to level L when all of the last N samples are at L or worse
//!   (`min(window) > state` → `state = min(window)`);
//! * it **improves** to level L when all of the last N samples are at L or better
//!   (`max(window) < state` → `state = max(window)`);
//! * otherwise it stays.
//!
//! So with N = 3 a value must be past a level three samples in a row to raise the state,
//! and back below it three samples in a row to clear it; a single spike or dip changes
//! nothing. Before N samples have been seen the state is Unknown, and the first full
//! window sets it to the best level all N samples reach. A sample without the value the
//! monitor needs sets the state to Unknown and empties the window.
//!
//! Levels: a threshold is crossed *at* the level (`value >= level` for `above`,
//! `value <= level` for `below`); critical is checked before warning. Rate monitors judge
//! the per-second increase of a counter since the previous sample; the first sample and a
//! counter that went backwards (a restart) give no level and leave the state as it is.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::model::{Direction, Params, UnitKind, UnitMonitor};
use super::samples::ObjectSample;
use super::state::HealthState;

/// Milliseconds per day.
const DAY_MS: f64 = 86_400_000.0;

/// The level of a value against warning and critical levels.
#[must_use]
pub fn threshold_level(
    value: f64,
    direction: Direction,
    warning: Option<f64>,
    critical: Option<f64>,
) -> HealthState {
    let crossed = |level: Option<f64>| {
        level.is_some_and(|l| match direction {
            Direction::Above => value >= l,
            Direction::Below => value <= l,
        })
    };
    if crossed(critical) {
        HealthState::Critical
    } else if crossed(warning) {
        HealthState::Warning
    } else {
        HealthState::Healthy
    }
}

/// What one sample says for a monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    /// A raw level.
    Level(HealthState),
    /// The value the monitor needs is missing: Unknown.
    Missing,
    /// Nothing to judge yet (first sample of a rate): no change.
    Pending,
}

/// The running state of one unit monitor on one object (serializable, so a collector can
/// keep it across a restart).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitState {
    window: VecDeque<HealthState>,
    /// The current state.
    pub state: HealthState,
    /// The previous value and its time, for rate monitors.
    last: Option<(f64, i64)>,
}

impl Default for UnitState {
    fn default() -> Self {
        Self {
            window: VecDeque::new(),
            state: HealthState::Unknown,
            last: None,
        }
    }
}

impl UnitState {
    /// Forgets the window and sets a state (Unknown, or NotMonitored when disabled).
    pub fn reset(&mut self, state: HealthState) {
        self.window.clear();
        self.state = state;
    }

    /// Drops a previous rate value that JSON cannot carry (NaN, infinite).
    pub(crate) fn forget_non_finite(&mut self) {
        if self.last.is_some_and(|(v, _)| !v.is_finite()) {
            self.last = None;
        }
    }

    /// Adds one raw level and applies the window rule for `samples` consecutive samples.
    pub fn push(&mut self, level: HealthState, samples: u32) -> HealthState {
        let n = usize::try_from(samples.max(1)).unwrap_or(usize::MAX);
        self.window.push_back(level);
        while self.window.len() > n {
            self.window.pop_front();
        }
        if self.window.len() < n {
            return self.state;
        }
        let lo = self.window.iter().copied().min().unwrap_or(level);
        let hi = self.window.iter().copied().max().unwrap_or(level);
        let established = matches!(
            self.state,
            HealthState::Healthy | HealthState::Warning | HealthState::Critical
        );
        if !established || lo > self.state {
            self.state = lo;
        } else if hi < self.state {
            self.state = hi;
        }
        self.state
    }

    /// Reads the sample for this monitor, keeping what rate monitors need.
    pub fn read(
        &mut self,
        monitor: &UnitMonitor,
        params: &Params,
        sample: &ObjectSample,
        now_ms: i64,
    ) -> Reading {
        match &monitor.kind {
            UnitKind::Threshold {
                metric,
                direction,
                rate,
            } => {
                let Some(&value) = sample.values.get(metric) else {
                    self.last = None;
                    return Reading::Missing;
                };
                let value = if *rate {
                    let prev = self.last.replace((value, now_ms));
                    match prev {
                        Some((pv, pt)) if now_ms > pt && value >= pv => {
                            #[allow(clippy::cast_precision_loss)] // intervals are tiny
                            let secs = (now_ms - pt) as f64 / 1000.0;
                            (value - pv) / secs
                        }
                        _ => return Reading::Pending,
                    }
                } else {
                    value
                };
                Reading::Level(threshold_level(
                    value,
                    *direction,
                    params.warning,
                    params.critical,
                ))
            }
            UnitKind::FilesystemFree => match sample.values.get("free_percent") {
                Some(&v) => Reading::Level(threshold_level(
                    v,
                    Direction::Below,
                    params.warning,
                    params.critical,
                )),
                None => Reading::Missing,
            },
            UnitKind::CertificateExpiry => match sample.values.get("expires_at_ms") {
                Some(&at) => {
                    #[allow(clippy::cast_precision_loss)]
                    // unix milliseconds are exact in f64 until year 287,000
                    let days_left = (at - now_ms as f64) / DAY_MS;
                    Reading::Level(threshold_level(
                        days_left,
                        Direction::Below,
                        params.warning,
                        params.critical,
                    ))
                }
                None => Reading::Missing,
            },
            UnitKind::VmState { states, default } => {
                map_state(sample.labels.get("state"), states, *default)
            }
            UnitKind::ServiceActive { states, default } => {
                map_state(sample.labels.get("active_state"), states, *default)
            }
        }
    }
}

fn map_state(
    label: Option<&String>,
    states: &std::collections::BTreeMap<String, HealthState>,
    default: HealthState,
) -> Reading {
    let Some(label) = label else {
        return Reading::Missing;
    };
    match states.get(label).copied().unwrap_or(default) {
        HealthState::Unknown | HealthState::NotMonitored => Reading::Missing,
        level => Reading::Level(level),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Critical, Healthy, Unknown, Warning};

    #[test]
    fn levels_are_crossed_at_the_level() {
        let above = |v| threshold_level(v, Direction::Above, Some(80.0), Some(90.0));
        assert_eq!(above(79.9), Healthy);
        assert_eq!(above(80.0), Warning);
        assert_eq!(above(90.0), Critical);
        let below = |v| threshold_level(v, Direction::Below, Some(20.0), Some(10.0));
        assert_eq!(below(20.1), Healthy);
        assert_eq!(below(20.0), Warning);
        assert_eq!(below(5.0), Critical);
        assert_eq!(
            threshold_level(99.0, Direction::Above, None, Some(100.0)),
            Healthy
        );
    }

    #[test]
    fn window_needs_n_agreeing_samples_both_ways() {
        let mut u = UnitState::default();
        assert_eq!(u.push(Healthy, 3), Unknown);
        assert_eq!(u.push(Healthy, 3), Unknown);
        assert_eq!(u.push(Healthy, 3), Healthy);
        assert_eq!(u.push(Critical, 3), Healthy);
        assert_eq!(u.push(Warning, 3), Healthy);
        assert_eq!(
            u.push(Critical, 3),
            Warning,
            "three samples at warning or worse"
        );
        assert_eq!(u.push(Critical, 3), Warning);
        assert_eq!(u.push(Critical, 3), Critical);
        assert_eq!(u.push(Healthy, 3), Critical);
        assert_eq!(u.push(Warning, 3), Critical);
        assert_eq!(
            u.push(Healthy, 3),
            Warning,
            "three samples better than critical"
        );
        assert_eq!(u.push(Healthy, 3), Warning);
        assert_eq!(u.push(Healthy, 3), Healthy);
    }

    #[test]
    fn first_window_takes_the_best_common_level() {
        let mut u = UnitState::default();
        u.push(Warning, 2);
        assert_eq!(u.push(Critical, 2), Warning);
        let mut u = UnitState::default();
        u.push(Healthy, 2);
        assert_eq!(u.push(Critical, 2), Healthy);
        let mut u = UnitState::default();
        assert_eq!(u.push(Critical, 1), Critical);
    }

    #[test]
    fn reset_empties_the_window() {
        let mut u = UnitState::default();
        u.push(Critical, 2);
        u.push(Critical, 2);
        u.reset(Unknown);
        assert_eq!(u.push(Healthy, 2), Unknown);
        assert_eq!(u.push(Healthy, 2), Healthy);
    }
}
