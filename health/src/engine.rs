//! The health engine: samples in, state changes and alerts out.
//!
//! [`HealthEngine::observe`] runs one round: discovery decides which sampled objects
//! exist; every node of the health graph is evaluated in the order [`PackSet`] fixed
//! (unit monitors through their sample windows, then rollups); alert rules raise and
//! resolve alerts; collect rules pick values to forward. Only differences from the
//! previous round come back as [`HealthEvent`]s, so an unchanged box produces none.
//! Nothing here reads a clock or a file: time is the `now_ms` argument.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::model::{Param, ParamValue, Params, RuleKind, Scope};
use super::monitor::{Reading, UnitState};
use super::overrides::{conflict, resolve, OverrideConflict, OverrideRank, Specificity};
use super::packset::{NodeKind, PackSet, HEALTH};
use super::samples::{Class, ObjectKey, ObjectSample, Samples};
use super::state::{worst_of, HealthState};
use outpost_proto::health::PackStatus;

/// One line for a conflict: `TARGET on OBJECT: PARAM = VALUE from WINNER over LOSERS`.
#[must_use]
pub fn describe_conflict(c: &OverrideConflict) -> String {
    format!(
        "{} on {}: {} = {} from {} over {}",
        c.target,
        c.object,
        c.param,
        c.value,
        c.chosen,
        c.over.join(", ")
    )
}

/// An open (or just resolved) alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The alert rule.
    pub rule: String,
    /// The monitor it watches.
    pub monitor: String,
    /// The object.
    pub object: ObjectKey,
    /// Warning or Critical: the worst state seen while open.
    pub severity: HealthState,
    /// The rule's message with its placeholders filled in.
    pub message: String,
    /// When it was raised, unix milliseconds.
    pub raised_at_ms: i64,
}

/// Why an alert was resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolveReason {
    /// Its monitor is healthy again.
    Healthy,
    /// Its object is gone (undiscovered or no longer sampled).
    ObjectGone,
    /// Its monitor was switched off.
    NotMonitored,
    /// Its rule was switched off by an override.
    RuleDisabled,
    /// Its rule is no longer in any pack.
    RuleRemoved,
}

/// One change worth sending.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum HealthEvent {
    /// A monitor, rollup or an object's overall health (`monitor = "health"`) changed.
    StateChanged {
        /// The object.
        object: ObjectKey,
        /// Monitor id, or `health`.
        monitor: String,
        /// The previous state; `None` when the object or monitor is new.
        from: Option<HealthState>,
        /// The new state.
        to: HealthState,
        /// When, unix milliseconds.
        at_ms: i64,
    },
    /// An object is no longer discovered; its states are forgotten.
    ObjectRemoved {
        /// The object.
        object: ObjectKey,
        /// When, unix milliseconds.
        at_ms: i64,
    },
    /// An alert was raised.
    AlertRaised {
        /// The alert.
        alert: Alert,
    },
    /// An open alert got worse (Warning → Critical).
    AlertEscalated {
        /// The alert, with its new severity.
        alert: Alert,
    },
    /// An alert resolved itself.
    AlertResolved {
        /// The alert as it was.
        alert: Alert,
        /// Why.
        reason: ResolveReason,
        /// When, unix milliseconds.
        at_ms: i64,
    },
    /// The set of override conflicts changed (empty: none left).
    OverrideConflicts {
        /// Every current conflict.
        conflicts: Vec<OverrideConflict>,
    },
}

/// A value a collect rule picked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectedValue {
    /// The collect rule.
    pub rule: String,
    /// The object.
    pub object: ObjectKey,
    /// The metric.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// When, unix milliseconds.
    pub at_ms: i64,
}

/// The state of one monitor on one object, for display.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorHealth {
    /// Monitor id.
    pub id: String,
    /// `unit`, `aggregate` or `dependency`.
    pub kind: String,
    /// Its state.
    pub state: HealthState,
}

/// One object of the health tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectHealth {
    /// The object.
    pub object: ObjectKey,
    /// The object it belongs to.
    pub parent: Option<ObjectKey>,
    /// Its overall (rolled-up) health.
    pub health: HealthState,
    /// Its monitors, in evaluation order (unit monitors before the rollups over them).
    pub monitors: Vec<MonitorHealth>,
}

/// The rolled-up state per object, host first.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct HealthTree {
    /// Objects sorted by class, then id.
    pub objects: Vec<ObjectHealth>,
}

impl HealthTree {
    /// The state of `monitor` on `object`, if the tree has both.
    #[must_use]
    pub fn monitor_state(&self, object: &ObjectKey, monitor: &str) -> Option<HealthState> {
        self.objects
            .iter()
            .find(|o| &o.object == object)
            .and_then(|o| o.monitors.iter().find(|m| m.id == monitor))
            .map(|m| m.state)
    }
}

/// What the sources should read for the packs in force.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Wanted {
    /// systemd units (names or patterns) service discoveries look at.
    pub services: Vec<String>,
    /// Certificate files certificate discoveries look at.
    pub certificate_paths: Vec<String>,
}

/// The most collected values the engine holds between two [`HealthEngine::take_collected`]
/// calls; beyond it the oldest are dropped (and counted), so a caller that never takes
/// them cannot make the engine grow without bound.
pub const MAX_COLLECTED: usize = 10_000;

/// The version of [`EngineSnapshot`]'s format.
pub const SNAPSHOT_VERSION: u32 = 1;

/// The state of one monitor on one object, in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Monitor id (or `health`).
    pub monitor: String,
    /// The object.
    pub object: ObjectKey,
    /// Its state.
    pub state: HealthState,
}

/// The sample window of one unit monitor on one object, in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotUnit {
    /// Monitor id.
    pub monitor: String,
    /// The object.
    pub object: ObjectKey,
    /// Its window, state and previous rate value.
    pub unit: UnitState,
}

/// What the engine has judged so far, as plain data: the objects it knows (keys and
/// parents only), every state, every sample window and every open alert. A collector
/// writes it after each round that changed something and restores it at start, so that a
/// restart neither forgets open alerts (they resolve under their original id) nor raises a
/// still-bad condition a second time, nor re-sends unchanged states.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct EngineSnapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u32,
    /// Rounds judged so far (collect rules' `every` counts from it).
    pub rounds: u64,
    /// The objects of the last round.
    pub objects: Vec<ObjectSample>,
    /// Monitor states of the last round.
    pub states: Vec<SnapshotState>,
    /// Unit monitors' sample windows.
    pub units: Vec<SnapshotUnit>,
    /// Open alerts.
    pub alerts: Vec<Alert>,
}

/// Holds the packs and everything judged so far.
#[derive(Debug, Clone)]
pub struct HealthEngine {
    packs: PackSet,
    objects: BTreeMap<ObjectKey, ObjectSample>,
    units: BTreeMap<(String, ObjectKey), UnitState>,
    states: BTreeMap<(String, ObjectKey), HealthState>,
    alerts: BTreeMap<(String, ObjectKey), Alert>,
    conflicts: Vec<OverrideConflict>,
    collected: Vec<CollectedValue>,
    collected_dropped: u64,
    rounds: u64,
    delivery: PackStatus,
}

impl HealthEngine {
    /// An engine with no history.
    #[must_use]
    pub fn new(packs: PackSet) -> Self {
        Self {
            packs,
            objects: BTreeMap::new(),
            units: BTreeMap::new(),
            states: BTreeMap::new(),
            alerts: BTreeMap::new(),
            conflicts: Vec::new(),
            delivery: PackStatus {
                applied: true,
                ..PackStatus::default()
            },
            collected: Vec::new(),
            collected_dropped: 0,
            rounds: 0,
        }
    }

    /// What has been judged so far, for [`Self::restore`] after a restart.
    #[must_use]
    pub fn snapshot(&self) -> EngineSnapshot {
        EngineSnapshot {
            version: SNAPSHOT_VERSION,
            rounds: self.rounds,
            objects: self
                .objects
                .values()
                .map(|o| ObjectSample {
                    key: o.key.clone(),
                    parent: o.parent.clone(),
                    ..ObjectSample::default()
                })
                .collect(),
            states: self
                .states
                .iter()
                .map(|((monitor, object), state)| SnapshotState {
                    monitor: monitor.clone(),
                    object: object.clone(),
                    state: *state,
                })
                .collect(),
            units: self
                .units
                .iter()
                .map(|((monitor, object), unit)| {
                    let mut unit = unit.clone();
                    unit.forget_non_finite();
                    SnapshotUnit {
                        monitor: monitor.clone(),
                        object: object.clone(),
                        unit,
                    }
                })
                .collect(),
            alerts: self.alerts.values().cloned().collect(),
        }
    }

    /// Takes back what a previous run judged ([`Self::snapshot`]), on top of the packs in
    /// force: the next [`Self::observe`] reports only differences from it, resolves its
    /// open alerts under their original ids and raises nothing that is already open.
    /// Sample windows of monitors the packs no longer define as unit monitors of that
    /// class are dropped; states and alerts of monitors and rules that are gone change
    /// and resolve on the next round, as after [`Self::set_packs`]. A snapshot of another
    /// format version is ignored (returns `false`).
    pub fn restore(&mut self, snapshot: EngineSnapshot) -> bool {
        if snapshot.version != SNAPSHOT_VERSION {
            return false;
        }
        let units: BTreeSet<(String, Class)> = self
            .packs
            .nodes()
            .iter()
            .filter(|n| matches!(n.kind, NodeKind::Unit(_)))
            .map(|n| (n.id.clone(), n.class))
            .collect();
        self.rounds = snapshot.rounds;
        self.objects = snapshot
            .objects
            .into_iter()
            .map(|o| (o.key.clone(), o))
            .collect();
        self.states = snapshot
            .states
            .into_iter()
            .map(|s| ((s.monitor, s.object), s.state))
            .collect();
        self.units = snapshot
            .units
            .into_iter()
            .filter(|u| units.contains(&(u.monitor.clone(), u.object.class)))
            .map(|u| ((u.monitor, u.object), u.unit))
            .collect();
        self.alerts = snapshot
            .alerts
            .into_iter()
            .map(|a| ((a.rule.clone(), a.object.clone()), a))
            .collect();
        true
    }

    /// The packs in force.
    #[must_use]
    pub fn packs(&self) -> &PackSet {
        &self.packs
    }

    /// Applies new (already validated) packs without losing history: monitors whose
    /// definition is unchanged keep their sample windows and states; changed ones start
    /// afresh; states of removed monitors and alerts of removed rules change or resolve on
    /// the next [`Self::observe`].
    pub fn set_packs(&mut self, packs: PackSet) {
        let old: BTreeMap<(&str, Class), &NodeKind> = self
            .packs
            .nodes()
            .iter()
            .map(|n| ((n.id.as_str(), n.class), &n.kind))
            .collect();
        let kept: BTreeSet<String> = packs
            .nodes()
            .iter()
            .filter(|n| old.get(&(n.id.as_str(), n.class)) == Some(&&n.kind))
            .map(|n| n.id.clone())
            .collect();
        self.units.retain(|(id, _), _| kept.contains(id));
        self.packs = packs;
    }

    /// What the sources should read for the packs in force.
    #[must_use]
    pub fn wanted(&self) -> Wanted {
        let mut w = Wanted::default();
        for list in self.packs.discoveries.values() {
            for d in list {
                w.services.extend(d.units.iter().cloned());
                w.certificate_paths.extend(d.paths.iter().cloned());
            }
        }
        w.services.sort();
        w.services.dedup();
        w.certificate_paths.sort();
        w.certificate_paths.dedup();
        w
    }

    /// Open alerts, by rule then object.
    #[must_use]
    pub fn open_alerts(&self) -> Vec<Alert> {
        self.alerts.values().cloned().collect()
    }

    /// Records what the gateway delivered last and whether it is in force (its `conflicts`
    /// are ignored: they are the engine's own, see [`Self::pack_status`]).
    pub fn note_delivery(&mut self, delivery: PackStatus) {
        self.delivery = PackStatus {
            conflicts: Vec::new(),
            ..delivery
        };
    }

    /// The last delivery ([`Self::note_delivery`]; before any, the built-in pack applied)
    /// with the override conflicts of the last round, one line each.
    #[must_use]
    pub fn pack_status(&self) -> PackStatus {
        PackStatus {
            conflicts: self.conflicts.iter().map(describe_conflict).collect(),
            ..self.delivery.clone()
        }
    }

    /// Override conflicts found in the last round.
    #[must_use]
    pub fn conflicts(&self) -> &[OverrideConflict] {
        &self.conflicts
    }

    /// Values collect rules picked since the last call (at most [`MAX_COLLECTED`], the
    /// newest). The collector takes them after every round and spools them.
    pub fn take_collected(&mut self) -> Vec<CollectedValue> {
        std::mem::take(&mut self.collected)
    }

    /// How many collected values were dropped because nobody took them in time.
    #[must_use]
    pub fn collected_dropped(&self) -> u64 {
        self.collected_dropped
    }

    /// The rolled-up state per object as of the last round.
    #[must_use]
    pub fn tree(&self) -> HealthTree {
        let objects = self
            .objects
            .values()
            .map(|o| {
                let monitors = self
                    .packs
                    .nodes()
                    .iter()
                    .filter(|n| n.class == o.key.class && n.id != HEALTH)
                    .map(|n| MonitorHealth {
                        id: n.id.clone(),
                        kind: n.kind.kind_name().to_string(),
                        state: self
                            .states
                            .get(&(n.id.clone(), o.key.clone()))
                            .copied()
                            .unwrap_or(HealthState::NotMonitored),
                    })
                    .collect();
                ObjectHealth {
                    object: o.key.clone(),
                    parent: o.parent.clone(),
                    health: self
                        .states
                        .get(&(HEALTH.to_string(), o.key.clone()))
                        .copied()
                        .unwrap_or(HealthState::NotMonitored),
                    monitors,
                }
            })
            .collect();
        HealthTree { objects }
    }

    fn discovered(&self, o: &ObjectSample) -> bool {
        o.key.class == Class::Host
            || self
                .packs
                .discoveries
                .get(&o.key.class)
                .is_some_and(|list| {
                    list.iter()
                        .any(|d| d.selector.matches(&o.key.id, &o.labels))
                })
    }

    /// Parameters of `target` (a monitor or rule id) for `object` after overrides.
    fn effective(
        &self,
        target: &str,
        base: &Params,
        object: &ObjectSample,
        conflicts: &mut Vec<OverrideConflict>,
    ) -> Params {
        let Some(list) = self.packs.overrides.get(target) else {
            return base.clone();
        };
        let mut per_param: BTreeMap<Param, Vec<(OverrideRank, ParamValue)>> = BTreeMap::new();
        for placed in list {
            let o = &placed.item;
            let specificity = match &o.scope {
                Scope::Class(c) if *c == object.key.class => Specificity::Class,
                Scope::Group(g)
                    if self.packs.groups.get(g).is_some_and(|group| {
                        group.class == object.key.class
                            && group.selector.matches(&object.key.id, &object.labels)
                    }) =>
                {
                    Specificity::Group
                }
                Scope::Instance(i) if *i == object.key.id => Specificity::Instance,
                _ => continue,
            };
            let rank =
                OverrideRank::new(specificity, o.enforced, !placed.sealed, &placed.pack, &o.id);
            for s in &o.set {
                per_param
                    .entry(s.param)
                    .or_default()
                    .push((rank.clone(), s.value));
            }
        }
        let mut params = base.clone();
        for (param, candidates) in per_param {
            if let Some(res) = resolve(&candidates) {
                params.set(param, res.value);
                conflicts.extend(conflict(target, &object.key, param, &res));
            }
        }
        params
    }

    /// Judges one round of samples taken at `now_ms` and returns what changed: state
    /// changes, objects gone, alerts raised, escalated and resolved, and a new conflict
    /// report when the override conflicts changed. A round equal to the previous one
    /// returns nothing.
    pub fn observe(&mut self, samples: &Samples, now_ms: i64) -> Vec<HealthEvent> {
        let mut events = Vec::new();

        // Discovery.
        let host = samples.host_key();
        let mut current: BTreeMap<ObjectKey, ObjectSample> = BTreeMap::new();
        for o in &samples.objects {
            if !self.discovered(o) || current.contains_key(&o.key) {
                continue;
            }
            let mut o = o.clone();
            if o.parent.is_none() && o.key.class != Class::Host {
                o.parent.clone_from(&host);
            }
            current.insert(o.key.clone(), o);
        }
        let gone: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for key in &gone {
            let keys: Vec<_> = self
                .alerts
                .keys()
                .filter(|(_, o)| o == key)
                .cloned()
                .collect();
            for k in keys {
                if let Some(alert) = self.alerts.remove(&k) {
                    events.push(HealthEvent::AlertResolved {
                        alert,
                        reason: ResolveReason::ObjectGone,
                        at_ms: now_ms,
                    });
                }
            }
            self.units.retain(|(_, o), _| o != key);
            self.states.retain(|(_, o), _| o != key);
            events.push(HealthEvent::ObjectRemoved {
                object: key.clone(),
                at_ms: now_ms,
            });
        }
        self.objects = current;

        let mut by_class: BTreeMap<Class, Vec<ObjectKey>> = BTreeMap::new();
        let mut children: BTreeMap<ObjectKey, Vec<ObjectKey>> = BTreeMap::new();
        for (key, o) in &self.objects {
            by_class.entry(key.class).or_default().push(key.clone());
            if let Some(parent) = &o.parent {
                children
                    .entry(parent.clone())
                    .or_default()
                    .push(key.clone());
            }
        }

        // Evaluation, in graph order.
        let mut conflicts = Vec::new();
        let mut now_states: BTreeMap<(String, ObjectKey), HealthState> = BTreeMap::new();
        let nodes = self.packs.nodes().to_vec();
        for node in &nodes {
            for key in by_class.get(&node.class).into_iter().flatten() {
                let object = &self.objects[key];
                let state = match &node.kind {
                    NodeKind::Unit(m) => {
                        let params = self.effective(&node.id, &m.params, object, &mut conflicts);
                        let unit = self
                            .units
                            .entry((node.id.clone(), key.clone()))
                            .or_default();
                        if !params.enabled {
                            unit.reset(HealthState::NotMonitored);
                        } else {
                            if unit.state == HealthState::NotMonitored {
                                unit.reset(HealthState::Unknown);
                            }
                            match unit.read(m, &params, object, now_ms) {
                                Reading::Level(level) => {
                                    unit.push(level, params.samples);
                                }
                                Reading::Missing => unit.reset(HealthState::Unknown),
                                Reading::Pending => {}
                            }
                        }
                        unit.state
                    }
                    NodeKind::Aggregate(a) => {
                        let params = self.effective(&node.id, &a.params, object, &mut conflicts);
                        if params.enabled {
                            let members: Vec<HealthState> = a
                                .members
                                .iter()
                                .map(|m| state_of(&now_states, m, key))
                                .collect();
                            a.algorithm.apply(&members, params.percentage)
                        } else {
                            HealthState::NotMonitored
                        }
                    }
                    NodeKind::Dependency(d) => {
                        let params = self.effective(&node.id, &d.params, object, &mut conflicts);
                        if params.enabled {
                            let child_monitor = d.monitor.as_deref().unwrap_or(HEALTH);
                            let members: Vec<HealthState> = children
                                .get(key)
                                .into_iter()
                                .flatten()
                                .filter(|c| c.class == d.on)
                                .map(|c| state_of(&now_states, child_monitor, c))
                                .collect();
                            d.algorithm.apply(&members, params.percentage)
                        } else {
                            HealthState::NotMonitored
                        }
                    }
                    NodeKind::Health(roots) => {
                        let members: Vec<HealthState> = roots
                            .iter()
                            .map(|m| state_of(&now_states, m, key))
                            .collect();
                        worst_of(&members)
                    }
                };
                now_states.insert((node.id.clone(), key.clone()), state);
            }
        }

        // State changes, by object then monitor.
        let mut changes: Vec<(&ObjectKey, &String, Option<HealthState>, HealthState)> = now_states
            .iter()
            .filter_map(|((id, key), state)| {
                let before = self.states.get(&(id.clone(), key.clone())).copied();
                (before != Some(*state)).then_some((key, id, before, *state))
            })
            .collect();
        // Monitors that no longer exist (new packs) on objects that still do.
        for ((id, key), state) in &self.states {
            if !now_states.contains_key(&(id.clone(), key.clone()))
                && *state != HealthState::NotMonitored
            {
                changes.push((key, id, Some(*state), HealthState::NotMonitored));
            }
        }
        changes.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (key, id, from, to) in changes {
            events.push(HealthEvent::StateChanged {
                object: key.clone(),
                monitor: id.clone(),
                from,
                to,
                at_ms: now_ms,
            });
        }
        self.states = now_states;
        self.units
            .retain(|(id, key), _| self.states.contains_key(&(id.clone(), key.clone())));

        self.judge_alerts(&by_class, now_ms, &mut conflicts, &mut events);
        self.collect(&by_class, now_ms, &mut conflicts);

        conflicts.sort_by(|a, b| {
            (&a.target, &a.object, &a.param).cmp(&(&b.target, &b.object, &b.param))
        });
        conflicts.dedup();
        if conflicts != self.conflicts {
            events.push(HealthEvent::OverrideConflicts {
                conflicts: conflicts.clone(),
            });
            self.conflicts = conflicts;
        }
        self.rounds += 1;
        events
    }

    fn judge_alerts(
        &mut self,
        by_class: &BTreeMap<Class, Vec<ObjectKey>>,
        now_ms: i64,
        conflicts: &mut Vec<OverrideConflict>,
        events: &mut Vec<HealthEvent>,
    ) {
        let monitor_class: BTreeMap<&str, Class> = self
            .packs
            .nodes()
            .iter()
            .map(|n| (n.id.as_str(), n.class))
            .collect();
        let mut decisions: Vec<(String, ObjectKey, Decision)> = Vec::new();
        for (rule_id, rule) in &self.packs.rules {
            let RuleKind::Alert { monitor, message } = &rule.kind else {
                continue;
            };
            let Some(class) = monitor_class.get(monitor.as_str()) else {
                continue;
            };
            for key in by_class.get(class).into_iter().flatten() {
                let object = &self.objects[key];
                let params = self.effective(rule_id, &rule.params, object, conflicts);
                let state = state_of(&self.states, monitor, key);
                let open = self.alerts.get(&(rule_id.clone(), key.clone()));
                let decision = if !params.enabled {
                    open.map(|_| Decision::Resolve(ResolveReason::RuleDisabled))
                } else {
                    match state {
                        HealthState::Healthy => {
                            open.map(|_| Decision::Resolve(ResolveReason::Healthy))
                        }
                        HealthState::NotMonitored => {
                            open.map(|_| Decision::Resolve(ResolveReason::NotMonitored))
                        }
                        HealthState::Unknown => None,
                        HealthState::Warning | HealthState::Critical => match open {
                            None if state >= params.severity => Some(Decision::Raise(Alert {
                                rule: rule_id.clone(),
                                monitor: monitor.clone(),
                                object: key.clone(),
                                severity: state,
                                message: fill(message, rule_id, monitor, key, state),
                                raised_at_ms: now_ms,
                            })),
                            Some(a) if state > a.severity => Some(Decision::Escalate(state)),
                            _ => None,
                        },
                    }
                };
                if let Some(d) = decision {
                    decisions.push((rule_id.clone(), key.clone(), d));
                }
            }
        }
        for (rule_id, object) in self.alerts.keys() {
            let still_alert_rule = self
                .packs
                .rules
                .get(rule_id)
                .is_some_and(|r| matches!(r.kind, RuleKind::Alert { .. }));
            if !still_alert_rule {
                decisions.push((
                    rule_id.clone(),
                    object.clone(),
                    Decision::Resolve(ResolveReason::RuleRemoved),
                ));
            }
        }
        for (rule, object, decision) in decisions {
            let k = (rule, object);
            match decision {
                Decision::Raise(alert) => {
                    self.alerts.insert(k, alert.clone());
                    events.push(HealthEvent::AlertRaised { alert });
                }
                Decision::Escalate(severity) => {
                    if let Some(a) = self.alerts.get_mut(&k) {
                        a.severity = severity;
                        events.push(HealthEvent::AlertEscalated { alert: a.clone() });
                    }
                }
                Decision::Resolve(reason) => {
                    if let Some(alert) = self.alerts.remove(&k) {
                        events.push(HealthEvent::AlertResolved {
                            alert,
                            reason,
                            at_ms: now_ms,
                        });
                    }
                }
            }
        }
    }

    fn collect(
        &mut self,
        by_class: &BTreeMap<Class, Vec<ObjectKey>>,
        now_ms: i64,
        conflicts: &mut Vec<OverrideConflict>,
    ) {
        let mut out = Vec::new();
        for (rule_id, rule) in &self.packs.rules {
            let RuleKind::Collect { class, metrics } = &rule.kind else {
                continue;
            };
            for key in by_class.get(class).into_iter().flatten() {
                let object = &self.objects[key];
                let params = self.effective(rule_id, &rule.params, object, conflicts);
                let due = self.rounds.checked_rem(u64::from(params.every.max(1))) == Some(0);
                if !params.enabled || !due {
                    continue;
                }
                for metric in metrics {
                    if let Some(&value) = object.values.get(metric) {
                        out.push(CollectedValue {
                            rule: rule_id.clone(),
                            object: key.clone(),
                            metric: metric.clone(),
                            value,
                            at_ms: now_ms,
                        });
                    }
                }
            }
        }
        self.collected.extend(out);
        if self.collected.len() > MAX_COLLECTED {
            let excess = self.collected.len() - MAX_COLLECTED;
            self.collected.drain(..excess);
            self.collected_dropped = self
                .collected_dropped
                .saturating_add(u64::try_from(excess).unwrap_or(u64::MAX));
        }
    }
}

enum Decision {
    Raise(Alert),
    Escalate(HealthState),
    Resolve(ResolveReason),
}

fn state_of(
    states: &BTreeMap<(String, ObjectKey), HealthState>,
    monitor: &str,
    key: &ObjectKey,
) -> HealthState {
    states
        .get(&(monitor.to_string(), key.clone()))
        .copied()
        .unwrap_or(HealthState::NotMonitored)
}

fn fill(
    template: &str,
    rule: &str,
    monitor: &str,
    object: &ObjectKey,
    state: HealthState,
) -> String {
    template
        .replace("{object}", &object.to_string())
        .replace("{id}", &object.id)
        .replace("{class}", object.class.as_str())
        .replace("{monitor}", monitor)
        .replace("{state}", state.as_str())
        .replace("{rule}", rule)
}
