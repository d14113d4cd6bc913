//! Package sources handed to mmdebstrap.
//!
//! Unless the recipe names `base.mirror` or `base.sources`, the build host's apt configuration
//! is used: `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.list|*.sources` (one-line and
//! deb822 formats). Only entries for the host's Debian release are taken (suite equal to the
//! host codename, or `CODENAME-updates`, `CODENAME-security`, …); their suite is rewritten to the
//! recipe's suite. Each becomes one explicit one-line `deb [opts] URI SUITE COMPONENTS` argument,
//! because mmdebstrap's own default mirror is not the host's.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::BuildError;
use crate::recipe::BaseSection;

/// Where the sources came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceOrigin {
    /// The build host's apt configuration.
    Host,
    /// The recipe (`mirror` or `sources`).
    Recipe,
}

/// The sources of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// One-line entries.
    pub lines: Vec<String>,
    /// Origin.
    pub origin: SourceOrigin,
}

/// One parsed source entry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    options: Vec<String>,
    uri: String,
    suite: String,
    components: Vec<String>,
}

impl Entry {
    fn line(&self) -> String {
        let opts = if self.options.is_empty() {
            String::new()
        } else {
            format!("[{}] ", self.options.join(" "))
        };
        format!(
            "deb {opts}{} {} {}",
            self.uri,
            self.suite,
            self.components.join(" ")
        )
    }
}

/// Parses one-line `.list` text (only `deb` lines).
fn parse_list(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let mut rest = rest.trim();
        let mut options = Vec::new();
        if let Some(r) = rest.strip_prefix('[') {
            let Some((opts, after)) = r.split_once(']') else {
                continue;
            };
            options = opts.split_whitespace().map(String::from).collect();
            rest = after.trim();
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(Entry {
            options,
            uri: uri.into(),
            suite: suite.into(),
            components: words.map(String::from).collect(),
        });
    }
    out
}

/// Parses deb822 `.sources` text.
fn parse_deb822(text: &str) -> Vec<Entry> {
    let mut out = Vec::new();
    let clean: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    for para in clean.split("\n\n") {
        let field = |name: &str| {
            para.lines().find_map(|l| {
                l.split_once(':')
                    .filter(|(k, _)| k.trim().eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb")
            || field("Enabled").is_some_and(|e| e == "no")
        {
            continue;
        }
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else {
            continue;
        };
        let components: Vec<String> = field("Components")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let mut options = Vec::new();
        if let Some(sb) =
            field("Signed-By").filter(|s| s.starts_with('/') && !s.contains(char::is_whitespace))
        {
            options.push(format!("signed-by={sb}"));
        }
        if let Some(a) = field("Architectures") {
            options.push(format!(
                "arch={}",
                a.split_whitespace().collect::<Vec<_>>().join(",")
            ));
        }
        for uri in uris.split_whitespace() {
            for suite in suites.split_whitespace() {
                out.push(Entry {
                    options: options.clone(),
                    uri: uri.into(),
                    suite: suite.into(),
                    components: components.clone(),
                });
            }
        }
    }
    out
}

/// Rewrites a host suite (`bookworm`, `bookworm-updates`, `bookworm/updates`) to the recipe's;
/// `None` if the entry is not for the host's release.
fn rewrite_suite(suite: &str, host_codename: &str, target: &str) -> Option<String> {
    if suite == host_codename {
        return Some(target.into());
    }
    for sep in ['-', '/'] {
        if let Some(rest) = suite.strip_prefix(&format!("{host_codename}{sep}")) {
            return Some(format!("{target}{sep}{rest}"));
        }
    }
    None
}

/// The host's release codename from `os-release`.
pub fn host_codename(etc: &Path) -> Option<String> {
    let text = std::fs::read_to_string(etc.join("os-release"))
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_string())
        .filter(|v| !v.is_empty())
}

/// Reads the host's sources under `etc` (normally `/etc`) for suite `target`.
pub fn host_sources(etc: &Path, target: &str) -> Result<Sources, BuildError> {
    let codename = host_codename(etc).ok_or_else(|| BuildError::NoSources {
        detail: format!("no VERSION_CODENAME in {}/os-release", etc.display()),
    })?;
    let mut files: Vec<PathBuf> = vec![etc.join("apt/sources.list")];
    if let Ok(rd) = std::fs::read_dir(etc.join("apt/sources.list.d")) {
        let mut more: Vec<PathBuf> = rd.filter_map(Result::ok).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    let mut seen = BTreeSet::new();
    let mut lines = Vec::new();
    for f in &files {
        let name = f.to_string_lossy();
        let entries = if name.ends_with(".list") {
            std::fs::read_to_string(f)
                .map(|t| parse_list(&t))
                .unwrap_or_default()
        } else if name.ends_with(".sources") {
            std::fs::read_to_string(f)
                .map(|t| parse_deb822(&t))
                .unwrap_or_default()
        } else {
            continue;
        };
        for mut e in entries {
            let Some(s) = rewrite_suite(&e.suite, &codename, target) else {
                continue;
            };
            e.suite = s;
            let line = e.line();
            if seen.insert(line.clone()) {
                lines.push(line);
            }
        }
    }
    if lines.is_empty() {
        return Err(BuildError::NoSources {
            detail: format!("no `deb` entry for {codename} in {}/apt/sources.list or sources.list.d/*.list|*.sources", etc.display()),
        });
    }
    Ok(Sources {
        lines,
        origin: SourceOrigin::Host,
    })
}

/// The sources for a recipe's base section.
pub fn sources_for(base: &BaseSection) -> Result<Sources, BuildError> {
    if let Some(lines) = &base.sources {
        return Ok(Sources {
            lines: lines.clone(),
            origin: SourceOrigin::Recipe,
        });
    }
    if let Some(m) = &base.mirror {
        let comps = base
            .components
            .clone()
            .unwrap_or_else(|| vec!["main".into()]);
        return Ok(Sources {
            lines: vec![format!("deb {m} {} {}", base.suite, comps.join(" "))],
            origin: SourceOrigin::Recipe,
        });
    }
    host_sources(Path::new("/etc"), &base.suite)
}

/// Packages from `wanted` that `apt-cache policy` output does not list with a candidate.
pub fn missing_from_policy(policy: &str, wanted: &[String]) -> Vec<String> {
    let mut with_candidate = BTreeSet::new();
    let mut current: Option<&str> = None;
    for line in policy.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            current = Some(line.trim_end_matches(':'));
        } else if let (Some(c), Some(cand)) = (current, line.trim().strip_prefix("Candidate:")) {
            if cand.trim() != "(none)" {
                with_candidate.insert(c.to_string());
            }
        }
    }
    wanted
        .iter()
        .filter(|p| !with_candidate.contains(p.as_str()))
        .cloned()
        .collect()
}

/// Checks the packages against the host's apt cache, when that cache describes the sources the
/// build will use (host sources, host release, host architecture, lists present). Returns the
/// missing ones; an empty list when the check does not apply.
pub fn precheck_packages(base: &BaseSection, sources: &Sources) -> Vec<String> {
    if sources.origin != SourceOrigin::Host || base.packages.is_empty() {
        return Vec::new();
    }
    if host_codename(Path::new("/etc")).as_deref() != Some(base.suite.as_str()) {
        return Vec::new();
    }
    let arch = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if arch.as_deref() != Some(base.architecture.as_str()) {
        return Vec::new();
    }
    let has_lists = std::fs::read_dir("/var/lib/apt/lists")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if !has_lists {
        return Vec::new();
    }
    match Command::new("apt-cache")
        .arg("policy")
        .args(&base.packages)
        .output()
    {
        Ok(o) if o.status.success() => {
            missing_from_policy(&String::from_utf8_lossy(&o.stdout), &base.packages)
        }
        _ => Vec::new(),
    }
}

/// Package names apt reported as unknown in mmdebstrap's output.
pub fn unknown_packages_in_log(log: &str) -> Vec<String> {
    let mut out = BTreeSet::new();
    for line in log.lines() {
        if let Some(rest) = line.split("Unable to locate package ").nth(1) {
            out.insert(rest.trim().to_string());
        }
        if let Some(rest) = line.split("Package '").nth(1) {
            if line.contains("has no installation candidate") {
                if let Some(name) = rest.split('\'').next() {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deb822_and_rewrites_suites() {
        let text = "Types: deb\n# comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/k.gpg\n\nTypes: deb-src\nURIs: http://x.invalid\nSuites: bookworm\nComponents: main\n";
        let e = parse_deb822(text);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e[0].line(),
            "deb [signed-by=/usr/share/keyrings/k.gpg] http://mirror.invalid/debian bookworm main"
        );
        assert_eq!(
            rewrite_suite("bookworm-security", "bookworm", "trixie").as_deref(),
            Some("trixie-security")
        );
        assert_eq!(rewrite_suite("nodistro", "bookworm", "bookworm"), None);
        let l = parse_list("deb [arch=amd64] http://x.invalid/debian bookworm main contrib # c\ndeb-src http://y bookworm main\n");
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].components, vec!["main", "contrib"]);
    }

    #[test]
    fn finds_missing_packages() {
        let policy = "systemd:\n  Installed: 1\n  Candidate: 252\n  Version table:\nvirt:\n  Installed: (none)\n  Candidate: (none)\n";
        let wanted = vec![
            "systemd".to_string(),
            "virt".to_string(),
            "nope".to_string(),
        ];
        assert_eq!(missing_from_policy(policy, &wanted), vec!["virt", "nope"]);
        assert_eq!(
            unknown_packages_in_log("E: Unable to locate package nosuch-pkg\n"),
            vec!["nosuch-pkg"]
        );
    }
}
