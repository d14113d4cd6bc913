//! `outpost-gateway windows`: the VAR's maintenance windows, when updaters may restart
//! appliances into a staged update. Also the "Update" section of `appliances show`.
//!
//! A window is a set of weekly ranges (`sat,sun 01:00-05:00`, `mon-fri 22:00-02:00`) in an
//! IANA time zone, set for a customer (every appliance of it) or for one appliance (which
//! overrides its customer's). Setting or clearing one queues a `set_window` command for the
//! updater of every approved appliance it changes; the box computes the times itself.

use outpost_gateway::store::{now_ms, UpdateStateRow, WindowRow, WindowScope};
use outpost_proto::update::{WindowRange, WindowSpec};
use serde_json::{json, Value};

use super::{open, rfc3339, rfc3339_json, runtime, CliError, ConfigArg};

/// Weekday names in order, as the wire carries them.
pub const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
/// Most ranges one window may hold.
pub const MAX_RANGES: usize = 32;

/// Maintenance window commands.
#[derive(Debug, clap::Subcommand)]
pub enum WindowsCmd {
    /// Set the maintenance window of a customer or of one appliance, replacing the one it
    /// had; queues `set_window` for every approved appliance it applies to (an appliance's
    /// own window overrides its customer's; appliances approved later get theirs on
    /// approval).
    ///
    /// Example: windows set --customer acme --tz Europe/Berlin --range "sat,sun 01:00-05:00"
    Set {
        #[command(flatten)]
        target: Target,
        /// IANA time zone of the ranges, e.g. `Europe/Berlin` or `UTC`.
        #[arg(long, value_name = "ZONE")]
        tz: String,
        /// A weekly range "DAYS HH:MM-HH:MM": DAYS is a comma list of mon..sun, each a day
        /// or a span (`mon-fri`); the range starts on those days and ends the next day
        /// when END is not after START (`22:00-02:00`); START == END is the whole day (24 h).
        /// Repeat for more ranges.
        #[arg(long = "range", value_name = "RANGE", required = true)]
        ranges: Vec<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the windows set, customers first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print a JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove the window of a customer or appliance; the appliances it applied to are sent
    /// what applies now (their customer's window, or none: the updater's own default).
    Clear {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `--customer NAME` or `--appliance ID`.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Target {
    /// Every appliance of this customer.
    #[arg(long, value_name = "NAME")]
    customer: Option<String>,
    /// One appliance (ap-…); overrides its customer's window.
    #[arg(long, value_name = "ID")]
    appliance: Option<String>,
}

impl Target {
    fn scope(&self) -> (WindowScope, &str) {
        match (&self.appliance, &self.customer) {
            (Some(a), _) => (WindowScope::Appliance, a),
            (None, Some(c)) => (WindowScope::Customer, c),
            // clap's group makes one of them required.
            (None, None) => (WindowScope::Customer, ""),
        }
    }
}

/// Checks a time zone name against the bundled IANA database.
///
/// # Errors
/// A message naming the zone.
pub fn check_tz(tz: &str) -> Result<(), String> {
    if tz.is_empty() || tz.len() > 64 {
        return Err(format!("--tz {tz:?} is not a time zone name"));
    }
    jiff::tz::TimeZone::get(tz)
        .map(drop)
        .map_err(|_| format!("--tz {tz:?} is not a known IANA time zone (e.g. Europe/Berlin, UTC)"))
}

fn parse_time(range: &str, t: &str) -> Result<String, String> {
    let bad =
        || format!("--range {range:?}: bad time {t:?} (expected HH:MM between 00:00 and 23:59)");
    let (h, m) = t.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u8 = h.parse().map_err(|_| bad())?;
    let m: u8 = m.parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(format!("{h:02}:{m:02}"))
}

fn day_index(range: &str, d: &str) -> Result<usize, String> {
    DAYS.iter().position(|x| *x == d).ok_or_else(|| {
        format!(
            "--range {range:?}: unknown day {d:?} (expected {})",
            DAYS.join(", ")
        )
    })
}

/// Parses one `--range` value, e.g. `sat,sun 01:00-05:00` or `mon-fri 22:00-02:00`.
///
/// # Errors
/// A message naming the range and the bad part.
pub fn parse_range(range: &str) -> Result<WindowRange, String> {
    let text = range.trim().to_ascii_lowercase();
    let (days, times) = text.split_once(char::is_whitespace).ok_or_else(|| {
        format!("--range {range:?}: expected \"DAYS HH:MM-HH:MM\", e.g. \"sat,sun 01:00-05:00\"")
    })?;
    let mut picked = [false; 7];
    for part in days.split(',') {
        let part = part.trim();
        if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (day_index(range, a)?, day_index(range, b)?);
            let mut i = a;
            loop {
                picked[i] = true;
                if i == b {
                    break;
                }
                i = (i + 1) % 7;
            }
        } else {
            picked[day_index(range, part)?] = true;
        }
    }
    let (start, end) = times.trim().split_once('-').ok_or_else(|| {
        format!("--range {range:?}: expected HH:MM-HH:MM after the days, got {times:?}")
    })?;
    let start = parse_time(range, start.trim())?;
    // start == end is the whole day (24 h), as the updater's window maths and
    // docs/updates.md define it.
    let end = parse_time(range, end.trim())?;
    Ok(WindowRange {
        days: DAYS
            .iter()
            .zip(picked)
            .filter(|(_, p)| *p)
            .map(|(d, _)| (*d).to_string())
            .collect(),
        start,
        end,
    })
}

/// Builds a validated [`WindowSpec`] from `--tz` and `--range` values.
///
/// # Errors
/// A message naming the bad value.
pub fn parse_window(tz: &str, ranges: &[String]) -> Result<WindowSpec, String> {
    check_tz(tz)?;
    if ranges.is_empty() {
        return Err("at least one --range is needed".into());
    }
    if ranges.len() > MAX_RANGES {
        return Err(format!(
            "{} ranges given; the limit is {MAX_RANGES}",
            ranges.len()
        ));
    }
    Ok(WindowSpec {
        tz: tz.to_string(),
        ranges: ranges
            .iter()
            .map(|r| parse_range(r))
            .collect::<Result<_, _>>()?,
    })
}

/// `sat,sun 01:00-05:00; mon 22:00-02:00`.
#[must_use]
pub fn describe_ranges(spec: &WindowSpec) -> String {
    if spec.ranges.is_empty() {
        return "(none)".into();
    }
    spec.ranges
        .iter()
        .map(|r| format!("{} {}-{}", r.days.join(","), r.start, r.end))
        .collect::<Vec<_>>()
        .join("; ")
}

fn window_json(w: &WindowRow) -> Value {
    json!({
        "scope": w.scope,
        "target": w.target,
        "tz": w.spec.tz,
        "ranges": w.spec.ranges,
        "set_at": rfc3339(w.set_at),
    })
}

fn print_queued(what: &str, queued: &[(String, String)]) {
    if queued.is_empty() {
        println!("{what}; no approved appliance affected now");
    } else {
        println!(
            "{what}; set_window queued for {} appliance(s):",
            queued.len()
        );
        for (ap, cmd) in queued {
            println!("  {ap}  {cmd}");
        }
    }
}

/// Runs a `windows` subcommand.
pub fn run(c: WindowsCmd) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        match c {
            WindowsCmd::Set {
                target,
                tz,
                ranges,
                config,
            } => {
                let spec = parse_window(&tz, &ranges).map_err(CliError::Input)?;
                let (scope, who) = target.scope();
                let (_, store) = open(&config.config).await?;
                let queued = store.set_window(scope, who, &spec, now_ms()).await;
                store.close().await;
                let queued = queued?;
                tracing::info!(scope = scope.as_str(), target = who, tz = %spec.tz, "window set");
                print_queued(
                    &format!(
                        "window set for {} {who}: {} {}",
                        scope.as_str(),
                        spec.tz,
                        describe_ranges(&spec)
                    ),
                    &queued,
                );
                Ok(())
            }
            WindowsCmd::List { config, json } => {
                let (_, store) = open(&config.config).await?;
                let list = store.list_windows().await;
                store.close().await;
                let list = list?;
                if json {
                    let arr: Vec<Value> = list.iter().map(window_json).collect();
                    println!("{}", serde_json::to_string_pretty(&arr).unwrap_or_default());
                } else {
                    println!(
                        "{:<10} {:<20} {:<20} {:<21} RANGES",
                        "SCOPE", "TARGET", "TZ", "SET AT"
                    );
                    for w in &list {
                        println!(
                            "{:<10} {:<20} {:<20} {:<21} {}",
                            w.scope.as_str(),
                            w.target,
                            w.spec.tz,
                            rfc3339(w.set_at),
                            describe_ranges(&w.spec)
                        );
                    }
                    if list.is_empty() {
                        println!("(no windows set; updaters use their own default)");
                    }
                }
                Ok(())
            }
            WindowsCmd::Clear { target, config } => {
                let (scope, who) = target.scope();
                let (_, store) = open(&config.config).await?;
                let queued = store.clear_window(scope, who, now_ms()).await;
                store.close().await;
                let queued = queued?;
                tracing::info!(scope = scope.as_str(), target = who, "window cleared");
                print_queued(
                    &format!("window of {} {who} cleared", scope.as_str()),
                    &queued,
                );
                Ok(())
            }
        }
    })
}

/// The `update` object of `appliances show --json`: what the updater last reported, and
/// the window the gateway has set for the appliance.
#[must_use]
pub fn update_json(state: Option<&UpdateStateRow>, window: Option<&WindowRow>) -> Value {
    let gateway_window = window.map_or(Value::Null, window_json);
    let Some(row) = state else {
        return json!({"reported": false, "gateway_window": gateway_window});
    };
    let s = &row.state;
    json!({
        "reported": true,
        "current_version": s.current_version,
        "current_slot": s.current_slot,
        "staged_version": s.staged_version,
        "mirrored_version": s.mirrored_version,
        "channel": s.channel,
        "pending_restart": s.pending_restart,
        "restart_at": rfc3339_json(s.restart_at_ms),
        "restart_at_ms": s.restart_at_ms,
        "window": s.window,
        "last_error": s.last_error,
        "reported_at": rfc3339_json((s.reported_at_ms > 0).then_some(s.reported_at_ms)),
        "received_at": rfc3339(row.received_at),
        "gateway_window": gateway_window,
    })
}

/// Prints the "Update" section of `appliances show` from [`update_json`]'s value.
pub fn print_update(u: &Value) {
    let text = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    let gw = &u["gateway_window"];
    let window_line = |w: &Value| {
        if w.is_null() {
            return "-".to_string();
        }
        serde_json::from_value::<WindowSpec>(json!({"tz": w["tz"], "ranges": w["ranges"]}))
            .map_or_else(
                |_| w.to_string(),
                |s| format!("{} {}", s.tz, describe_ranges(&s)),
            )
    };
    if u["reported"] != true {
        println!("update          (no state reported by the updater yet)");
        println!("  window set    {}", window_line(gw));
        return;
    }
    println!("update          (reported {})", text(&u["reported_at"]));
    for (label, key) in [
        ("current", "current_version"),
        ("slot", "current_slot"),
        ("staged", "staged_version"),
        ("mirrored", "mirrored_version"),
        ("channel", "channel"),
        ("restart at", "restart_at"),
        ("last error", "last_error"),
        ("received", "received_at"),
    ] {
        println!("  {label:<13} {}", text(&u[key]));
    }
    println!(
        "  {:<13} {}",
        "pending",
        if u["pending_restart"] == true {
            "restart pending"
        } else {
            "no"
        }
    );
    println!("  {:<13} {}", "window (box)", window_line(&u["window"]));
    println!("  {:<13} {}", "window set", window_line(gw));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_days_spans_and_midnight() {
        let r = parse_range("sat,sun 01:00-05:00").unwrap();
        assert_eq!(r.days, ["sat", "sun"]);
        assert_eq!((r.start.as_str(), r.end.as_str()), ("01:00", "05:00"));
        let r = parse_range("Mon-Fri 22:00-02:00").unwrap();
        assert_eq!(r.days, ["mon", "tue", "wed", "thu", "fri"]);
        assert_eq!(r.end, "02:00");
        // A span wrapping the week.
        assert_eq!(
            parse_range("sat-mon 00:00-23:59").unwrap().days,
            ["mon", "sat", "sun"]
        );
    }

    /// Regression: the CLI refused what the updater and docs/updates.md accept.
    #[test]
    fn equal_start_and_end_is_accepted_as_the_whole_day() {
        let r = parse_range("sat 03:00-03:00").unwrap();
        assert_eq!((r.start.as_str(), r.end.as_str()), ("03:00", "03:00"));
        let spec = parse_window("UTC", &["sat 03:00-03:00".into()]).unwrap();
        assert_eq!(describe_ranges(&spec), "sat 03:00-03:00");
    }

    #[test]
    fn bad_values_are_named() {
        for (range, needle) in [
            ("sa,sun 01:00-05:00", "\"sa\""),
            ("sat 1:00-05:00", "\"1:00\""),
            ("sat 01:00-24:00", "\"24:00\""),
            ("sat 01:60-02:00", "\"01:60\""),
            ("sat 01:00", "\"01:00\""),
            ("sat", "DAYS HH:MM-HH:MM"),
        ] {
            let e = parse_range(range).unwrap_err();
            assert!(e.contains(needle), "{range}: {e}");
            assert!(e.contains(range), "{range}: {e}");
        }
        let e = parse_window("Europe/Berln", &["sat 01:00-02:00".into()]).unwrap_err();
        assert!(e.contains("Europe/Berln"), "{e}");
        assert!(parse_window("Europe/Berlin", &["sat 01:00-02:00".into()]).is_ok());
        assert!(parse_window("UTC", &[]).is_err());
    }
}
