//! A set of packs that works together: references resolved across packs, rollups
//! checked for cycles, and the evaluation order fixed.
//!
//! The health of every object is a graph of *nodes*: unit monitors (leaves), aggregate
//! rollups (over monitors of the same object), dependency rollups (over a monitor — or the
//! overall health — of the objects that belong to this one), and one `health` node per
//! class (WorstOf over that class's *root* monitors, those no aggregate includes). Edges
//! point from a rollup to what it rolls up. [`PackSet::new`] rejects a cycle anywhere in
//! this graph (an aggregate including itself through others, or classes depending on each
//! other through dependency rollups), and orders the nodes so that every node comes after
//! everything it reads.

use std::collections::{BTreeMap, BTreeSet};

use super::model::{
    Aggregate, Dependency, Discovery, Group, Override, Pack, Param, Rule, RuleKind, Scope, Target,
    UnitMonitor,
};
use super::pack::{PackError, PackErrors};
use super::samples::Class;
use super::state::Algorithm;

/// The id of the per-class overall health node.
pub const HEALTH: &str = "health";

/// What a node computes.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// A unit monitor.
    Unit(UnitMonitor),
    /// An aggregate rollup.
    Aggregate(Aggregate),
    /// A dependency rollup.
    Dependency(Dependency),
    /// The overall health of an object: WorstOf over these root monitors.
    Health(Vec<String>),
}

impl NodeKind {
    /// `unit`, `aggregate`, `dependency` or `health`.
    #[must_use]
    pub fn kind_name(&self) -> &'static str {
        match self {
            Self::Unit(_) => "unit",
            Self::Aggregate(_) => "aggregate",
            Self::Dependency(_) => "dependency",
            Self::Health(_) => "health",
        }
    }
}

/// One node of the health graph.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Monitor id, or [`HEALTH`].
    pub id: String,
    /// The class of the objects it judges.
    pub class: Class,
    /// What it computes.
    pub kind: NodeKind,
}

/// An override with the pack facts its precedence needs.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedOverride {
    /// The override.
    pub item: Override,
    /// Its pack's name.
    pub pack: String,
    /// Its pack is sealed.
    pub sealed: bool,
}

/// Validated packs, compiled for evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct PackSet {
    packs: Vec<Pack>,
    /// Nodes in evaluation order.
    pub(crate) nodes: Vec<Node>,
    /// Rules by id.
    pub(crate) rules: BTreeMap<String, Rule>,
    /// Groups by id.
    pub(crate) groups: BTreeMap<String, Group>,
    /// Discoveries, by class.
    pub(crate) discoveries: BTreeMap<Class, Vec<Discovery>>,
    /// Overrides by target id (monitor and rule ids are checked not to collide).
    pub(crate) overrides: BTreeMap<String, Vec<PlacedOverride>>,
}

struct Sink<'a> {
    errors: &'a mut Vec<PackError>,
}

impl Sink<'_> {
    fn push(&mut self, pack: &Pack, line: usize, reason: impl Into<String>) {
        self.errors.push(PackError {
            file: pack.file.clone(),
            line,
            reason: reason.into(),
        });
    }
}

/// Where a monitor id is defined.
#[derive(Clone)]
struct Def<'a> {
    class: Class,
    pack: &'a Pack,
    line: usize,
    kind: DefKind<'a>,
}

#[derive(Clone)]
enum DefKind<'a> {
    Unit(&'a UnitMonitor),
    Aggregate(&'a Aggregate),
    Dependency(&'a Dependency),
}

impl PackSet {
    /// Checks a set of packs together and compiles it.
    ///
    /// # Errors
    ///
    /// Every problem found — duplicate pack names or ids across packs, references to
    /// unknown monitors, rules or groups, class mismatches, parameters an override cannot
    /// set on its target, cycles in rollups — each with the file and line of the item at
    /// fault.
    pub fn new(mut packs: Vec<Pack>) -> Result<Self, PackErrors> {
        packs.sort_by(|a, b| a.name.cmp(&b.name));
        let mut errors = Vec::new();
        let mut sink = Sink {
            errors: &mut errors,
        };

        for pair in packs.windows(2) {
            if pair[0].name == pair[1].name {
                sink.push(
                    &pair[1],
                    1,
                    format!(
                        "pack name {:?} is already used by {}",
                        pair[1].name, pair[0].file
                    ),
                );
            }
        }

        // Monitor ids (units, aggregates, dependencies) share one namespace across packs.
        let mut defs: BTreeMap<&str, Def<'_>> = BTreeMap::new();
        let mut rules: BTreeMap<&str, (&Pack, &Rule)> = BTreeMap::new();
        let mut groups: BTreeMap<&str, (&Pack, &Group)> = BTreeMap::new();
        for pack in &packs {
            for m in &pack.monitors {
                insert_def(
                    &mut defs,
                    &mut sink,
                    &m.id,
                    Def {
                        class: m.class,
                        pack,
                        line: m.line,
                        kind: DefKind::Unit(m),
                    },
                );
            }
            for a in &pack.aggregates {
                insert_def(
                    &mut defs,
                    &mut sink,
                    &a.id,
                    Def {
                        class: a.class,
                        pack,
                        line: a.line,
                        kind: DefKind::Aggregate(a),
                    },
                );
            }
            for d in &pack.dependencies {
                insert_def(
                    &mut defs,
                    &mut sink,
                    &d.id,
                    Def {
                        class: d.class,
                        pack,
                        line: d.line,
                        kind: DefKind::Dependency(d),
                    },
                );
            }
            for r in &pack.rules {
                if let Some((p, prev)) = rules.get(r.id.as_str()) {
                    sink.push(
                        pack,
                        r.line,
                        format!(
                            "rule id {:?} is already defined at {}:{}",
                            r.id, p.file, prev.line
                        ),
                    );
                } else {
                    rules.insert(&r.id, (pack, r));
                }
            }
            for g in &pack.groups {
                if let Some((p, prev)) = groups.get(g.id.as_str()) {
                    sink.push(
                        pack,
                        g.line,
                        format!(
                            "group id {:?} is already defined at {}:{}",
                            g.id, p.file, prev.line
                        ),
                    );
                } else {
                    groups.insert(&g.id, (pack, g));
                }
            }
        }
        for (id, (pack, rule)) in &rules {
            if defs.contains_key(id) {
                sink.push(
                    pack,
                    rule.line,
                    format!(
                        "rule id {id:?} is also a monitor id; overrides could not tell them apart"
                    ),
                );
            }
        }

        // References.
        for pack in &packs {
            for a in &pack.aggregates {
                for member in &a.members {
                    match defs.get(member.as_str()) {
                        None => sink.push(
                            pack,
                            a.line,
                            format!("aggregate {:?} includes unknown monitor {member:?}", a.id),
                        ),
                        Some(def) if def.class != a.class => sink.push(
                            pack,
                            a.line,
                            format!(
                                "aggregate {:?} (class {}) includes {member:?} of class {}; aggregates roll up monitors of the same object",
                                a.id, a.class, def.class
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
            for d in &pack.dependencies {
                if let Some(m) = &d.monitor {
                    match defs.get(m.as_str()) {
                        None => sink.push(
                            pack,
                            d.line,
                            format!("dependency {:?} names unknown monitor {m:?}", d.id),
                        ),
                        Some(def) if def.class != d.on => sink.push(
                            pack,
                            d.line,
                            format!(
                                "dependency {:?} is on class {} but monitor {m:?} is of class {}",
                                d.id, d.on, def.class
                            ),
                        ),
                        Some(_) => {}
                    }
                }
            }
            for r in &pack.rules {
                if let RuleKind::Alert { monitor, .. } = &r.kind {
                    if !defs.contains_key(monitor.as_str()) {
                        sink.push(
                            pack,
                            r.line,
                            format!("alert rule {:?} names unknown monitor {monitor:?}", r.id),
                        );
                    }
                }
            }
            for o in &pack.overrides {
                check_override(&mut sink, pack, o, &defs, &rules, &groups);
            }
        }

        // Graph: nodes, roots per class, cycles, order.
        let mut members_of_aggregates: BTreeSet<&str> = BTreeSet::new();
        for def in defs.values() {
            if let DefKind::Aggregate(a) = def.kind {
                for m in &a.members {
                    members_of_aggregates.insert(m.as_str());
                }
            }
        }
        let mut roots: BTreeMap<Class, Vec<String>> = BTreeMap::new();
        for (id, def) in &defs {
            if !members_of_aggregates.contains(id) {
                roots.entry(def.class).or_default().push((*id).to_string());
            }
        }

        let order = order_nodes(&defs, &roots, &mut sink);

        if !errors.is_empty() {
            errors.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
            errors.dedup();
            return Err(PackErrors(errors));
        }

        let nodes = order
            .into_iter()
            .map(|key| match key {
                NodeKey::Health(class) => Node {
                    id: HEALTH.to_string(),
                    class,
                    kind: NodeKind::Health(roots.get(&class).cloned().unwrap_or_default()),
                },
                NodeKey::Monitor(id) => {
                    let def = &defs[id.as_str()];
                    Node {
                        id: id.clone(),
                        class: def.class,
                        kind: match def.kind {
                            DefKind::Unit(u) => NodeKind::Unit(u.clone()),
                            DefKind::Aggregate(a) => NodeKind::Aggregate(a.clone()),
                            DefKind::Dependency(d) => NodeKind::Dependency(d.clone()),
                        },
                    }
                }
            })
            .collect();
        let rules = rules
            .into_iter()
            .map(|(id, (_, r))| (id.to_string(), r.clone()))
            .collect();
        let groups = groups
            .into_iter()
            .map(|(id, (_, g))| (id.to_string(), g.clone()))
            .collect();
        let mut discoveries: BTreeMap<Class, Vec<Discovery>> = BTreeMap::new();
        let mut overrides: BTreeMap<String, Vec<PlacedOverride>> = BTreeMap::new();
        for pack in &packs {
            for d in &pack.discoveries {
                discoveries.entry(d.class).or_default().push(d.clone());
            }
            for o in &pack.overrides {
                overrides
                    .entry(o.target.id().to_string())
                    .or_default()
                    .push(PlacedOverride {
                        item: o.clone(),
                        pack: pack.name.clone(),
                        sealed: pack.sealed,
                    });
            }
        }
        Ok(Self {
            packs,
            nodes,
            rules,
            groups,
            discoveries,
            overrides,
        })
    }

    /// The packs, sorted by name.
    #[must_use]
    pub fn packs(&self) -> &[Pack] {
        &self.packs
    }

    /// The health graph in evaluation order.
    #[must_use]
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
}

fn insert_def<'a>(
    defs: &mut BTreeMap<&'a str, Def<'a>>,
    sink: &mut Sink<'_>,
    id: &'a str,
    def: Def<'a>,
) {
    if let Some(prev) = defs.get(id) {
        sink.push(
            def.pack,
            def.line,
            format!(
                "monitor id {id:?} is already defined at {}:{}",
                prev.pack.file, prev.line
            ),
        );
    } else {
        defs.insert(id, def);
    }
}

fn check_override(
    sink: &mut Sink<'_>,
    pack: &Pack,
    o: &Override,
    defs: &BTreeMap<&str, Def<'_>>,
    rules: &BTreeMap<&str, (&Pack, &Rule)>,
    groups: &BTreeMap<&str, (&Pack, &Group)>,
) {
    // What the target is: its class, and the parameters it has.
    let (class, allowed): (Option<Class>, Vec<Param>) = match &o.target {
        Target::Monitor(id) => match defs.get(id.as_str()) {
            None => {
                sink.push(
                    pack,
                    o.line,
                    format!("override {:?} names unknown monitor {id:?}", o.id),
                );
                return;
            }
            Some(def) => (
                Some(def.class),
                match def.kind {
                    DefKind::Unit(u) if u.kind.has_levels() => vec![
                        Param::Enabled,
                        Param::Samples,
                        Param::Warning,
                        Param::Critical,
                    ],
                    DefKind::Unit(_) => vec![Param::Enabled, Param::Samples],
                    DefKind::Aggregate(_) => vec![Param::Enabled],
                    DefKind::Dependency(d) if d.algorithm == Algorithm::WorstOfPercentage => {
                        vec![Param::Enabled, Param::Percentage]
                    }
                    DefKind::Dependency(_) => vec![Param::Enabled],
                },
            ),
        },
        Target::Rule(id) => match rules.get(id.as_str()) {
            None => {
                sink.push(
                    pack,
                    o.line,
                    format!("override {:?} names unknown rule {id:?}", o.id),
                );
                return;
            }
            Some((_, rule)) => match &rule.kind {
                RuleKind::Alert { monitor, .. } => (
                    defs.get(monitor.as_str()).map(|d| d.class),
                    vec![Param::Enabled, Param::Severity],
                ),
                RuleKind::Collect { class, .. } => {
                    (Some(*class), vec![Param::Enabled, Param::Every])
                }
            },
        },
    };
    match &o.scope {
        Scope::Class(c) => {
            if class.is_some_and(|tc| tc != *c) {
                sink.push(
                    pack,
                    o.line,
                    format!(
                        "override {:?} is for class {c} but {:?} judges class {}",
                        o.id,
                        o.target.id(),
                        class.map_or("?", Class::as_str)
                    ),
                );
            }
        }
        Scope::Group(g) => match groups.get(g.as_str()) {
            None => sink.push(
                pack,
                o.line,
                format!("override {:?} names unknown group {g:?}", o.id),
            ),
            Some((_, group)) if class.is_some_and(|tc| tc != group.class) => sink.push(
                pack,
                o.line,
                format!(
                    "override {:?}: group {g:?} holds class {} but {:?} judges class {}",
                    o.id,
                    group.class,
                    o.target.id(),
                    class.map_or("?", Class::as_str)
                ),
            ),
            Some(_) => {}
        },
        Scope::Instance(_) => {}
    }
    for s in &o.set {
        if !allowed.contains(&s.param) {
            let names: Vec<_> = allowed.iter().map(|p| p.as_str()).collect();
            sink.push(
                pack,
                s.line,
                format!(
                    "override {:?}: {:?} has no parameter `{}` (it has {})",
                    o.id,
                    o.target.id(),
                    s.param,
                    names.join(", ")
                ),
            );
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum NodeKey {
    Monitor(String),
    Health(Class),
}

impl NodeKey {
    fn label(&self) -> String {
        match self {
            Self::Monitor(id) => id.clone(),
            Self::Health(c) => format!("health({c})"),
        }
    }
}

/// Depth-first post-order over the graph; reports each cycle once with the file and line
/// of the first rollup on it.
fn order_nodes(
    defs: &BTreeMap<&str, Def<'_>>,
    roots: &BTreeMap<Class, Vec<String>>,
    sink: &mut Sink<'_>,
) -> Vec<NodeKey> {
    let edges = |key: &NodeKey| -> Vec<NodeKey> {
        match key {
            NodeKey::Health(c) => roots
                .get(c)
                .map(|ids| ids.iter().cloned().map(NodeKey::Monitor).collect())
                .unwrap_or_default(),
            NodeKey::Monitor(id) => match defs.get(id.as_str()).map(|d| &d.kind) {
                Some(DefKind::Aggregate(a)) => a
                    .members
                    .iter()
                    .filter(|m| defs.contains_key(m.as_str()))
                    .cloned()
                    .map(NodeKey::Monitor)
                    .collect(),
                Some(DefKind::Dependency(d)) => match &d.monitor {
                    Some(m) if defs.contains_key(m.as_str()) => vec![NodeKey::Monitor(m.clone())],
                    Some(_) => vec![],
                    None => vec![NodeKey::Health(d.on)],
                },
                _ => vec![],
            },
        }
    };

    let mut all: Vec<NodeKey> = defs
        .keys()
        .map(|id| NodeKey::Monitor((*id).to_string()))
        .collect();
    all.extend(Class::ALL.into_iter().map(NodeKey::Health));

    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    let mut marks: BTreeMap<NodeKey, Mark> = BTreeMap::new();
    let mut order = Vec::new();
    let mut reported: BTreeSet<Vec<NodeKey>> = BTreeSet::new();

    for start in all {
        if marks.contains_key(&start) {
            continue;
        }
        // Iterative DFS: (node, its edges, next edge index).
        let mut stack: Vec<(NodeKey, Vec<NodeKey>, usize)> = Vec::new();
        marks.insert(start.clone(), Mark::Active);
        let first_edges = edges(&start);
        stack.push((start, first_edges, 0));
        while let Some((node, node_edges, next)) = stack.last_mut() {
            if *next < node_edges.len() {
                let to = node_edges[*next].clone();
                *next += 1;
                match marks.get(&to) {
                    None => {
                        marks.insert(to.clone(), Mark::Active);
                        let e = edges(&to);
                        stack.push((to, e, 0));
                    }
                    Some(Mark::Active) => {
                        let pos = stack.iter().position(|(n, _, _)| *n == to).unwrap_or(0);
                        let cycle: Vec<NodeKey> =
                            stack[pos..].iter().map(|(n, _, _)| n.clone()).collect();
                        let mut canonical = cycle.clone();
                        canonical.sort();
                        if reported.insert(canonical) {
                            report_cycle(defs, &cycle, sink);
                        }
                    }
                    Some(Mark::Done) => {}
                }
            } else {
                let done = node.clone();
                marks.insert(done.clone(), Mark::Done);
                order.push(done);
                stack.pop();
            }
        }
    }
    order
}

fn report_cycle(defs: &BTreeMap<&str, Def<'_>>, cycle: &[NodeKey], sink: &mut Sink<'_>) {
    let mut path: Vec<String> = cycle.iter().map(NodeKey::label).collect();
    path.push(cycle[0].label());
    // Blame a rollup on the cycle that can be edited: local packs before sealed ones,
    // then the first in file and line order.
    let at = cycle
        .iter()
        .filter_map(|k| match k {
            NodeKey::Monitor(id) => defs.get(id.as_str()),
            NodeKey::Health(_) => None,
        })
        .min_by(|a, b| {
            (a.pack.sealed, &a.pack.file, a.line).cmp(&(b.pack.sealed, &b.pack.file, b.line))
        });
    if let Some(def) = at {
        sink.push(
            def.pack,
            def.line,
            format!("cycle in rollups: {}", path.join(" -> ")),
        );
    }
}
