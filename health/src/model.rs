//! The pack model: what a valid pack says, as types. [`super::pack`] builds it from TOML;
//! [`super::packset`] and [`super::engine`] use it.

use std::collections::BTreeMap;
use std::fmt;

use super::samples::Class;
use super::state::{Algorithm, HealthState};

/// A parameter an override can set (and that monitors and rules start with).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Param {
    /// `enabled`: monitors, rollups and rules.
    Enabled,
    /// `samples`: consecutive samples a unit monitor needs to change state.
    Samples,
    /// `warning`: threshold level.
    Warning,
    /// `critical`: threshold level.
    Critical,
    /// `percentage`: WorstOfPercentage dependency rollups.
    Percentage,
    /// `severity`: the state at which an alert rule raises.
    Severity,
    /// `every`: a collect rule collects every Nth round.
    Every,
}

impl Param {
    /// Every parameter.
    pub const ALL: [Param; 7] = [
        Self::Enabled,
        Self::Samples,
        Self::Warning,
        Self::Critical,
        Self::Percentage,
        Self::Severity,
        Self::Every,
    ];

    /// The key used in packs.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Samples => "samples",
            Self::Warning => "warning",
            Self::Critical => "critical",
            Self::Percentage => "percentage",
            Self::Severity => "severity",
            Self::Every => "every",
        }
    }

    /// Parses [`Self::as_str`].
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// Type-checks a TOML value for this parameter.
    ///
    /// # Errors
    ///
    /// A reason naming the parameter and what was found.
    pub fn read(self, v: &toml::Value) -> Result<ParamValue, String> {
        let name = self.as_str();
        match self {
            Self::Enabled => v
                .as_bool()
                .map(ParamValue::Bool)
                .ok_or_else(|| format!("`{name}` must be true or false, not {}", describe(v))),
            Self::Samples | Self::Every => v
                .as_integer()
                .and_then(|i| u32::try_from(i).ok())
                .filter(|i| (1..=MAX_COUNT).contains(i))
                .map(ParamValue::Count)
                .ok_or_else(|| {
                    format!(
                        "`{name}` must be a whole number from 1 to {MAX_COUNT}, not {}",
                        describe(v)
                    )
                }),
            Self::Warning | Self::Critical => {
                let n = match v {
                    #[allow(clippy::cast_precision_loss)] // thresholds are far below 2^53
                    toml::Value::Integer(i) => Some(*i as f64),
                    toml::Value::Float(f) if f.is_finite() => Some(*f),
                    _ => None,
                };
                n.map(ParamValue::Number).ok_or_else(|| {
                    format!("threshold `{name}` is not a number (found {})", describe(v))
                })
            }
            Self::Percentage => v
                .as_integer()
                .and_then(|i| u8::try_from(i).ok())
                .filter(|i| *i <= 100)
                .map(ParamValue::Percent)
                .ok_or_else(|| {
                    format!(
                        "`{name}` must be a whole number from 0 to 100, not {}",
                        describe(v)
                    )
                }),
            Self::Severity => v
                .as_str()
                .and_then(|s| match s {
                    "warning" => Some(HealthState::Warning),
                    "critical" => Some(HealthState::Critical),
                    _ => None,
                })
                .map(ParamValue::Severity)
                .ok_or_else(|| {
                    format!(
                        "`{name}` must be \"warning\" or \"critical\", not {}",
                        describe(v)
                    )
                }),
        }
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Largest `samples` or `every`.
pub const MAX_COUNT: u32 = 1000;

/// A parameter value, type-checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ParamValue {
    /// `enabled`.
    Bool(bool),
    /// `warning`, `critical`.
    Number(f64),
    /// `samples`, `every`.
    Count(u32),
    /// `percentage`.
    Percent(u8),
    /// `severity`.
    Severity(HealthState),
}

impl fmt::Display for ParamValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Number(n) => write!(f, "{n}"),
            Self::Count(n) => write!(f, "{n}"),
            Self::Percent(n) => write!(f, "{n}"),
            Self::Severity(s) => write!(f, "{s}"),
        }
    }
}

/// The parameters of a monitor, rollup or rule, after overrides.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Switched on.
    pub enabled: bool,
    /// Consecutive samples to change state (unit monitors).
    pub samples: u32,
    /// Warning level (threshold-like monitors).
    pub warning: Option<f64>,
    /// Critical level (threshold-like monitors).
    pub critical: Option<f64>,
    /// WorstOfPercentage percentage (dependency rollups).
    pub percentage: u8,
    /// Raise at this state or worse (alert rules).
    pub severity: HealthState,
    /// Collect every Nth round (collect rules).
    pub every: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            enabled: true,
            samples: 1,
            warning: None,
            critical: None,
            percentage: 100,
            severity: HealthState::Warning,
            every: 1,
        }
    }
}

impl Params {
    /// Sets one parameter (values are type-checked by [`Param::read`]).
    pub fn set(&mut self, param: Param, value: ParamValue) {
        match (param, value) {
            (Param::Enabled, ParamValue::Bool(b)) => self.enabled = b,
            (Param::Samples, ParamValue::Count(n)) => self.samples = n,
            (Param::Every, ParamValue::Count(n)) => self.every = n,
            (Param::Warning, ParamValue::Number(n)) => self.warning = Some(n),
            (Param::Critical, ParamValue::Number(n)) => self.critical = Some(n),
            (Param::Percentage, ParamValue::Percent(p)) => self.percentage = p,
            (Param::Severity, ParamValue::Severity(s)) => self.severity = s,
            _ => {}
        }
    }
}

/// Which objects of a class a discovery or group selects.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    /// Id patterns (`*`, `?`); empty selects every id.
    pub include: Vec<String>,
    /// Id patterns that are left out.
    pub exclude: Vec<String>,
    /// Every listed label must match one of its patterns (`where` in the pack).
    pub labels: BTreeMap<String, Vec<String>>,
}

impl Selector {
    /// Whether an object with this id and these labels is selected.
    #[must_use]
    pub fn matches(&self, id: &str, labels: &BTreeMap<String, String>) -> bool {
        (self.include.is_empty() || self.include.iter().any(|p| glob_match(p, id)))
            && !self.exclude.iter().any(|p| glob_match(p, id))
            && self.labels.iter().all(|(k, patterns)| {
                labels
                    .get(k)
                    .is_some_and(|v| patterns.iter().any(|p| glob_match(p, v)))
            })
    }
}

/// Shell-style matching with `*` (any run) and `?` (any one character).
#[must_use]
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Which objects of a class exist for the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Id, unique in the pack.
    pub id: String,
    /// The class it discovers.
    pub class: Class,
    /// Which objects.
    pub selector: Selector,
    /// Service discoveries: the units the collector should look at.
    pub units: Vec<String>,
    /// Certificate discoveries: certificate files the collector should read.
    pub paths: Vec<String>,
    /// Line in the pack.
    pub line: usize,
}

/// A named set of objects of one class, for overrides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Id, unique across packs.
    pub id: String,
    /// The members' class.
    pub class: Class,
    /// Which objects are members.
    pub selector: Selector,
    /// Line in the pack.
    pub line: usize,
}

/// Above or below a threshold is bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Values at or above a level cross it.
    Above,
    /// Values at or below a level cross it.
    Below,
}

/// What a unit monitor looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum UnitKind {
    /// A metric against warning and critical levels.
    Threshold {
        /// The metric.
        metric: String,
        /// Which side is bad.
        direction: Direction,
        /// Judge the per-second rate of a counter instead of its value.
        rate: bool,
    },
    /// `free_percent` of a file system, below.
    FilesystemFree,
    /// Days until a certificate's `notAfter`, below.
    CertificateExpiry,
    /// A VM's `state` label through a state map.
    VmState {
        /// State name → health.
        states: BTreeMap<String, HealthState>,
        /// Health of states not in the map.
        default: HealthState,
    },
    /// A systemd unit's `active_state` label through a state map.
    ServiceActive {
        /// State name → health.
        states: BTreeMap<String, HealthState>,
        /// Health of states not in the map.
        default: HealthState,
    },
}

impl UnitKind {
    /// The `type` name used in packs.
    #[must_use]
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Threshold { .. } => "threshold",
            Self::FilesystemFree => "filesystem_free",
            Self::CertificateExpiry => "certificate_expiry",
            Self::VmState { .. } => "vm_state",
            Self::ServiceActive { .. } => "service_active",
        }
    }

    /// Whether it judges a number against warning/critical levels.
    #[must_use]
    pub fn has_levels(&self) -> bool {
        matches!(
            self,
            Self::Threshold { .. } | Self::FilesystemFree | Self::CertificateExpiry
        )
    }
}

/// Monitor types a pack may name.
pub const MONITOR_TYPES: &[&str] = &[
    "threshold",
    "filesystem_free",
    "certificate_expiry",
    "vm_state",
    "service_active",
];

/// A unit monitor: judges one object from its samples.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitMonitor {
    /// Id, unique across packs.
    pub id: String,
    /// The class it applies to.
    pub class: Class,
    /// What it looks at.
    pub kind: UnitKind,
    /// Parameters before overrides.
    pub params: Params,
    /// Free text.
    pub description: String,
    /// Line in the pack.
    pub line: usize,
}

/// An aggregate rollup: the health of one object from some of its monitors.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Id, unique across packs.
    pub id: String,
    /// The class.
    pub class: Class,
    /// WorstOf or BestOf.
    pub algorithm: Algorithm,
    /// Monitors (unit, aggregate or dependency) of the same class.
    pub members: Vec<String>,
    /// Parameters before overrides.
    pub params: Params,
    /// Line in the pack.
    pub line: usize,
}

/// A dependency rollup: the health of an object from the objects that belong to it.
#[derive(Debug, Clone, PartialEq)]
pub struct Dependency {
    /// Id, unique across packs.
    pub id: String,
    /// The class of the object judged (the parent).
    pub class: Class,
    /// The class of its members (the children).
    pub on: Class,
    /// Which monitor of the children; `None` is their overall health.
    pub monitor: Option<String>,
    /// WorstOf, BestOf or WorstOfPercentage.
    pub algorithm: Algorithm,
    /// Parameters before overrides (`percentage`).
    pub params: Params,
    /// Line in the pack.
    pub line: usize,
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// Raise an alert while a monitor is at `severity` or worse; resolve it when the
    /// monitor is healthy again.
    Alert {
        /// The monitor (unit, aggregate or dependency).
        monitor: String,
        /// Message template: `{object}`, `{id}`, `{class}`, `{monitor}`, `{state}`, `{rule}`.
        message: String,
    },
    /// Collect metrics of every object of a class every `every` rounds.
    Collect {
        /// The class.
        class: Class,
        /// Metric names.
        metrics: Vec<String>,
    },
}

/// A rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Id, unique across packs.
    pub id: String,
    /// What it does.
    pub kind: RuleKind,
    /// Parameters before overrides (`enabled`, `severity`, `every`).
    pub params: Params,
    /// Line in the pack.
    pub line: usize,
}

/// What an override changes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A monitor (unit, aggregate or dependency).
    Monitor(String),
    /// A rule.
    Rule(String),
}

impl Target {
    /// The id.
    #[must_use]
    pub fn id(&self) -> &str {
        match self {
            Self::Monitor(id) | Self::Rule(id) => id,
        }
    }
}

/// Which objects an override applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every object of the class.
    Class(Class),
    /// Members of a group.
    Group(String),
    /// One object, by id.
    Instance(String),
}

/// One `key = value` of an override.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    /// The parameter.
    pub param: Param,
    /// Its value.
    pub value: ParamValue,
    /// Line in the pack.
    pub line: usize,
}

/// An override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// Id, unique in the pack.
    pub id: String,
    /// What it changes.
    pub target: Target,
    /// For which objects.
    pub scope: Scope,
    /// Wins over non-enforced overrides of the same scope.
    pub enforced: bool,
    /// The parameters it sets.
    pub set: Vec<Setting>,
    /// Line in the pack.
    pub line: usize,
}

/// A parsed, file-level-valid pack.
#[derive(Debug, Clone, PartialEq)]
pub struct Pack {
    /// Pack name, unique among loaded packs.
    pub name: String,
    /// Free-form version.
    pub version: String,
    /// A sealed pack is a vendor's; a local (unsealed) pack's overrides win over a sealed
    /// pack's at equal scope and enforcement.
    pub sealed: bool,
    /// Free text.
    pub description: String,
    /// The file it came from, for errors.
    pub file: String,
    /// Discoveries.
    pub discoveries: Vec<Discovery>,
    /// Groups.
    pub groups: Vec<Group>,
    /// Unit monitors.
    pub monitors: Vec<UnitMonitor>,
    /// Aggregate rollups.
    pub aggregates: Vec<Aggregate>,
    /// Dependency rollups.
    pub dependencies: Vec<Dependency>,
    /// Rules.
    pub rules: Vec<Rule>,
    /// Overrides.
    pub overrides: Vec<Override>,
}

/// How a TOML value reads in an error message.
fn describe(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer {i}"),
        toml::Value::Float(f) => format!("float {f}"),
        toml::Value::Boolean(b) => format!("boolean {b}"),
        toml::Value::Datetime(d) => format!("date-time {d}"),
        toml::Value::Array(_) => "an array".to_string(),
        toml::Value::Table(_) => "a table".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("prod-*", "prod-db1"));
        assert!(!glob_match("prod-*", "test-db1"));
        assert!(glob_match("/snap/*", "/snap/core/1"));
        assert!(glob_match("vnet?", "vnet3"));
        assert!(!glob_match("vnet?", "vnet12"));
        assert!(glob_match("*.service", "ssh.service"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("exact", "exact"));
    }

    #[test]
    fn selectors_combine_include_exclude_and_labels() {
        let sel = Selector {
            include: vec![],
            exclude: vec!["/boot/*".into()],
            labels: [("fs_type".to_string(), vec!["ext4".into(), "xfs".into()])].into(),
        };
        let ext4: BTreeMap<String, String> = [("fs_type".to_string(), "ext4".to_string())].into();
        let tmpfs: BTreeMap<String, String> = [("fs_type".to_string(), "tmpfs".to_string())].into();
        assert!(sel.matches("/", &ext4));
        assert!(!sel.matches("/", &tmpfs));
        assert!(!sel.matches("/boot/efi", &ext4));
        assert!(!sel.matches("/", &BTreeMap::new()));
    }
}
