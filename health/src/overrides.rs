//! Override precedence: which override decides a parameter for an object.
//!
//! Every applicable override gets an [`OverrideRank`]; the greatest rank wins. The rank
//! compares, in this order:
//!
//! 1. **scope** — instance over group over class;
//! 2. **enforcement** — enforced over not enforced;
//! 3. **origin** — an override from a local (unsealed) pack over one from a sealed pack;
//! 4. **pack name**, then **override id**, alphabetically: the *smaller* name wins. This
//!    last step only breaks ties; when two overrides tie on 1–3 and set different values,
//!    the choice is reported as an [`OverrideConflict`] so an operator can fix the packs.
//!
//! The rank is a derived lexicographic order over plain values, so it is a total order
//! (property-tested below): the outcome never depends on the order packs were loaded or
//! overrides were listed, and nothing is ever chosen at random.

use std::cmp::{Ordering, Reverse};

use serde::{Deserialize, Serialize};

use super::model::{Param, ParamValue};
use super::samples::ObjectKey;

/// How specifically an override picks its objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Specificity {
    /// Every object of a class.
    Class,
    /// Members of a group.
    Group,
    /// One object.
    Instance,
}

/// The precedence of one override; greater wins. Field order is the precedence order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OverrideRank {
    /// Instance > group > class.
    pub specificity: Specificity,
    /// Enforced > not enforced.
    pub enforced: bool,
    /// Local (unsealed) pack > sealed pack.
    pub local: bool,
    /// Tie-break: alphabetically smaller pack name wins.
    pub pack: Reverse<String>,
    /// Tie-break: alphabetically smaller override id wins.
    pub id: Reverse<String>,
}

impl OverrideRank {
    /// Builds a rank.
    #[must_use]
    pub fn new(
        specificity: Specificity,
        enforced: bool,
        local: bool,
        pack: &str,
        id: &str,
    ) -> Self {
        Self {
            specificity,
            enforced,
            local,
            pack: Reverse(pack.to_string()),
            id: Reverse(id.to_string()),
        }
    }

    /// The part of the rank that expresses intent; equal tiers are a conflict when the
    /// values differ.
    #[must_use]
    pub fn tier(&self) -> (Specificity, bool, bool) {
        (self.specificity, self.enforced, self.local)
    }

    /// `pack/override`.
    #[must_use]
    pub fn name(&self) -> String {
        format!("{}/{}", self.pack.0, self.id.0)
    }
}

/// Two or more overrides of equal scope, enforcement and origin set different values for
/// the same parameter of the same object; the tie-break chose one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverrideConflict {
    /// The monitor or rule id.
    pub target: String,
    /// The object.
    pub object: ObjectKey,
    /// The parameter.
    pub param: String,
    /// The override that won (`pack/override`) and its value.
    pub chosen: String,
    /// The value it set.
    pub value: String,
    /// The overrides that lost the tie-break (`pack/override=value`).
    pub over: Vec<String>,
}

/// The winner among the overrides that set one parameter for one object.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// The value that applies.
    pub value: ParamValue,
    /// Who set it.
    pub winner: OverrideRank,
    /// Overrides that tied with the winner on [`OverrideRank::tier`] but set another value,
    /// with their values.
    pub tied: Vec<(OverrideRank, ParamValue)>,
}

/// Picks the winning value for one parameter; `None` without candidates. The result does
/// not depend on the order of `candidates`.
#[must_use]
pub fn resolve(candidates: &[(OverrideRank, ParamValue)]) -> Option<Resolution> {
    let (winner, value) = candidates.iter().max_by(|a, b| a.0.cmp(&b.0))?;
    let mut tied: Vec<(OverrideRank, ParamValue)> = candidates
        .iter()
        .filter(|(rank, v)| rank != winner && rank.tier() == winner.tier() && v != value)
        .cloned()
        .collect();
    tied.sort_by(|a, b| b.0.cmp(&a.0));
    Some(Resolution {
        value: *value,
        winner: winner.clone(),
        tied,
    })
}

/// Builds the conflict report for a resolution with ties.
#[must_use]
pub fn conflict(
    target: &str,
    object: &ObjectKey,
    param: Param,
    resolution: &Resolution,
) -> Option<OverrideConflict> {
    if resolution.tied.is_empty() {
        return None;
    }
    Some(OverrideConflict {
        target: target.to_string(),
        object: object.clone(),
        param: param.as_str().to_string(),
        chosen: resolution.winner.name(),
        value: resolution.value.to_string(),
        over: resolution
            .tied
            .iter()
            .map(|(r, v)| format!("{}={v}", r.name()))
            .collect(),
    })
}

/// Compares two ranks (for callers that sort).
#[must_use]
pub fn compare(a: &OverrideRank, b: &OverrideRank) -> Ordering {
    a.cmp(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_rank() -> impl Strategy<Value = OverrideRank> {
        (
            prop::sample::select(vec![
                Specificity::Class,
                Specificity::Group,
                Specificity::Instance,
            ]),
            any::<bool>(),
            any::<bool>(),
            prop::sample::select(vec!["acme", "outpost.default", "zeta"]),
            prop::sample::select(vec!["o1", "o2", "x"]),
        )
            .prop_map(|(s, e, l, p, i)| OverrideRank::new(s, e, l, p, i))
    }

    #[test]
    fn documented_precedence() {
        let r = OverrideRank::new;
        use Specificity::{Class, Group, Instance};
        // instance over group over class, whatever else
        assert!(r(Instance, false, false, "z", "z") > r(Group, true, true, "a", "a"));
        assert!(r(Group, false, false, "z", "z") > r(Class, true, true, "a", "a"));
        // then enforced over not
        assert!(r(Group, true, false, "z", "z") > r(Group, false, true, "a", "a"));
        // then local over sealed
        assert!(r(Class, false, true, "z", "z") > r(Class, false, false, "a", "a"));
        // then the smaller pack name, then the smaller id
        assert!(r(Class, false, true, "a", "z") > r(Class, false, true, "b", "a"));
        assert!(r(Class, false, true, "a", "a") > r(Class, false, true, "a", "b"));
    }

    #[test]
    fn ties_with_different_values_are_conflicts() {
        let a = OverrideRank::new(Specificity::Group, false, true, "acme", "o1");
        let b = OverrideRank::new(Specificity::Group, false, true, "beta", "o9");
        let c = OverrideRank::new(Specificity::Group, false, true, "gamma", "o2");
        let class = OverrideRank::new(Specificity::Class, true, true, "acme", "c");
        let cands = vec![
            (b.clone(), ParamValue::Number(70.0)),
            (class, ParamValue::Number(10.0)),
            (a.clone(), ParamValue::Number(80.0)),
            (c, ParamValue::Number(80.0)), // same value as the winner: no conflict
        ];
        let res = resolve(&cands).unwrap();
        assert_eq!(res.winner, a);
        assert_eq!(res.value, ParamValue::Number(80.0));
        assert_eq!(res.tied, vec![(b, ParamValue::Number(70.0))]);
        let obj = ObjectKey::new(crate::Class::Vm, "db1");
        let report = conflict("vm.cpu", &obj, Param::Warning, &res).unwrap();
        assert_eq!(report.chosen, "acme/o1");
        assert_eq!(report.over, vec!["beta/o9=70".to_string()]);
        assert_eq!(resolve(&[]), None);
    }

    proptest! {
        /// Antisymmetric: a ≤ b and b ≤ a only when a = b.
        #[test]
        fn precedence_is_antisymmetric(a in any_rank(), b in any_rank()) {
            if compare(&a, &b) != Ordering::Greater && compare(&b, &a) != Ordering::Greater {
                prop_assert_eq!(&a, &b);
            }
            prop_assert_eq!(compare(&a, &b), compare(&b, &a).reverse());
        }

        /// Transitive: a ≤ b and b ≤ c imply a ≤ c.
        #[test]
        fn precedence_is_transitive(a in any_rank(), b in any_rank(), c in any_rank()) {
            if compare(&a, &b) != Ordering::Greater && compare(&b, &c) != Ordering::Greater {
                prop_assert!(compare(&a, &c) != Ordering::Greater);
            }
        }

        /// Total: any two ranks compare, and equal ranks are the same override.
        #[test]
        fn precedence_is_total(a in any_rank(), b in any_rank()) {
            let ord = compare(&a, &b);
            prop_assert!(matches!(ord, Ordering::Less | Ordering::Equal | Ordering::Greater));
            if ord == Ordering::Equal {
                prop_assert_eq!(a.name(), b.name());
            }
        }

        /// Never random: the winner does not depend on the order of the candidates.
        #[test]
        fn winner_ignores_candidate_order(
            ranks in prop::collection::btree_set(any_rank().prop_map(|r| (r.name(), r)), 1..8),
            seed in any::<u64>(),
        ) {
            // One candidate per pack/override name (an override is one rank).
            let mut cands: Vec<(OverrideRank, ParamValue)> = ranks
                .into_iter()
                .enumerate()
                .map(|(i, (_, r))| (r, ParamValue::Count(u32::try_from(i).unwrap() % 3 + 1)))
                .collect();
            let first = resolve(&cands).unwrap();
            let n = cands.len();
            #[allow(clippy::cast_possible_truncation)] // the remainder is below n, a usize
            cands.rotate_left((seed % n as u64) as usize);
            cands.reverse();
            let second = resolve(&cands).unwrap();
            prop_assert_eq!(first.winner, second.winner);
            prop_assert_eq!(first.value, second.value);
            prop_assert_eq!(first.tied, second.tied);
        }
    }
}
