//! Pack files: the TOML format (see `docs/packs.md`), parsed and checked one file at a time.
//!
//! Parsing has two layers, as elsewhere in Outpost: serde reads the TOML into raw structs
//! that keep byte spans (`toml::Spanned`), then [`parse_pack`] checks every item and builds
//! the typed model ([`super::model`]), turning spans into line numbers. Everything that can
//! be judged from the file alone is checked here (syntax, unknown or missing keys, unknown
//! classes, monitor types, metric names, parameter types such as a threshold that is not a
//! number, duplicate ids); references between items, which may cross packs, are checked by
//! [`super::PackSet::new`]. Every error names the file, the line and the reason.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::model::{
    Aggregate, Dependency, Direction, Discovery, Group, Override, Pack, Param, Params, Rule,
    RuleKind, Scope, Selector, Setting, Target, UnitKind, UnitMonitor, MONITOR_TYPES,
};
use super::samples::{label_names, metric_names, Class};
use super::state::{Algorithm, HealthState};

/// One problem in a pack: `FILE:LINE: REASON`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackError {
    /// The pack file (or the name it was given).
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.reason)
    }
}

/// Every problem found in a pack (or a set of packs), in file and line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackErrors(pub Vec<PackError>);

impl fmt::Display for PackErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PackErrors {}

/// Why [`super::load_pack`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The file could not be read.
    #[error("failed to read pack {}: {source}", path.display())]
    Read {
        /// The pack file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The pack is invalid; it must not be applied.
    #[error("invalid pack:\n{0}")]
    Invalid(PackErrors),
}

// ---- raw TOML ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPack {
    pack: Spanned<RawHeader>,
    #[serde(default)]
    discovery: Vec<Spanned<RawSelecting>>,
    #[serde(default)]
    group: Vec<Spanned<RawSelecting>>,
    #[serde(default)]
    monitor: Vec<Spanned<RawMonitor>>,
    #[serde(default)]
    aggregate: Vec<Spanned<RawAggregate>>,
    #[serde(default)]
    dependency: Vec<Spanned<RawDependency>>,
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
    #[serde(default, rename = "override")]
    overrides: Vec<Spanned<RawOverride>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: Spanned<String>,
    #[serde(default)]
    version: String,
    #[serde(default)]
    sealed: bool,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// `[[discovery]]` and `[[group]]` share their shape (groups reject `units`/`paths`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelecting {
    id: Option<Spanned<String>>,
    class: Option<Spanned<String>>,
    #[serde(default)]
    include: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default, rename = "where")]
    where_: BTreeMap<String, Spanned<OneOrMany>>,
    #[serde(default)]
    units: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    paths: Option<Spanned<Vec<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMonitor {
    id: Option<Spanned<String>>,
    class: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    metric: Option<Spanned<String>>,
    direction: Option<Spanned<String>>,
    rate: Option<Spanned<bool>>,
    warning: Option<Spanned<toml::Value>>,
    critical: Option<Spanned<toml::Value>>,
    samples: Option<Spanned<toml::Value>>,
    enabled: Option<Spanned<toml::Value>>,
    states: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    default: Option<Spanned<String>>,
    #[serde(default)]
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAggregate {
    id: Option<Spanned<String>>,
    class: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
    members: Option<Spanned<Vec<Spanned<String>>>>,
    enabled: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDependency {
    id: Option<Spanned<String>>,
    class: Option<Spanned<String>>,
    on: Option<Spanned<String>>,
    monitor: Option<Spanned<String>>,
    algorithm: Option<Spanned<String>>,
    percentage: Option<Spanned<toml::Value>>,
    enabled: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Option<Spanned<String>>,
    #[serde(rename = "type")]
    kind: Option<Spanned<String>>,
    monitor: Option<Spanned<String>>,
    severity: Option<Spanned<toml::Value>>,
    message: Option<String>,
    class: Option<Spanned<String>>,
    metrics: Option<Spanned<Vec<Spanned<String>>>>,
    every: Option<Spanned<toml::Value>>,
    enabled: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOverride {
    id: Option<Spanned<String>>,
    monitor: Option<Spanned<String>>,
    rule: Option<Spanned<String>>,
    class: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    instance: Option<Spanned<String>>,
    #[serde(default)]
    enforced: bool,
    set: Option<Spanned<BTreeMap<String, Spanned<toml::Value>>>>,
}

// ---- checking ----

/// 1-based line of a byte offset.
#[must_use]
pub fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    errors: Vec<PackError>,
}

impl Checker<'_> {
    fn err(&mut self, span: Range<usize>, reason: impl Into<String>) {
        self.errors.push(PackError {
            file: self.file.to_string(),
            line: line_of(self.text, span.start),
            reason: reason.into(),
        });
    }

    /// A key every item of a table needs; reports it missing at the item's line.
    fn required<'r, T>(
        &mut self,
        item: &Range<usize>,
        field: &'r Option<Spanned<T>>,
        key: &str,
        table: &str,
    ) -> Option<&'r Spanned<T>> {
        if field.is_none() {
            self.err(item.clone(), format!("[[{table}]] is missing key `{key}`"));
        }
        field.as_ref()
    }

    fn line(&self, span: &Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    fn id(&mut self, id: &Spanned<String>, what: &str, seen: &mut BTreeSet<String>) -> String {
        let value = id.get_ref();
        if let Some(reason) = id_problem(value) {
            self.err(id.span(), format!("{what} id {value:?}: {reason}"));
        } else if !seen.insert(value.clone()) {
            self.err(id.span(), format!("duplicate {what} id {value:?}"));
        }
        value.clone()
    }

    fn class(&mut self, class: &Spanned<String>) -> Option<Class> {
        let c = Class::parse(class.get_ref());
        if c.is_none() {
            self.err(
                class.span(),
                format!(
                    "unknown class {:?} (expected one of {})",
                    class.get_ref(),
                    Class::ALL.map(Class::as_str).join(", ")
                ),
            );
        }
        c
    }

    fn param(&mut self, param: Param, value: Option<&Spanned<toml::Value>>, params: &mut Params) {
        if let Some(v) = value {
            match param.read(v.get_ref()) {
                Ok(pv) => params.set(param, pv),
                Err(reason) => self.err(v.span(), reason),
            }
        }
    }

    fn not_for<T>(&mut self, field: &Option<Spanned<T>>, key: &str, what: &str) {
        if let Some(f) = field {
            self.err(f.span(), format!("key `{key}` does not apply to {what}"));
        }
    }

    fn algorithm(&mut self, a: &Spanned<String>, allowed: &[Algorithm]) -> Option<Algorithm> {
        let found = allowed.iter().copied().find(|x| x.as_str() == a.get_ref());
        if found.is_none() {
            let names: Vec<_> = allowed.iter().map(|x| x.as_str()).collect();
            self.err(
                a.span(),
                format!(
                    "unknown algorithm {:?} (expected one of {})",
                    a.get_ref(),
                    names.join(", ")
                ),
            );
        }
        found
    }

    fn metric(&mut self, class: Class, metric: &Spanned<String>) {
        if !metric_names(class).contains(&metric.get_ref().as_str()) {
            self.err(
                metric.span(),
                format!(
                    "class {class} has no metric {:?} (known: {})",
                    metric.get_ref(),
                    metric_names(class).join(", ")
                ),
            );
        }
    }
}

/// Why an id is unusable, if it is.
fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("must not be empty")
    } else if id == "health" {
        Some("`health` is reserved for an object's overall health")
    } else if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':'))
    {
        Some("may hold only letters, digits, `.`, `_`, `-` and `:`")
    } else {
        None
    }
}

const VM_STATES: &[&str] = &["running", "paused", "shutdown", "crashed", "unknown"];
const SERVICE_STATES: &[&str] = &[
    "active",
    "reloading",
    "refreshing",
    "inactive",
    "failed",
    "activating",
    "deactivating",
    "maintenance",
];

fn default_states(kind: &str) -> (BTreeMap<String, HealthState>, HealthState) {
    use HealthState::{Critical, Healthy, Unknown, Warning};
    let pairs: &[(&str, HealthState)] = if kind == "vm_state" {
        &[
            ("running", Healthy),
            ("paused", Warning),
            ("shutdown", Critical),
            ("crashed", Critical),
            ("unknown", Unknown),
        ]
    } else {
        &[
            ("active", Healthy),
            ("reloading", Healthy),
            ("refreshing", Healthy),
            ("activating", Warning),
            ("deactivating", Warning),
            ("maintenance", Warning),
            ("inactive", Critical),
            ("failed", Critical),
        ]
    };
    (
        pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect(),
        Unknown,
    )
}

/// Parses one pack and checks everything that can be judged from the file alone. `file`
/// names the pack in errors.
///
/// # Errors
///
/// Every problem found, each with file, line and reason.
pub fn parse_pack(file: &str, text: &str) -> Result<Pack, PackErrors> {
    let raw: RawPack = toml::from_str(text).map_err(|e| {
        PackErrors(vec![PackError {
            file: file.to_string(),
            line: e.span().map_or(1, |s| line_of(text, s.start)),
            reason: e.message().trim().to_string(),
        }])
    })?;
    let mut c = Checker {
        file,
        text,
        errors: Vec::new(),
    };

    let header = raw.pack.get_ref();
    if let Some(reason) = id_problem(header.name.get_ref()) {
        c.err(
            header.name.span(),
            format!("pack name {:?}: {reason}", header.name.get_ref()),
        );
    }

    let mut pack = Pack {
        name: header.name.get_ref().clone(),
        version: header.version.clone(),
        sealed: header.sealed,
        description: header.description.clone(),
        file: file.to_string(),
        discoveries: Vec::new(),
        groups: Vec::new(),
        monitors: Vec::new(),
        aggregates: Vec::new(),
        dependencies: Vec::new(),
        rules: Vec::new(),
        overrides: Vec::new(),
    };

    let mut discovery_ids = BTreeSet::new();
    for d in &raw.discovery {
        let span = d.span();
        let line = c.line(&span);
        let d = d.get_ref();
        let id = c.required(&span, &d.id, "id", "discovery");
        let class = c.required(&span, &d.class, "class", "discovery");
        let (Some(id), Some(class)) = (id, class) else {
            continue;
        };
        let id = c.id(id, "discovery", &mut discovery_ids);
        let Some(class) = c.class(class) else {
            continue;
        };
        let selector = selector(&mut c, class, d);
        if class != Class::Service {
            c.not_for(&d.units, "units", &format!("a {class} discovery"));
        }
        if class != Class::Certificate {
            c.not_for(&d.paths, "paths", &format!("a {class} discovery"));
        }
        pack.discoveries.push(Discovery {
            id,
            class,
            selector,
            units: d
                .units
                .as_ref()
                .map(|u| u.get_ref().clone())
                .unwrap_or_default(),
            paths: d
                .paths
                .as_ref()
                .map(|p| p.get_ref().clone())
                .unwrap_or_default(),
            line,
        });
    }

    let mut group_ids = BTreeSet::new();
    for g in &raw.group {
        let span = g.span();
        let line = c.line(&span);
        let g = g.get_ref();
        let id = c.required(&span, &g.id, "id", "group");
        let class = c.required(&span, &g.class, "class", "group");
        let (Some(id), Some(class)) = (id, class) else {
            continue;
        };
        let id = c.id(id, "group", &mut group_ids);
        let Some(class) = c.class(class) else {
            continue;
        };
        let selector = selector(&mut c, class, g);
        c.not_for(&g.units, "units", "a group");
        c.not_for(&g.paths, "paths", "a group");
        pack.groups.push(Group {
            id,
            class,
            selector,
            line,
        });
    }

    let mut monitor_ids = BTreeSet::new();
    for m in &raw.monitor {
        if let Some(unit) = unit_monitor(&mut c, m.get_ref(), m.span(), &mut monitor_ids) {
            pack.monitors.push(unit);
        }
    }

    for a in &raw.aggregate {
        let span = a.span();
        let line = c.line(&span);
        let a = a.get_ref();
        let fields = (
            c.required(&span, &a.id, "id", "aggregate"),
            c.required(&span, &a.class, "class", "aggregate"),
            c.required(&span, &a.algorithm, "algorithm", "aggregate"),
            c.required(&span, &a.members, "members", "aggregate"),
        );
        let (Some(id), Some(class), Some(algorithm), Some(members)) = fields else {
            continue;
        };
        let id = c.id(id, "monitor", &mut monitor_ids);
        let class = c.class(class);
        let algorithm = c.algorithm(algorithm, &[Algorithm::WorstOf, Algorithm::BestOf]);
        if members.get_ref().is_empty() {
            c.err(members.span(), "an aggregate needs at least one member");
        }
        let mut params = Params::default();
        c.param(Param::Enabled, a.enabled.as_ref(), &mut params);
        if let (Some(class), Some(algorithm)) = (class, algorithm) {
            pack.aggregates.push(Aggregate {
                id,
                class,
                algorithm,
                members: members
                    .get_ref()
                    .iter()
                    .map(|m| m.get_ref().clone())
                    .collect(),
                params,
                line,
            });
        }
    }

    for d in &raw.dependency {
        let span = d.span();
        let line = c.line(&span);
        let d = d.get_ref();
        let fields = (
            c.required(&span, &d.id, "id", "dependency"),
            c.required(&span, &d.class, "class", "dependency"),
            c.required(&span, &d.on, "on", "dependency"),
            c.required(&span, &d.algorithm, "algorithm", "dependency"),
        );
        let (Some(id), Some(class), Some(on), Some(algorithm_key)) = fields else {
            continue;
        };
        let id = c.id(id, "monitor", &mut monitor_ids);
        let class = c.class(class);
        let on = c.class(on);
        let algorithm = c.algorithm(
            algorithm_key,
            &[
                Algorithm::WorstOf,
                Algorithm::BestOf,
                Algorithm::WorstOfPercentage,
            ],
        );
        let mut params = Params::default();
        c.param(Param::Enabled, d.enabled.as_ref(), &mut params);
        match (&algorithm, &d.percentage) {
            (Some(Algorithm::WorstOfPercentage), None) => c.err(
                algorithm_key.span(),
                "worst_of_percentage needs `percentage` (0 to 100)",
            ),
            (Some(Algorithm::WorstOfPercentage), Some(p)) => {
                c.param(Param::Percentage, Some(p), &mut params);
            }
            (_, Some(p)) => c.err(
                p.span(),
                "key `percentage` applies to worst_of_percentage only",
            ),
            _ => {}
        }
        if let (Some(class), Some(on), Some(algorithm)) = (class, on, algorithm) {
            pack.dependencies.push(Dependency {
                id,
                class,
                on,
                monitor: d.monitor.as_ref().map(|m| m.get_ref().clone()),
                algorithm,
                params,
                line,
            });
        }
    }

    let mut rule_ids = BTreeSet::new();
    for r in &raw.rule {
        if let Some(rule) = rule(&mut c, r.get_ref(), r.span(), &mut rule_ids) {
            pack.rules.push(rule);
        }
    }

    let mut override_ids = BTreeSet::new();
    for o in &raw.overrides {
        if let Some(ov) = override_item(&mut c, o.get_ref(), o.span(), &mut override_ids) {
            pack.overrides.push(ov);
        }
    }

    if c.errors.is_empty() {
        Ok(pack)
    } else {
        c.errors.sort_by_key(|e| e.line);
        Err(PackErrors(c.errors))
    }
}

fn selector(c: &mut Checker<'_>, class: Class, raw: &RawSelecting) -> Selector {
    let mut labels = BTreeMap::new();
    for (k, v) in &raw.where_ {
        if !label_names(class).contains(&k.as_str()) {
            c.err(
                v.span(),
                format!(
                    "class {class} has no label {k:?} (known: {})",
                    label_names(class).join(", ")
                ),
            );
        }
        let patterns = match v.get_ref() {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(list) => list.clone(),
        };
        labels.insert(k.clone(), patterns);
    }
    Selector {
        include: raw.include.clone(),
        exclude: raw.exclude.clone(),
        labels,
    }
}

fn unit_monitor(
    c: &mut Checker<'_>,
    m: &RawMonitor,
    span: Range<usize>,
    ids: &mut BTreeSet<String>,
) -> Option<UnitMonitor> {
    let line = c.line(&span);
    let fields = (
        c.required(&span, &m.id, "id", "monitor"),
        c.required(&span, &m.class, "class", "monitor"),
        c.required(&span, &m.kind, "type", "monitor"),
    );
    let (Some(id), Some(class_key), Some(kind_key)) = fields else {
        return None;
    };
    let id = c.id(id, "monitor", ids);
    let class = c.class(class_key);
    let type_name = kind_key.get_ref().as_str();
    if !MONITOR_TYPES.contains(&type_name) {
        c.err(
            kind_key.span(),
            format!(
                "unknown monitor type {type_name:?} (expected one of {})",
                MONITOR_TYPES.join(", ")
            ),
        );
        return None;
    }
    let class = class?;
    let what = format!("monitor type {type_name}");

    // The class a specialised monitor type needs.
    let needs = match type_name {
        "filesystem_free" => Some(Class::Filesystem),
        "certificate_expiry" => Some(Class::Certificate),
        "vm_state" => Some(Class::Vm),
        "service_active" => Some(Class::Service),
        _ => None,
    };
    if let Some(needed) = needs {
        if needed != class {
            c.err(
                class_key.span(),
                format!("{what} applies to class {needed}, not {class}"),
            );
        }
    }

    let mut params = Params::default();
    c.param(Param::Enabled, m.enabled.as_ref(), &mut params);
    c.param(Param::Samples, m.samples.as_ref(), &mut params);

    let kind = match type_name {
        "threshold" | "filesystem_free" | "certificate_expiry" => {
            c.not_for(&m.states, "states", &what);
            c.not_for(&m.default, "default", &what);
            let direction = if type_name == "threshold" {
                let direction = match m.direction.as_ref().map(|d| d.get_ref().as_str()) {
                    None | Some("above") => Direction::Above,
                    Some("below") => Direction::Below,
                    Some(other) => {
                        c.err(
                            m.direction.as_ref().map_or(kind_key.span(), Spanned::span),
                            format!("direction must be \"above\" or \"below\", not {other:?}"),
                        );
                        Direction::Above
                    }
                };
                match &m.metric {
                    Some(metric) => c.metric(class, metric),
                    None => c.err(kind_key.span(), "a threshold monitor needs `metric`"),
                }
                if m.warning.is_none() && m.critical.is_none() {
                    c.err(
                        kind_key.span(),
                        "a threshold monitor needs `warning`, `critical` or both",
                    );
                }
                direction
            } else {
                c.not_for(&m.metric, "metric", &what);
                c.not_for(&m.direction, "direction", &what);
                c.not_for(&m.rate, "rate", &what);
                let (w, cr) = if type_name == "filesystem_free" {
                    (20.0, 10.0)
                } else {
                    (30.0, 7.0)
                };
                params.warning = Some(w);
                params.critical = Some(cr);
                Direction::Below
            };
            c.param(Param::Warning, m.warning.as_ref(), &mut params);
            c.param(Param::Critical, m.critical.as_ref(), &mut params);
            if let (Some(w), Some(cr)) = (params.warning, params.critical) {
                let inverted = match direction {
                    Direction::Above => w > cr,
                    Direction::Below => w < cr,
                };
                if inverted {
                    let span = m.warning.as_ref().map_or(kind_key.span(), Spanned::span);
                    let side = if direction == Direction::Above {
                        "above"
                    } else {
                        "below"
                    };
                    c.err(
                        span,
                        format!("warning level {w} is past critical level {cr} for a threshold that is bad {side}"),
                    );
                }
            }
            match type_name {
                "threshold" => UnitKind::Threshold {
                    metric: m
                        .metric
                        .as_ref()
                        .map(|x| x.get_ref().clone())
                        .unwrap_or_default(),
                    direction,
                    rate: m.rate.as_ref().is_some_and(|r| *r.get_ref()),
                },
                "filesystem_free" => UnitKind::FilesystemFree,
                _ => UnitKind::CertificateExpiry,
            }
        }
        _ => {
            for (field, key) in [(&m.warning, "warning"), (&m.critical, "critical")] {
                c.not_for(field, key, &what);
            }
            c.not_for(&m.metric, "metric", &what);
            c.not_for(&m.direction, "direction", &what);
            c.not_for(&m.rate, "rate", &what);
            let (mut states, mut default) = default_states(type_name);
            let known = if type_name == "vm_state" {
                VM_STATES
            } else {
                SERVICE_STATES
            };
            if let Some(map) = &m.states {
                for (name, health) in map.get_ref() {
                    if !known.contains(&name.as_str()) {
                        c.err(
                            health.span(),
                            format!(
                                "{what} knows no state {name:?} (known: {})",
                                known.join(", ")
                            ),
                        );
                    }
                    match monitor_health(health.get_ref()) {
                        Some(h) => {
                            states.insert(name.clone(), h);
                        }
                        None => c.err(
                            health.span(),
                            format!("state {name:?} maps to {:?}; expected healthy, warning, critical or unknown", health.get_ref()),
                        ),
                    }
                }
            }
            if let Some(d) = &m.default {
                match monitor_health(d.get_ref()) {
                    Some(h) => default = h,
                    None => c.err(
                        d.span(),
                        format!(
                            "default {:?}: expected healthy, warning, critical or unknown",
                            d.get_ref()
                        ),
                    ),
                }
            }
            if type_name == "vm_state" {
                UnitKind::VmState { states, default }
            } else {
                UnitKind::ServiceActive { states, default }
            }
        }
    };
    Some(UnitMonitor {
        id,
        class,
        kind,
        params,
        description: m.description.clone(),
        line,
    })
}

fn monitor_health(s: &str) -> Option<HealthState> {
    HealthState::parse(s).filter(|h| *h != HealthState::NotMonitored)
}

fn rule(
    c: &mut Checker<'_>,
    r: &RawRule,
    span: Range<usize>,
    ids: &mut BTreeSet<String>,
) -> Option<Rule> {
    let line = c.line(&span);
    let fields = (
        c.required(&span, &r.id, "id", "rule"),
        c.required(&span, &r.kind, "type", "rule"),
    );
    let (Some(id), Some(kind_key)) = fields else {
        return None;
    };
    let id = c.id(id, "rule", ids);
    let mut params = Params::default();
    c.param(Param::Enabled, r.enabled.as_ref(), &mut params);
    match kind_key.get_ref().as_str() {
        "alert" => {
            c.not_for(&r.class, "class", "an alert rule");
            c.not_for(&r.metrics, "metrics", "an alert rule");
            c.not_for(&r.every, "every", "an alert rule");
            c.param(Param::Severity, r.severity.as_ref(), &mut params);
            let Some(monitor) = &r.monitor else {
                c.err(kind_key.span(), "an alert rule needs `monitor`");
                return None;
            };
            Some(Rule {
                id,
                kind: RuleKind::Alert {
                    monitor: monitor.get_ref().clone(),
                    message: r
                        .message
                        .clone()
                        .unwrap_or_else(|| "{monitor} is {state} on {object}".to_string()),
                },
                params,
                line,
            })
        }
        "collect" => {
            c.not_for(&r.monitor, "monitor", "a collect rule");
            c.not_for(&r.severity, "severity", "a collect rule");
            c.param(Param::Every, r.every.as_ref(), &mut params);
            if r.message.is_some() {
                c.err(
                    kind_key.span(),
                    "key `message` does not apply to a collect rule",
                );
            }
            let Some(class) = &r.class else {
                c.err(kind_key.span(), "a collect rule needs `class`");
                return None;
            };
            let class = c.class(class)?;
            let Some(metrics) = &r.metrics else {
                c.err(kind_key.span(), "a collect rule needs `metrics`");
                return None;
            };
            for m in metrics.get_ref() {
                c.metric(class, m);
            }
            Some(Rule {
                id,
                kind: RuleKind::Collect {
                    class,
                    metrics: metrics
                        .get_ref()
                        .iter()
                        .map(|m| m.get_ref().clone())
                        .collect(),
                },
                params,
                line,
            })
        }
        other => {
            c.err(
                kind_key.span(),
                format!("unknown rule type {other:?} (expected alert or collect)"),
            );
            None
        }
    }
}

fn override_item(
    c: &mut Checker<'_>,
    o: &RawOverride,
    span: Range<usize>,
    ids: &mut BTreeSet<String>,
) -> Option<Override> {
    let line = c.line(&span);
    let fields = (
        c.required(&span, &o.id, "id", "override"),
        c.required(&span, &o.set, "set", "override"),
    );
    let (Some(id_key), Some(settings)) = fields else {
        return None;
    };
    let id = c.id(id_key, "override", ids);
    let target = match (&o.monitor, &o.rule) {
        (Some(m), None) => Target::Monitor(m.get_ref().clone()),
        (None, Some(r)) => Target::Rule(r.get_ref().clone()),
        _ => {
            c.err(
                id_key.span(),
                "an override names exactly one of `monitor` or `rule`",
            );
            return None;
        }
    };
    let scope = match (&o.class, &o.group, &o.instance) {
        (Some(class), None, None) => Scope::Class(c.class(class)?),
        (None, Some(g), None) => Scope::Group(g.get_ref().clone()),
        (None, None, Some(i)) => Scope::Instance(i.get_ref().clone()),
        _ => {
            c.err(
                id_key.span(),
                "an override names exactly one scope: `class`, `group` or `instance`",
            );
            return None;
        }
    };
    if settings.get_ref().is_empty() {
        c.err(
            settings.span(),
            "an override must set at least one parameter",
        );
    }
    let mut set = Vec::new();
    for (key, value) in settings.get_ref() {
        let Some(param) = Param::parse(key) else {
            c.err(
                value.span(),
                format!(
                    "unknown parameter {key:?} (expected one of {})",
                    Param::ALL.map(Param::as_str).join(", ")
                ),
            );
            continue;
        };
        match param.read(value.get_ref()) {
            Ok(v) => set.push(Setting {
                param,
                value: v,
                line: c.line(&value.span()),
            }),
            Err(reason) => c.err(value.span(), reason),
        }
    }
    Some(Override {
        id,
        target,
        scope,
        enforced: o.enforced,
        set,
        line,
    })
}

/// Reads and parses a pack file (checks that need other packs are up to the caller; see
/// [`super::load_pack`]).
///
/// # Errors
///
/// When the file cannot be read or the pack is invalid.
pub fn read_pack_file(path: &Path) -> Result<Pack, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_pack(&path.display().to_string(), &text).map_err(LoadError::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_count_from_one() {
        assert_eq!(line_of("a\nb\nc", 0), 1);
        assert_eq!(line_of("a\nb\nc", 2), 2);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a", 99), 1);
    }

    fn errors(text: &str) -> Vec<String> {
        parse_pack("t.toml", text)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    const HEADER: &str = "[pack]\nname = \"t\"\n";

    #[test]
    fn unknown_monitor_type_names_its_line() {
        let e = errors(&format!(
            "{HEADER}\n[[monitor]]\nid = \"m\"\nclass = \"host\"\ntype = \"magic\"\n"
        ));
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("t.toml:7: unknown monitor type \"magic\""),
            "{e:?}"
        );
    }

    #[test]
    fn threshold_that_is_not_a_number() {
        let e = errors(&format!(
            "{HEADER}[[monitor]]\nid = \"m\"\nclass = \"host\"\ntype = \"threshold\"\nmetric = \"cpu_percent\"\nwarning = \"ninety\"\n"
        ));
        assert_eq!(
            e,
            ["t.toml:8: threshold `warning` is not a number (found string \"ninety\")"]
        );
        let e = errors(&format!(
            "{HEADER}[[override]]\nid = \"o\"\nmonitor = \"m\"\nclass = \"host\"\nset = {{ critical = true }}\n"
        ));
        assert_eq!(
            e,
            ["t.toml:7: threshold `critical` is not a number (found boolean true)"]
        );
    }

    #[test]
    fn syntax_and_unknown_keys_have_lines_too() {
        let e = errors(&format!("{HEADER}[[monitor]\n"));
        assert!(e[0].starts_with("t.toml:3: "), "{e:?}");
        let e = errors(&format!(
            "{HEADER}[[group]]\nid = \"g\"\nclass = \"vm\"\nmembers = [\"x\"]\n"
        ));
        assert!(
            e[0].starts_with("t.toml:6: unknown field `members`"),
            "{e:?}"
        );
        let e =
            errors("[[rule]]\nid = \"r\"\ntype = \"collect\"\nclass = \"host\"\nmetrics = []\n");
        assert!(e[0].starts_with("t.toml:1: missing field `pack`"), "{e:?}");
        let e = errors(&format!(
            "{HEADER}\n[[monitor]]\nid = \"m\"\n\n[[override]]\nid = \"o\"\n"
        ));
        assert_eq!(
            e,
            [
                "t.toml:4: [[monitor]] is missing key `class`",
                "t.toml:4: [[monitor]] is missing key `type`",
                "t.toml:7: [[override]] is missing key `set`",
            ]
        );
    }

    #[test]
    fn file_level_checks() {
        let e = errors(&format!(
            "{HEADER}
[[monitor]]
id = \"a\"
class = \"vm\"
type = \"threshold\"
metric = \"cpu_percent\"
warning = 90
critical = 80

[[monitor]]
id = \"a\"
class = \"host\"
type = \"vm_state\"

[[monitor]]
id = \"health\"
class = \"planet\"
type = \"threshold\"

[[dependency]]
id = \"d\"
class = \"host\"
on = \"vm\"
algorithm = \"worst_of_percentage\"

[[rule]]
id = \"r\"
type = \"collect\"
class = \"host\"
metrics = [\"nope\"]

[[override]]
id = \"o\"
monitor = \"a\"
class = \"host\"
instance = \"x\"
set = {{ warning = 1 }}

[[override]]
id = \"p\"
monitor = \"a\"
instance = \"x\"
set = {{ sample = 3, samples = 0 }}
"
        ));
        let expected = [
            "t.toml:8: class vm has no metric \"cpu_percent\"",
            "t.toml:9: warning level 90 is past critical level 80",
            "t.toml:13: duplicate monitor id \"a\"",
            "t.toml:14: monitor type vm_state applies to class vm, not host",
            "t.toml:18: monitor id \"health\": `health` is reserved",
            "t.toml:19: unknown class \"planet\"",
            "t.toml:26: worst_of_percentage needs `percentage`",
            "t.toml:32: class host has no metric \"nope\"",
            "t.toml:35: an override names exactly one scope",
            "t.toml:45: unknown parameter \"sample\"",
            "t.toml:45: `samples` must be a whole number from 1 to 1000, not integer 0",
        ];
        assert_eq!(e.len(), expected.len(), "{e:#?}");
        for (got, want) in e.iter().zip(expected) {
            assert!(got.starts_with(want), "{got:?} should start with {want:?}");
        }
    }

    #[test]
    fn defaults_of_specialised_monitors() {
        let p = parse_pack(
            "t.toml",
            &format!(
                "{HEADER}[[monitor]]\nid = \"fs\"\nclass = \"filesystem\"\ntype = \"filesystem_free\"\n\
                 [[monitor]]\nid = \"vm\"\nclass = \"vm\"\ntype = \"vm_state\"\nstates = {{ paused = \"critical\" }}\n"
            ),
        )
        .unwrap();
        assert_eq!(p.monitors[0].params.warning, Some(20.0));
        assert_eq!(p.monitors[0].params.critical, Some(10.0));
        let UnitKind::VmState { states, default } = &p.monitors[1].kind else {
            panic!()
        };
        assert_eq!(states["paused"], HealthState::Critical);
        assert_eq!(states["running"], HealthState::Healthy);
        assert_eq!(*default, HealthState::Unknown);
        assert!(!p.sealed);
    }
}
