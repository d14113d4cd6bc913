//! systemd units the packs' service discoveries list (`units = [...]`).
//!
//! One `systemctl show --property=Id,LoadState,ActiveState,SubState UNIT...` per collection
//! for all units, bounded in time ([`SYSTEMCTL_TIMEOUT`]) and in output
//! ([`MAX_SYSTEMCTL_OUTPUT`]); its `KEY=VALUE` blocks are parsed by [`parse_show`], which
//! is pure and tested on real output.
//!
//! Where systemd is not the running init (no `/run/systemd/system`, the check
//! `sd_booted()` makes; containers, other inits) or `systemctl` fails, every listed unit
//! becomes a [`ServiceStatus::unknown`] with the reason, so its monitors are Unknown rather
//! than wrong. The reason is logged once when it first appears or changes — never once per
//! interval.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use outpost_health::ServiceStatus;
use tracing::{info, warn};

/// How long one `systemctl show` may take before it is killed.
pub const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);

/// The most output read from `systemctl show`.
pub const MAX_SYSTEMCTL_OUTPUT: u64 = 1 << 20;

/// The most units asked about in one collection.
pub const MAX_UNITS: usize = 256;

/// The directory that exists while systemd is the running init.
pub const SYSTEMD_RUN_DIR: &str = "/run/systemd/system";

/// Parses `systemctl show --property=Id,LoadState,ActiveState,SubState` output: blocks of
/// `KEY=VALUE` lines separated by blank lines, one per unit, in the order asked. A block
/// without `Id` takes the name asked at its position (`asked`); blocks without any id are
/// skipped, unknown keys ignored, and a unit reported twice (an alias asked under both
/// names) is kept once.
#[must_use]
pub fn parse_show(output: &str, asked: &[String]) -> Vec<ServiceStatus> {
    let mut out: Vec<ServiceStatus> = Vec::new();
    let mut block: Vec<(&str, &str)> = Vec::new();
    let mut index = 0usize;
    let mut flush = |block: &mut Vec<(&str, &str)>, index: &mut usize| {
        if block.is_empty() {
            return;
        }
        let get = |k: &str| {
            block
                .iter()
                .rev()
                .find(|(key, _)| *key == k)
                .map(|(_, v)| v.trim().to_string())
        };
        let unit = get("Id")
            .filter(|s| !s.is_empty())
            .or_else(|| asked.get(*index).cloned());
        *index += 1;
        let status = unit.map(|unit| ServiceStatus {
            unit,
            load_state: get("LoadState").unwrap_or_else(|| "unknown".into()),
            active_state: get("ActiveState").unwrap_or_default(),
            sub_state: get("SubState").unwrap_or_default(),
            error: None,
        });
        block.clear();
        if let Some(s) = status {
            if !out.iter().any(|o| o.unit == s.unit) {
                out.push(s);
            }
        }
    };
    for line in output.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            flush(&mut block, &mut index);
        } else if let Some((k, v)) = line.split_once('=') {
            block.push((k.trim(), v));
        }
    }
    flush(&mut block, &mut index);
    out
}

/// Why systemd cannot be asked, or `None` when it can.
#[must_use]
pub fn systemd_unavailable(run_dir: &Path) -> Option<String> {
    if run_dir.is_dir() {
        None
    } else {
        Some(format!(
            "systemd is not the running init ({} is missing)",
            run_dir.display()
        ))
    }
}

/// Runs `systemctl show` for `units`, killed after `timeout`.
///
/// # Errors
/// What failed, as text for the units' `error` label: could not start, timed out, exit
/// status and the first line of its stderr.
pub fn run_systemctl_show(units: &[String], timeout: Duration) -> Result<String, String> {
    let mut child = Command::new("systemctl")
        .args([
            "show",
            "--no-pager",
            "--property=Id,LoadState,ActiveState,SubState",
            "--",
        ])
        .args(units)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read_out = std::thread::spawn(move || read_capped(stdout));
    let read_err = std::thread::spawn(move || read_capped(stderr));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "systemctl show did not answer within {}s",
                    timeout.as_secs()
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for systemctl: {e}")),
        }
    };
    let out = read_out.join().unwrap_or_default();
    let err = read_err.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        let first = err.lines().next().unwrap_or("").trim();
        Err(format!("systemctl show failed ({status}): {first}"))
    }
}

fn read_capped<R: Read>(r: Option<R>) -> String {
    let mut buf = Vec::new();
    if let Some(r) = r {
        let mut limited = r.take(MAX_SYSTEMCTL_OUTPUT);
        let _ = limited.read_to_end(&mut buf);
        // Drain the rest so the child never blocks on a full pipe.
        let mut rest = limited.into_inner();
        let _ = std::io::copy(&mut rest, &mut std::io::sink());
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The service source: asks systemd about the units the packs list, and remembers the last
/// problem so it is logged once per change.
#[derive(Debug, Default)]
pub struct ServiceSource {
    last_problem: Option<String>,
}

impl ServiceSource {
    /// A source that has logged nothing yet.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of `units` (at most [`MAX_UNITS`]); every unit Unknown with the reason when
    /// systemd cannot be asked. No units: nothing is run.
    pub fn sample(&mut self, units: &[String]) -> Vec<ServiceStatus> {
        if units.is_empty() {
            return Vec::new();
        }
        let units = &units[..units.len().min(MAX_UNITS)];
        let result = match systemd_unavailable(Path::new(SYSTEMD_RUN_DIR)) {
            Some(why) => Err(why),
            None => run_systemctl_show(units, SYSTEMCTL_TIMEOUT).map(|out| parse_show(&out, units)),
        };
        match result {
            Ok(list) => {
                if self.last_problem.take().is_some() {
                    info!("systemd answers again; service states are known");
                }
                list
            }
            Err(why) => {
                if self.last_problem.as_deref() != Some(why.as_str()) {
                    warn!(units = units.len(), "service states unknown: {why}");
                    self.last_problem = Some(why.clone());
                }
                units
                    .iter()
                    .map(|u| ServiceStatus::unknown(u, why.clone()))
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `systemctl show --property=Id,LoadState,ActiveState,SubState ssh.service
    /// nosuch.service cron.service sshd.service` on Debian 12 (sshd is an alias of ssh).
    const DEBIAN_SHOW: &str = "Id=ssh.service\nLoadState=loaded\nActiveState=active\nSubState=running\n\nId=nosuch.service\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n\nId=cron.service\nLoadState=loaded\nActiveState=failed\nSubState=failed\n\nId=ssh.service\nLoadState=loaded\nActiveState=active\nSubState=running\n";

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn parses_real_systemctl_show_output() {
        let asked = names(&[
            "ssh.service",
            "nosuch.service",
            "cron.service",
            "sshd.service",
        ]);
        let got = parse_show(DEBIAN_SHOW, &asked);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].unit, "ssh.service");
        assert_eq!(got[0].active_state, "active");
        assert_eq!(got[0].sub_state, "running");
        assert_eq!(got[1].load_state, "not-found");
        assert_eq!(got[2].active_state, "failed");
        assert!(got.iter().all(|s| s.error.is_none()));
    }

    #[test]
    fn parses_blocks_without_id_crlf_and_noise() {
        let text = "\r\nLoadState=loaded\r\nActiveState=activating\r\nSubState=start\r\nWeird line\r\n\r\n\r\nLoadState=masked\nActiveState=inactive\nSubState=dead\nExtra=1\n";
        let got = parse_show(text, &names(&["a.service", "b.service"]));
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got[0].unit, "a.service");
        assert_eq!(got[0].active_state, "activating");
        assert_eq!(got[1].unit, "b.service");
        assert_eq!(got[1].load_state, "masked");
        // More blocks than names and no Id: nothing to call them, skipped.
        assert!(parse_show("LoadState=loaded\n", &[]).is_empty());
        assert!(parse_show("", &names(&["a.service"])).is_empty());
    }

    #[test]
    fn no_systemd_makes_every_unit_unknown_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("systemd");
        let why = systemd_unavailable(&missing).unwrap();
        assert!(why.contains("not the running init"), "{why}");
        assert!(systemd_unavailable(dir.path()).is_none());
        let s = ServiceStatus::unknown("ssh.service", why.clone());
        assert_eq!(s.load_state, "unknown");
        assert!(s.active_state.is_empty());
        assert_eq!(s.error.as_deref(), Some(why.as_str()));
    }

    #[test]
    fn service_monitor_judges_real_states_and_unknown() {
        use outpost_health::{Class, HealthEngine, HealthState, ObjectKey, ObjectSample, Samples};
        let pack = outpost_health::parse_pack(
            "t.toml",
            "[pack]\nname = \"t\"\nversion = \"1\"\n\n[[discovery]]\nid = \"t.svc\"\nclass = \"service\"\nunits = [\"ssh.service\", \"cron.service\", \"gone.service\"]\n",
        )
        .unwrap();
        let mut engine =
            HealthEngine::new(outpost_health::pack_set_with_default(vec![pack]).unwrap());
        let mut s = Samples::new();
        s.push(ObjectSample::new(ObjectKey::new(Class::Host, "box")));
        let mut statuses = parse_show(DEBIAN_SHOW, &names(&["ssh.service", "x", "cron.service"]));
        statuses.push(ServiceStatus::unknown(
            "gone.service",
            "systemd is not running",
        ));
        s.add_services(&statuses);
        engine.observe(&s, 1_000);
        let tree = engine.tree();
        let state =
            |id: &str| tree.monitor_state(&ObjectKey::new(Class::Service, id), "service.active");
        assert_eq!(state("ssh.service"), Some(HealthState::Healthy));
        assert_eq!(state("cron.service"), Some(HealthState::Critical));
        assert_eq!(state("gone.service"), Some(HealthState::Unknown));
    }
}
