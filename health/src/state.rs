//! Health states and the rollup algebra (WorstOf, BestOf, WorstOfPercentage).
//!
//! # Ordering
//!
//! Rollups compare states by *severity rank*:
//!
//! ```text
//! Healthy (1) < Unknown (2) < Warning (3) < Critical (4)
//! ```
//!
//! Unknown sits between Healthy and Warning on purpose: a WorstOf over `{Healthy, Unknown}`
//! is Unknown (nobody can say all is well), while over `{Warning, Unknown}` it is Warning
//! (something is known to be wrong). BestOf uses the same order, so one Healthy member
//! makes BestOf Healthy, and `{Unknown, Warning}` is Unknown.
//!
//! NotMonitored (rank 0, for sorting only) means "switched off or nothing to judge"; every
//! rollup ignores such members, and a rollup whose members are all NotMonitored (or that has
//! none) is itself NotMonitored.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The health of a monitor or an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthState {
    /// Within all levels.
    Healthy,
    /// Beyond the warning level.
    Warning,
    /// Beyond the critical level.
    Critical,
    /// No data to judge (yet), e.g. a metric missing or fewer samples than the monitor needs.
    Unknown,
    /// Switched off by an override, or nothing to judge; ignored by rollups.
    NotMonitored,
}

impl HealthState {
    /// Every state, in rank order.
    pub const ALL: [HealthState; 5] = [
        Self::NotMonitored,
        Self::Healthy,
        Self::Unknown,
        Self::Warning,
        Self::Critical,
    ];

    /// Severity rank used by rollups (see the module docs).
    #[must_use]
    pub fn rank(self) -> u8 {
        match self {
            Self::NotMonitored => 0,
            Self::Healthy => 1,
            Self::Unknown => 2,
            Self::Warning => 3,
            Self::Critical => 4,
        }
    }

    /// The name used in packs and on the wire (`healthy`, `not_monitored`, …).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Unknown => "unknown",
            Self::NotMonitored => "not_monitored",
        }
    }

    /// Parses [`Self::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether rollups take this state into account.
    #[must_use]
    pub fn is_monitored(self) -> bool {
        self != Self::NotMonitored
    }
}

impl PartialOrd for HealthState {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// By [`HealthState::rank`]: greater is worse.
impl Ord for HealthState {
    fn cmp(&self, other: &Self) -> Ordering {
        self.rank().cmp(&other.rank())
    }
}

impl fmt::Display for HealthState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rollup algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// The worst member.
    WorstOf,
    /// The best member.
    BestOf,
    /// The worst state among the best `percentage` % of members (see
    /// [`worst_of_percentage`]).
    WorstOfPercentage,
}

impl Algorithm {
    /// The name used in packs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WorstOf => "worst_of",
            Self::BestOf => "best_of",
            Self::WorstOfPercentage => "worst_of_percentage",
        }
    }

    /// Applies the algorithm; `percentage` is used by [`Self::WorstOfPercentage`] only.
    #[must_use]
    pub fn apply(self, members: &[HealthState], percentage: u8) -> HealthState {
        match self {
            Self::WorstOf => worst_of(members),
            Self::BestOf => best_of(members),
            Self::WorstOfPercentage => worst_of_percentage(members, percentage),
        }
    }
}

/// The worst monitored member; NotMonitored when there is none.
#[must_use]
pub fn worst_of(members: &[HealthState]) -> HealthState {
    members
        .iter()
        .copied()
        .filter(|s| s.is_monitored())
        .max()
        .unwrap_or(HealthState::NotMonitored)
}

/// The best monitored member; NotMonitored when there is none.
#[must_use]
pub fn best_of(members: &[HealthState]) -> HealthState {
    members
        .iter()
        .copied()
        .filter(|s| s.is_monitored())
        .min()
        .unwrap_or(HealthState::NotMonitored)
}

/// WorstOfPercentage: sort the `n` monitored members best first, keep the best
/// `k = max(1, ceil(percentage × n / 100))`, and return the worst of those. Equivalently:
/// the best state `S` such that at least `percentage` % of the members are at `S` or
/// better. With 60 % over five VMs, three healthy and two critical give Healthy; two
/// healthy and three critical give Critical. 100 % is WorstOf, 0 % is BestOf. NotMonitored
/// when there are no monitored members. `percentage` above 100 counts as 100.
#[must_use]
pub fn worst_of_percentage(members: &[HealthState], percentage: u8) -> HealthState {
    let mut monitored: Vec<HealthState> = members
        .iter()
        .copied()
        .filter(|s| s.is_monitored())
        .collect();
    if monitored.is_empty() {
        return HealthState::NotMonitored;
    }
    monitored.sort();
    let n = monitored.len();
    let p = usize::from(percentage.min(100));
    let k = (p * n).div_ceil(100).clamp(1, n);
    monitored[k - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use HealthState::{Critical, Healthy, NotMonitored, Unknown, Warning};

    fn any_state() -> impl Strategy<Value = HealthState> {
        prop::sample::select(HealthState::ALL.to_vec())
    }

    #[test]
    fn documented_order_and_names() {
        assert!(Healthy < Unknown && Unknown < Warning && Warning < Critical);
        assert!(NotMonitored < Healthy);
        for s in HealthState::ALL {
            assert_eq!(HealthState::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn examples_from_the_docs() {
        assert_eq!(worst_of(&[Healthy, Unknown]), Unknown);
        assert_eq!(worst_of(&[Warning, Unknown]), Warning);
        assert_eq!(best_of(&[Unknown, Warning]), Unknown);
        assert_eq!(best_of(&[Critical, Healthy]), Healthy);
        assert_eq!(worst_of(&[NotMonitored, NotMonitored]), NotMonitored);
        assert_eq!(best_of(&[]), NotMonitored);
        let h3c2 = [Healthy, Critical, Healthy, Critical, Healthy];
        assert_eq!(worst_of_percentage(&h3c2, 60), Healthy);
        let h2c3 = [Critical, Healthy, Critical, Critical, Healthy];
        assert_eq!(worst_of_percentage(&h2c3, 60), Critical);
        assert_eq!(worst_of_percentage(&h2c3, 100), Critical);
        assert_eq!(worst_of_percentage(&h2c3, 0), Healthy);
        assert_eq!(worst_of_percentage(&[NotMonitored], 50), NotMonitored);
    }

    proptest! {
        /// WorstOf is the worst member: it is a member, and no monitored member is worse.
        #[test]
        fn worst_of_is_the_worst_member(members in prop::collection::vec(any_state(), 0..20)) {
            let w = worst_of(&members);
            let monitored: Vec<_> = members.iter().copied().filter(|s| s.is_monitored()).collect();
            if monitored.is_empty() {
                prop_assert_eq!(w, NotMonitored);
            } else {
                prop_assert!(monitored.contains(&w));
                prop_assert!(monitored.iter().all(|m| *m <= w));
            }
        }

        /// BestOf is the best member, mirror image.
        #[test]
        fn best_of_is_the_best_member(members in prop::collection::vec(any_state(), 0..20)) {
            let b = best_of(&members);
            let monitored: Vec<_> = members.iter().copied().filter(|s| s.is_monitored()).collect();
            if monitored.is_empty() {
                prop_assert_eq!(b, NotMonitored);
            } else {
                prop_assert!(monitored.contains(&b));
                prop_assert!(monitored.iter().all(|m| *m >= b));
            }
        }

        /// Adding a healthy member never worsens BestOf (it makes it Healthy).
        #[test]
        fn adding_a_healthy_member_never_worsens_best_of(
            members in prop::collection::vec(any_state(), 0..20),
            at in any::<prop::sample::Index>(),
        ) {
            let before = best_of(&members);
            let mut more = members.clone();
            more.insert(at.index(members.len() + 1), Healthy);
            let after = best_of(&more);
            prop_assert_eq!(after, Healthy);
            if before.is_monitored() {
                prop_assert!(after <= before);
            }
        }

        /// WorstOfPercentage matches its definition: the best state S such that at least
        /// p % of the monitored members are at S or better (checked by counting, not sorting).
        #[test]
        fn worst_of_percentage_matches_its_definition(
            members in prop::collection::vec(any_state(), 0..20),
            p in 0u8..=100,
        ) {
            let got = worst_of_percentage(&members, p);
            let monitored: Vec<_> = members.iter().copied().filter(|s| s.is_monitored()).collect();
            let n = monitored.len();
            if n == 0 {
                prop_assert_eq!(got, NotMonitored);
                return Ok(());
            }
            let expected = [Healthy, Unknown, Warning, Critical]
                .into_iter()
                .find(|s| {
                    let at_or_better = monitored.iter().filter(|m| *m <= s).count();
                    // at least p % of n, and at least one member
                    at_or_better * 100 >= usize::from(p) * n && at_or_better >= 1
                })
                .unwrap();
            prop_assert_eq!(got, expected);
            // And the edges: 100 % is WorstOf, 0 % is BestOf.
            prop_assert_eq!(worst_of_percentage(&members, 100), worst_of(&members));
            prop_assert_eq!(worst_of_percentage(&members, 0), best_of(&members));
        }

        /// Member order never matters.
        #[test]
        fn rollups_ignore_member_order(
            mut members in prop::collection::vec(any_state(), 0..12),
            p in 0u8..=100,
        ) {
            let before = (worst_of(&members), best_of(&members), worst_of_percentage(&members, p));
            members.reverse();
            let after = (worst_of(&members), best_of(&members), worst_of_percentage(&members, p));
            prop_assert_eq!(before, after);
        }
    }
}
