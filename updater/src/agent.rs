//! The on-box agent: persisted state, install, boot check, restart, and the `run` loop.
//!
//! # State
//! [`AgentState`] lives in `STATE_DIR/state.json` (written to a temporary name, fsynced,
//! renamed), so a restarted agent resumes: the window in force, what is staged, whether a
//! restart was already asked for, the last error. Transitions are plain functions on the
//! value; [`save_state`] writes it out.
//!
//! # The loop (`outpost-updater run`)
//! * applies queued commands first (`GET /v1/commands?wait=0s&agent=updater`), then keeps a
//!   long-poll open in its own task: `set_window` stores the VAR's window, `restart` asks for an
//!   immediate restart; each is answered with `POST /v1/commands/{id}/result`;
//! * syncs the mirror every `feed.interval` (A1's [`crate::mirror::sync`]) and serves it on
//!   `mirror.listen` ([`crate::serve::serve`]);
//! * installs the newest mirrored version into the inactive slot while the install window is
//!   open;
//! * runs the restart command at the appliance's spread point inside the VAR's window, or at
//!   once after a `restart` command; with no VAR window it never restarts by itself: the staged
//!   version waits, reported as `pending restart`, for a window or an explicit `restart`;
//! * posts an [`UpdateState`] to `/v1/update-state` whenever the report changes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use jiff::Timestamp;
use outpost_proto::update::{UpdateState, WindowSpec, AGENT_UPDATER, CMD_RESTART, CMD_SET_WINDOW};
use outpost_proto::{paths, Command, CommandList, CommandResult};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::bootcount;
use crate::config::Config;
use crate::slots::{self, Installed, Slot};
use crate::windows::Window;

/// The agent's state file in its state directory.
pub const STATE_FILE: &str = "state.json";
/// File in the state directory holding the local mirror's bound address (`127.0.0.1:8080`),
/// written by `run` once it listens.
pub const MIRROR_ADDR_FILE: &str = "mirror.addr";
/// Largest state file read.
const MAX_STATE_BYTES: u64 = 1024 * 1024;
/// Long-poll wait asked of the gateway.
const POLL_WAIT: &str = "30s";
/// Timeout of one HTTP request (the long-poll gets its wait on top).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest output kept from a command run by the agent.
const MAX_OUTPUT: usize = 4096;

/// An agent operation that failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Reading or writing the state file failed.
    #[error("state file {}: {reason}", path.display())]
    State {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// The install failed (nothing was marked bootable).
    #[error(transparent)]
    Slot(#[from] slots::SlotError),
    /// A boot entry operation failed.
    #[error(transparent)]
    Boot(#[from] bootcount::BootError),
    /// The bundle could not be read.
    #[error("bundle {}: {reason}", path.display())]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Nothing to install.
    #[error("no bundle given and none mirrored yet (run `outpost-updater sync` first)")]
    NothingMirrored,
    /// The booted slot could not be found.
    #[error("cannot tell which slot is booted: no simulated boot record in {} and no root=PARTLABEL=root-a|root-b in {}", esp.display(), cmdline.display())]
    UnknownBootedSlot {
        /// The ESP.
        esp: PathBuf,
        /// The kernel command line file.
        cmdline: PathBuf,
    },
    /// The mirror sync failed.
    #[error("mirror sync failed: {0}")]
    Sync(String),
    /// Talking to the gateway failed.
    #[error("gateway request {what} failed: {reason}")]
    Gateway {
        /// Request.
        what: String,
        /// What failed.
        reason: String,
    },
    /// The restart command failed.
    #[error("restart command {command:?} failed: {reason}")]
    Restart {
        /// The command.
        command: Vec<String>,
        /// What failed.
        reason: String,
    },
}

/// A version installed into a slot and waiting for its first good boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Slot written.
    pub slot: String,
    /// Version.
    pub version: String,
    /// SHA-256 of the image.
    pub sha256: String,
}

/// Which step a recorded error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorSource {
    /// Mirror sync.
    Sync,
    /// Install into the inactive slot.
    Install,
    /// Boot check or a staged version that did not boot.
    Boot,
    /// The restart command.
    Restart,
    /// The local mirror server could not listen.
    Serve,
}

/// What the agent remembers across restarts (`state.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    /// Version in slot A.
    pub version_a: Option<String>,
    /// Version in slot B.
    pub version_b: Option<String>,
    /// Installed and marked to boot next; cleared by the boot check.
    pub staged: Option<Staged>,
    /// The restart command ran for the staged version; not again until the next boot.
    pub restart_done: bool,
    /// An operator asked for a restart (`restart` command) that has not run yet.
    pub restart_requested: bool,
    /// The VAR's window; `None`: no restart by the agent itself (only an explicit `restart`).
    pub window: Option<WindowSpec>,
    /// Newest mirrored version and its bundle.
    pub mirrored_version: Option<String>,
    /// Path of that bundle in the mirror.
    pub mirrored_bundle: Option<PathBuf>,
    /// Last error, with what failed.
    pub last_error: Option<String>,
    /// What [`Self::last_error`] came from, so a later success of the same kind clears it.
    pub last_error_from: Option<ErrorSource>,
    /// Versions that failed their boot; the loop does not install them again (an explicit
    /// `outpost-updater install BUNDLE` still does).
    pub rejected: Vec<String>,
}

impl AgentState {
    /// Version recorded for a slot.
    #[must_use]
    pub fn version_of(&self, slot: Slot) -> Option<&str> {
        match slot {
            Slot::A => self.version_a.as_deref(),
            Slot::B => self.version_b.as_deref(),
        }
    }

    fn reject(&mut self, version: &str) {
        if !self.rejected.iter().any(|v| v == version) {
            self.rejected.push(version.to_string());
        }
    }

    fn set_version(&mut self, slot: Slot, v: Option<String>) {
        match slot {
            Slot::A => self.version_a = v,
            Slot::B => self.version_b = v,
        }
    }

    /// Records a failure as the last error.
    pub fn set_error(&mut self, from: ErrorSource, msg: String) {
        self.last_error = Some(msg);
        self.last_error_from = Some(from);
    }

    /// A success of kind `from`: clears the last error when it came from the same kind (a
    /// later good sync clears a sync failure, not a health-check failure). A successful
    /// install clears every error: it is the outcome the others were in the way of.
    pub fn clear_error(&mut self, from: ErrorSource) {
        if from == ErrorSource::Install || self.last_error_from == Some(from) {
            self.last_error = None;
            self.last_error_from = None;
        }
    }

    /// Records a sync's outcome: the newest mirrored version, or the failure; a good sync
    /// clears an earlier sync failure.
    pub fn record_sync(&mut self, r: &SyncResult) {
        match r {
            Ok(latest) => {
                if let Some((version, bundle)) = latest {
                    self.mirrored_version = Some(version.clone());
                    self.mirrored_bundle = Some(bundle.clone());
                }
                self.clear_error(ErrorSource::Sync);
            }
            Err(e) => self.set_error(ErrorSource::Sync, format!("mirror sync failed: {e}")),
        }
    }

    /// The window restarts wait for: the VAR's, and only the VAR's. `Ok(None)` when none is
    /// set: the agent then never restarts by itself (an explicit `restart` still does).
    ///
    /// # Errors
    /// When the stored VAR window is invalid (it was checked on receipt, so only after a
    /// time-zone database change).
    pub fn restart_window(&self) -> Result<Option<Window>, String> {
        match &self.window {
            Some(w) if !w.ranges.is_empty() => {
                Window::parse(w).map(Some).map_err(|e| e.to_string())
            }
            _ => Ok(None),
        }
    }

    /// When the restart into the staged slot is due, if one is pending.
    #[must_use]
    pub fn restart_at(&self, cfg: &Config, id: &str, now: Timestamp) -> Option<Timestamp> {
        if self.restart_requested {
            return Some(now);
        }
        if self.staged.is_none() || self.restart_done {
            return None;
        }
        self.restart_window()
            .ok()??
            .restart_time(now, id, cfg.spread_max)
    }

    /// The report for the gateway.
    #[must_use]
    pub fn report(
        &self,
        cfg: &Config,
        booted: Option<Slot>,
        id: &str,
        now: Timestamp,
    ) -> UpdateState {
        UpdateState {
            current_version: booted
                .and_then(|s| self.version_of(s))
                .map(str::to_string)
                .or_else(|| Some(cfg.initial_version.clone())),
            current_slot: booted.map(|s| s.as_str().to_string()),
            mirrored_version: self.mirrored_version.clone(),
            staged_version: self.staged.as_ref().map(|s| s.version.clone()),
            pending_restart: (self.staged.is_some() && !self.restart_done)
                || self.restart_requested,
            restart_at_ms: self.restart_at(cfg, id, now).map(Timestamp::as_millisecond),
            window: self.window.clone(),
            last_error: self.last_error.clone(),
            channel: Some(cfg.channel.clone()),
            reported_at_ms: 0,
        }
    }
}

/// Writes the local mirror's bound address into [`MIRROR_ADDR_FILE`] in `dir` (temporary
/// name, rename).
///
/// # Errors
/// [`AgentError::State`] naming the file.
pub fn write_mirror_addr(dir: &Path, addr: std::net::SocketAddr) -> Result<(), AgentError> {
    let path = dir.join(MIRROR_ADDR_FILE);
    let tmp = dir.join(format!(".{MIRROR_ADDR_FILE}.tmp"));
    std::fs::write(&tmp, format!("{addr}\n"))
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| AgentError::State {
            path,
            reason: e.to_string(),
        })
}

/// Loads `state.json` from `dir`; a missing file is a fresh state.
///
/// # Errors
/// [`AgentError::State`] when it cannot be read or parsed.
pub fn load_state(dir: &Path) -> Result<AgentState, AgentError> {
    use std::io::Read;
    let path = dir.join(STATE_FILE);
    let err = |reason: String| AgentError::State {
        path: path.clone(),
        reason,
    };
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AgentState::default()),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut buf = Vec::new();
    f.take(MAX_STATE_BYTES)
        .read_to_end(&mut buf)
        .map_err(|e| err(e.to_string()))?;
    serde_json::from_slice(&buf).map_err(|e| err(format!("corrupt: {e}")))
}

/// Writes `state.json` into `dir` atomically (temporary name, fsync, rename), mode 0600.
///
/// # Errors
/// [`AgentError::State`].
pub fn save_state(dir: &Path, state: &AgentState) -> Result<(), AgentError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(STATE_FILE);
    let tmp = dir.join(format!(".{STATE_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(state).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| AgentError::State {
        path: path.clone(),
        reason: e.to_string(),
    })
}

/// The booted slot, by the ESP's simulated record or the kernel command line.
///
/// # Errors
/// [`AgentError::UnknownBootedSlot`].
pub fn booted_slot(cfg: &Config) -> Result<Slot, AgentError> {
    slots::booted_slot(&cfg.slots.esp, &cfg.cmdline).ok_or_else(|| AgentError::UnknownBootedSlot {
        esp: cfg.slots.esp.clone(),
        cmdline: cfg.cmdline.clone(),
    })
}

/// The appliance id from the collector's `enrollment.json` (used for the spread); the
/// certificate's file name when not enrolled yet.
#[must_use]
pub fn appliance_id(cfg: &Config) -> String {
    #[derive(Deserialize)]
    struct Enrollment {
        id: String,
    }
    std::fs::read(cfg.collector_state_dir.join("enrollment.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Enrollment>(&b).ok())
        .map_or_else(|| "unenrolled".to_string(), |e| e.id)
}

/// Installs `bundle` into the inactive slot and records it as staged. Skips (returns
/// `Ok(None)`) when that version already runs or is staged.
///
/// # Errors
/// [`AgentError`]; on error nothing is marked bootable and `state` records the error.
pub fn install_bundle(
    cfg: &Config,
    state: &mut AgentState,
    bundle: &Path,
) -> Result<Option<Installed>, AgentError> {
    let result = install_inner(cfg, state, bundle);
    if let Err(e) = &result {
        state.set_error(ErrorSource::Install, format!("install failed: {e}"));
    }
    result
}

fn install_inner(
    cfg: &Config,
    state: &mut AgentState,
    bundle: &Path,
) -> Result<Option<Installed>, AgentError> {
    let booted = booted_slot(cfg)?;
    let manifest = crate::bundle::read_manifest(bundle).map_err(|e| AgentError::Bundle {
        path: bundle.to_path_buf(),
        reason: e.to_string(),
    })?;
    let version = manifest.version;
    if state.version_of(booted) == Some(version.as_str())
        || state.staged.as_ref().is_some_and(|s| s.version == version)
    {
        debug!(%version, "already running or staged");
        return Ok(None);
    }
    info!(%version, slot = %booted.other(), bundle = %bundle.display(), "installing");
    let installed = slots::install(&cfg.slots, booted, &version, |w| {
        crate::bundle::stream_root_image(bundle, w).map_err(|e| e.to_string())
    })?;
    state.set_version(installed.slot, Some(version.clone()));
    state.staged = Some(Staged {
        slot: installed.slot.as_str().to_string(),
        version: version.clone(),
        sha256: installed.sha256.clone(),
    });
    state.restart_done = false;
    state.clear_error(ErrorSource::Install);
    info!(%version, slot = %installed.slot, entry = %installed.entry, bytes = installed.bytes, "installed and marked to boot next");
    Ok(Some(installed))
}

/// What [`boot_check`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootCheck {
    /// The booted slot was on trial and passed: blessed.
    Committed {
        /// Slot.
        slot: Slot,
    },
    /// The booted slot was on trial and failed: marked bad; the next boot falls back.
    Failed {
        /// Slot.
        slot: Slot,
        /// Why.
        reason: String,
    },
    /// The booted slot was already committed; a staged version did not come up.
    FellBack {
        /// Slot running.
        slot: Slot,
        /// Version that did not boot.
        version: String,
    },
    /// Nothing was on trial.
    Nothing {
        /// Slot running.
        slot: Slot,
    },
}

/// Whether [`boot_check`] will judge the booted slot by the health check: its entry is on
/// trial and it holds the version this agent staged. An entry on trial that the agent did not
/// stage (the factory's `+3` entries, or a state directory that was lost) is committed without
/// the check, so [`health_check`] need not run (and wait) for it.
///
/// # Errors
/// [`AgentError`] when the booted slot or its entry cannot be read.
pub fn needs_health_check(cfg: &Config, state: &AgentState) -> Result<bool, AgentError> {
    let slot = booted_slot(cfg)?;
    let entry = bootcount::find_entry(&cfg.slots.esp, slot)?;
    Ok(entry.as_ref().is_some_and(|e| e.name.counter.is_some()) && staged_in(state, slot))
}

fn staged_in(state: &AgentState, slot: Slot) -> bool {
    state
        .staged
        .as_ref()
        .is_some_and(|s| s.slot == slot.as_str())
}

/// After boot: if the booted entry is on trial, blesses it or marks it bad; notices a
/// fallback; updates `state`.
///
/// Only a version this agent staged is judged by `health`: healthy, its entry is blessed
/// (renamed without the counter); unhealthy, it is marked bad (`+0-N`) and rejected. An
/// entry on trial that the agent did not stage (the factory's `+3`, or after `state.json` was
/// lost) is blessed without calling `health`: marking it bad would only send the box to the
/// other factory slot, or back to one that is no better known. The blessing is the agent's own
/// (file-backed ESPs have no systemd-bless-boot); on a box, `systemd-bless-boot.service` runs
/// after `boot-complete.target`, finds the entry already renamed and does nothing
/// (docs/updates.md).
///
/// # Errors
/// [`AgentError`] when the booted slot or the entries cannot be read or renamed.
pub fn boot_check(
    cfg: &Config,
    state: &mut AgentState,
    health: impl FnOnce() -> Result<(), String>,
) -> Result<BootCheck, AgentError> {
    let slot = booted_slot(cfg)?;
    let entry = bootcount::find_entry(&cfg.slots.esp, slot)?;
    let on_trial = entry.as_ref().is_some_and(|e| e.name.counter.is_some());
    state.restart_done = false;
    state.restart_requested = false;
    if on_trial && !staged_in(state, slot) {
        bootcount::bless(&cfg.slots.esp, slot)?;
        info!(%slot, "on trial but not staged by this agent (factory entry or lost state); committed without the health check");
        return Ok(BootCheck::Committed { slot });
    }
    if on_trial {
        let version = state.version_of(slot).unwrap_or("unknown").to_string();
        return Ok(match health() {
            Ok(()) => {
                bootcount::bless(&cfg.slots.esp, slot)?;
                state.staged = None;
                state.clear_error(ErrorSource::Boot);
                info!(%slot, %version, "health check passed; slot committed");
                BootCheck::Committed { slot }
            }
            Err(reason) => {
                bootcount::mark_bad(&cfg.slots.esp, slot)?;
                state.staged = None;
                state.set_version(slot, None);
                state.reject(&version);
                let msg = format!(
                    "health check failed on slot {slot} (version {version}): {reason}; slot marked bad, the next boot falls back to slot {}",
                    slot.other()
                );
                warn!("{msg}");
                state.set_error(ErrorSource::Boot, msg);
                BootCheck::Failed { slot, reason }
            }
        });
    }
    if let Some(st) = state.staged.take() {
        if st.slot != slot.as_str() {
            let msg = format!(
                "staged version {} in slot {} did not boot; running slot {slot}",
                st.version, st.slot
            );
            warn!("{msg}");
            state.set_error(ErrorSource::Boot, msg);
            if let Some(other) = Slot::parse(&st.slot) {
                state.set_version(other, None);
            }
            state.reject(&st.version);
            return Ok(BootCheck::FellBack {
                slot,
                version: st.version,
            });
        }
    }
    Ok(BootCheck::Nothing { slot })
}

/// Runs a program with arguments in `cwd`, bounded by `timeout`; `Ok` on exit status 0.
///
/// # Errors
/// The reason, with the command and its (capped) output.
pub async fn run_command(argv: &[String], cwd: &Path, timeout: Duration) -> Result<(), String> {
    let Some((prog, args)) = argv.split_first() else {
        return Err("empty command".into());
    };
    let child = tokio::process::Command::new(prog)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("{argv:?}: cannot start: {e}"))?;
    let out = tokio::time::timeout(timeout, child.wait_with_output())
        .await
        .map_err(|_| format!("{argv:?}: still running after {}s", timeout.as_secs()))?
        .map_err(|e| format!("{argv:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let mut text = String::from_utf8_lossy(&out.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stdout));
        let text: String = text.trim().chars().take(MAX_OUTPUT).collect();
        Err(format!("{argv:?} exited with {}: {text}", out.status))
    }
}

/// One pass of the health checks: collector fresh, units active, commands exit 0.
///
/// # Errors
/// The first check that failed, named.
pub async fn health_once(cfg: &Config) -> Result<(), String> {
    if let Some(within) = cfg.health.collector_within {
        let p = cfg.collector_state_dir.join("state.json");
        let age = std::fs::metadata(&p)
            .and_then(|m| m.modified())
            .map_err(|e| format!("collector not connected: cannot read {}: {e}", p.display()))?
            .elapsed()
            .unwrap_or_default();
        if age > within {
            return Err(format!(
                "collector not connected: {} last written {}s ago (limit {}s)",
                p.display(),
                age.as_secs(),
                within.as_secs()
            ));
        }
    }
    let cwd = &cfg.state_dir;
    for unit in &cfg.health.services {
        let argv = vec![
            "systemctl".to_string(),
            "is-active".into(),
            "--quiet".into(),
            unit.clone(),
        ];
        run_command(&argv, cwd, Duration::from_secs(30))
            .await
            .map_err(|e| format!("service {unit} is not active: {e}"))?;
    }
    for argv in &cfg.health.commands {
        run_command(argv, cwd, Duration::from_secs(60))
            .await
            .map_err(|e| format!("health command failed: {e}"))?;
    }
    Ok(())
}

/// The health checks, retried every 2 s until they pass or `health.timeout` runs out.
///
/// # Errors
/// The last failure.
pub async fn health_check(cfg: &Config) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + cfg.health.timeout;
    loop {
        match health_once(cfg).await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                debug!("health check not passing yet: {e}");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// Runs the configured restart command.
///
/// # Errors
/// [`AgentError::Restart`].
pub async fn restart(cfg: &Config) -> Result<(), AgentError> {
    info!(command = ?cfg.restart_command, "restarting");
    run_command(
        &cfg.restart_command,
        &cfg.state_dir,
        Duration::from_secs(60),
    )
    .await
    .map_err(|reason| AgentError::Restart {
        command: cfg.restart_command.clone(),
        reason,
    })
}

/// mTLS client to the gateways, with the collector's identity.
///
/// # Errors
/// [`AgentError::Gateway`] when the identity files cannot be used.
pub fn gateway_client(cfg: &Config) -> Result<reqwest::Client, AgentError> {
    crate::mirror::mtls_client(&cfg.ca_cert, &cfg.client_cert, &cfg.client_key).map_err(|e| {
        AgentError::Gateway {
            what: "client setup".into(),
            reason: e.to_string(),
        }
    })
}

/// Talks to the gateways in order; remembers the one that answered last.
#[derive(Debug, Clone)]
pub struct Uplink {
    client: reqwest::Client,
    gateways: Vec<String>,
    current: usize,
}

impl Uplink {
    /// A new uplink.
    #[must_use]
    pub fn new(client: reqwest::Client, gateways: Vec<String>) -> Self {
        Self {
            client,
            gateways,
            current: 0,
        }
    }

    async fn send(
        &mut self,
        what: &str,
        build: impl Fn(&reqwest::Client, &str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, AgentError> {
        let mut last = String::from("no gateway configured");
        for i in 0..self.gateways.len() {
            let idx = (self.current + i) % self.gateways.len();
            let base = format!("https://{}", self.gateways[idx]);
            match build(&self.client, &base).send().await {
                Ok(r) if r.status().is_success() => {
                    self.current = idx;
                    return Ok(r);
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    last = format!(
                        "{base}: HTTP {status}: {}",
                        body.chars().take(300).collect::<String>()
                    );
                }
                Err(e) => last = format!("{base}: {e}"),
            }
        }
        Err(AgentError::Gateway {
            what: what.to_string(),
            reason: last,
        })
    }

    /// Fetches queued updater commands, waiting up to `wait` (e.g. `30s`).
    ///
    /// # Errors
    /// [`AgentError::Gateway`].
    pub async fn commands(&mut self, wait: &str) -> Result<Vec<Command>, AgentError> {
        let secs = humantime::parse_duration(wait).unwrap_or_default();
        let r = self
            .send("GET /v1/commands", |c, base| {
                c.get(format!(
                    "{base}{}?wait={wait}&agent={AGENT_UPDATER}",
                    paths::COMMANDS
                ))
                .timeout(REQUEST_TIMEOUT + secs)
            })
            .await?;
        let list: CommandList = r.json().await.map_err(|e| AgentError::Gateway {
            what: "GET /v1/commands".into(),
            reason: format!("bad answer: {e}"),
        })?;
        Ok(list.commands)
    }

    /// Posts a command's result.
    ///
    /// # Errors
    /// [`AgentError::Gateway`].
    pub async fn post_result(
        &mut self,
        id: &str,
        result: &CommandResult,
    ) -> Result<(), AgentError> {
        let path = paths::COMMAND_RESULT.replace("{id}", id);
        self.send(&format!("POST {path}"), |c, base| {
            c.post(format!("{base}{path}"))
                .json(result)
                .timeout(REQUEST_TIMEOUT)
        })
        .await
        .map(|_| ())
    }

    /// Posts the update state.
    ///
    /// # Errors
    /// [`AgentError::Gateway`].
    pub async fn post_state(&mut self, st: &UpdateState) -> Result<(), AgentError> {
        self.send("POST /v1/update-state", |c, base| {
            c.post(format!("{base}{}", paths::UPDATE_STATE))
                .json(st)
                .timeout(REQUEST_TIMEOUT)
        })
        .await
        .map(|_| ())
    }
}

/// What a command asks of the agent, parsed (no effects yet).
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Store this window (`None`: back to the default).
    SetWindow(Option<WindowSpec>),
    /// Restart now.
    Restart,
}

/// Parses a command into an [`Action`].
///
/// # Errors
/// The reason, sent back as the command's failed result.
pub fn parse_command(cmd: &Command) -> Result<Action, String> {
    match cmd.kind.as_str() {
        CMD_SET_WINDOW => {
            let spec: WindowSpec = serde_json::from_value(cmd.args.clone())
                .map_err(|e| format!("set_window: bad window: {e}"))?;
            Window::parse(&spec).map_err(|e| format!("set_window: {e}"))?;
            Ok(Action::SetWindow(if spec.ranges.is_empty() {
                None
            } else {
                Some(spec)
            }))
        }
        CMD_RESTART => Ok(Action::Restart),
        other => Err(format!("unknown command kind {other:?} for the updater")),
    }
}

/// Applies an action to the state (no I/O); returns the text for the command result.
pub fn apply_action(state: &mut AgentState, action: Action) -> String {
    match action {
        Action::SetWindow(None) => {
            state.window = None;
            "window cleared; no restart until a window is set or a restart is asked for".into()
        }
        Action::SetWindow(Some(w)) => {
            state.window = Some(w);
            "window stored".into()
        }
        Action::Restart => {
            state.restart_requested = true;
            "restart requested".into()
        }
    }
}

/// `outpost-updater run`: the agent loop, until `shutdown` resolves.
///
/// # Errors
/// [`AgentError`] when the state cannot be loaded or the client cannot be set up.
#[allow(clippy::too_many_lines)] // reason: the loop reads best in one place
pub async fn run(
    cfg: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    let mut state = load_state(&cfg.state_dir)?;
    save_state(&cfg.state_dir, &state)?;
    let id = appliance_id(&cfg);
    let client = gateway_client(&cfg)?;
    let mut uplink = Uplink::new(client.clone(), cfg.gateways.clone());
    info!(appliance = %id, gateways = ?cfg.gateways, channel = %cfg.channel, "updater running");

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });

    if let Some(listen) = cfg.mirror_listen {
        match tokio::net::TcpListener::bind(listen).await {
            Ok(listener) => {
                state.clear_error(ErrorSource::Serve);
                // The bound address (port 0 picks one) for the VMs' provisioning and tests.
                if let Ok(addr) = listener.local_addr() {
                    info!(%addr, "local mirror listening");
                    if let Err(e) = write_mirror_addr(&cfg.state_dir, addr) {
                        warn!("{e}");
                    }
                }
                let store = cfg.state_dir.join("mirror");
                let mut stop = stop_rx.clone();
                tokio::spawn(async move {
                    let sd = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    if let Err(e) = crate::serve::serve_on(listener, store, sd).await {
                        warn!("local mirror on {listen} stopped: {e}");
                    }
                });
            }
            Err(e) => {
                let msg = format!("local mirror not served: cannot listen on {listen}: {e}");
                warn!("{msg}");
                state.set_error(ErrorSource::Serve, msg);
            }
        }
    }

    // Commands queued while we were down come first: the VAR's window decides what we do.
    match uplink.commands("0s").await {
        Ok(cmds) => {
            for c in cmds {
                handle_command(&cfg, &mut state, &mut uplink, &c).await;
            }
        }
        Err(e) => warn!("{e}"),
    }

    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<Command>(16);
    {
        let mut poller = uplink.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let r = tokio::select! {
                    r = poller.commands(POLL_WAIT) => r,
                    _ = stop.wait_for(|s| *s) => return,
                };
                match r {
                    Ok(cmds) => {
                        backoff = Duration::from_secs(1);
                        for c in cmds {
                            if cmd_tx.send(c).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        warn!("{e}");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        });
    }

    let mut last_sync: Option<tokio::time::Instant> = None;
    let mut sync_task: Option<tokio::task::JoinHandle<SyncResult>> = None;
    let mut last_report: Option<UpdateState> = None;
    // A failed install is retried after a sync interval, not at every tick.
    let mut failed_install: Option<(Option<String>, tokio::time::Instant)> = None;
    let mut stop = stop_rx.clone();
    loop {
        // Mirror sync, in the background.
        if sync_task.is_none() && last_sync.is_none_or(|t| t.elapsed() >= cfg.sync_interval) {
            last_sync = Some(tokio::time::Instant::now());
            let c = cfg.clone();
            sync_task = Some(tokio::spawn(async move { sync_mirror(&c).await }));
        }
        if sync_task
            .as_ref()
            .is_some_and(tokio::task::JoinHandle::is_finished)
        {
            if let Some(t) = sync_task.take() {
                match t.await {
                    Ok(r) => {
                        if let Err(e) = &r {
                            warn!("mirror sync failed: {e}");
                        }
                        state.record_sync(&r);
                    }
                    Err(e) => warn!("mirror sync task: {e}"),
                }
            }
        }

        // Install in the install window.
        let now = Timestamp::now();
        if let Some(bundle) = state.mirrored_bundle.clone() {
            let wanted = state.mirrored_version.clone();
            let running = booted_slot(&cfg)
                .ok()
                .and_then(|s| state.version_of(s).map(str::to_string));
            let staged = state.staged.as_ref().map(|s| s.version.clone());
            if wanted.is_some()
                && wanted != running
                && wanted != staged
                && !wanted.as_ref().is_some_and(|v| state.rejected.contains(v))
                && !failed_install
                    .as_ref()
                    .is_some_and(|(v, t)| *v == wanted && t.elapsed() < cfg.sync_interval)
                && cfg.install_window.is_open(now)
            {
                let c = cfg.clone();
                let mut st = state.clone();
                match tokio::task::spawn_blocking(move || {
                    let r = install_bundle(&c, &mut st, &bundle);
                    (st, r)
                })
                .await
                {
                    Ok((st, r)) => {
                        state = st;
                        if let Err(e) = r {
                            warn!("{e}");
                            failed_install = Some((wanted, tokio::time::Instant::now()));
                        }
                    }
                    Err(e) => warn!("install task: {e}"),
                }
            }
        }

        // Restart when due.
        if state
            .restart_at(&cfg, &id, Timestamp::now())
            .is_some_and(|t| t <= Timestamp::now())
        {
            let explicit = state.restart_requested;
            state.restart_requested = false;
            state.restart_done = true;
            save_state(&cfg.state_dir, &state)?;
            info!(explicit, "restart due");
            match restart(&cfg).await {
                Ok(()) => state.clear_error(ErrorSource::Restart),
                Err(e) => {
                    warn!("{e}");
                    state.set_error(ErrorSource::Restart, e.to_string());
                }
            }
        }

        save_state(&cfg.state_dir, &state)?;
        let booted = booted_slot(&cfg).ok();
        let report = state.report(&cfg, booted, &id, Timestamp::now());
        if last_report.as_ref() != Some(&report) {
            let mut sent = report.clone();
            sent.reported_at_ms = Timestamp::now().as_millisecond();
            match uplink.post_state(&sent).await {
                Ok(()) => last_report = Some(report),
                Err(e) => warn!("{e}"),
            }
        }

        tokio::select! {
            Some(c) = cmd_rx.recv() => handle_command(&cfg, &mut state, &mut uplink, &c).await,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    if let Some(t) = sync_task {
        t.abort();
    }
    save_state(&cfg.state_dir, &state)?;
    info!("updater stopped");
    Ok(())
}

async fn handle_command(cfg: &Config, state: &mut AgentState, uplink: &mut Uplink, c: &Command) {
    let result = match parse_command(c) {
        Ok(action) => {
            info!(id = %c.id, kind = %c.kind, "command");
            let out = apply_action(state, action);
            match save_state(&cfg.state_dir, state) {
                Ok(()) => CommandResult {
                    ok: true,
                    output: out,
                },
                Err(e) => CommandResult {
                    ok: false,
                    output: e.to_string(),
                },
            }
        }
        Err(e) => {
            warn!(id = %c.id, kind = %c.kind, "refused command: {e}");
            CommandResult {
                ok: false,
                output: e,
            }
        }
    };
    if let Err(e) = uplink.post_result(&c.id, &result).await {
        warn!("{e}");
    }
}

/// Outcome of [`sync_mirror`]: the newest mirrored version and its bundle, if any.
pub type SyncResult = Result<Option<(String, PathBuf)>, String>;

/// One mirror sync with the config's settings; the newest mirrored version and its bundle.
///
/// # Errors
/// The sync's error text.
pub async fn sync_mirror(cfg: &Config) -> SyncResult {
    let mc = crate::mirror::MirrorConfig {
        gateways: cfg.gateways.clone(),
        ca_cert: cfg.ca_cert.clone(),
        client_cert: cfg.client_cert.clone(),
        client_key: cfg.client_key.clone(),
        trusted_root: cfg.trusted_root.clone(),
        channel: cfg.channel.clone(),
        store_dir: cfg.state_dir.join("mirror"),
        keep: cfg.keep,
        bandwidth_bytes_per_sec: cfg.bandwidth_bytes_per_sec,
    };
    let out = crate::mirror::sync(&mc).await.map_err(|e| e.to_string())?;
    Ok(out.latest.map(|m| (m.version, m.bundle_path)))
}

/// Posts the state once (for the one-shot subcommands); failures are logged, not fatal.
pub async fn report_once(cfg: &Config, state: &AgentState) {
    let client = match gateway_client(cfg) {
        Ok(c) => c,
        Err(e) => {
            warn!("not reporting: {e}");
            return;
        }
    };
    let mut up = Uplink::new(client, cfg.gateways.clone());
    let id = appliance_id(cfg);
    let mut st = state.report(cfg, booted_slot(cfg).ok(), &id, Timestamp::now());
    st.reported_at_ms = Timestamp::now().as_millisecond();
    if let Err(e) = up.post_state(&st).await {
        warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cmd(kind: &str, args: serde_json::Value) -> Command {
        Command {
            id: "c1".into(),
            kind: kind.into(),
            args,
            created_at_ms: 0,
        }
    }

    #[test]
    fn commands_parse_into_actions() {
        let w = json!({"tz": "Europe/Berlin", "ranges": [{"days": ["sat"], "start": "22:00", "end": "02:00"}]});
        let a = parse_command(&cmd(CMD_SET_WINDOW, w)).unwrap();
        assert!(matches!(a, Action::SetWindow(Some(_))));
        let a = parse_command(&cmd(CMD_SET_WINDOW, json!({"tz": "UTC", "ranges": []}))).unwrap();
        assert_eq!(a, Action::SetWindow(None));
        assert_eq!(
            parse_command(&cmd(CMD_RESTART, json!({}))).unwrap(),
            Action::Restart
        );
        let e = parse_command(&cmd(
            CMD_SET_WINDOW,
            json!({"tz": "Nope/Nope", "ranges": []}),
        ))
        .unwrap_err();
        assert!(e.contains("Nope/Nope"), "{e}");
        assert!(parse_command(&cmd("ping", json!({}))).is_err());
    }

    fn test_config() -> Config {
        let p = Path::new("/etc/outpost/updater.toml");
        crate::config::RawConfig::parse(p, "box_tz = \"UTC\"\n")
            .unwrap()
            .resolve(p, Path::new("/etc/outpost"))
            .unwrap()
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn staged_state() -> AgentState {
        AgentState {
            staged: Some(Staged {
                slot: "b".into(),
                version: "1.1.0".into(),
                sha256: "00".into(),
            }),
            ..AgentState::default()
        }
    }

    /// Regression: with no VAR window the agent restarted inside the install window.
    #[test]
    fn without_a_var_window_a_staged_version_waits_for_an_explicit_restart() {
        let cfg = test_config();
        let mut st = staged_state();
        assert!(cfg.install_window.is_open(ts("2026-11-24T02:00:00Z")));
        // Inside the install window (01:00-05:00 UTC) and outside it: never by itself.
        for now in [
            "2026-11-24T02:00:00Z",
            "2026-11-24T04:59:00Z",
            "2026-11-24T12:00:00Z",
        ] {
            let now = ts(now);
            assert_eq!(st.restart_window(), Ok(None));
            assert_eq!(st.restart_at(&cfg, "app-1", now), None, "{now}");
            let r = st.report(&cfg, Some(Slot::A), "app-1", now);
            assert!(r.pending_restart, "{r:?}");
            assert_eq!(r.restart_at_ms, None, "{r:?}");
        }
        // An empty VAR window is no window either.
        st.window = Some(WindowSpec {
            tz: "UTC".into(),
            ranges: Vec::new(),
        });
        assert_eq!(
            st.restart_at(&cfg, "app-1", ts("2026-11-24T02:00:00Z")),
            None
        );
        // The operator's explicit restart still goes through, at once.
        let now = ts("2026-11-24T12:00:00Z");
        apply_action(&mut st, Action::Restart);
        assert_eq!(st.restart_at(&cfg, "app-1", now), Some(now));
    }

    #[test]
    fn a_var_window_sets_the_restart_inside_it() {
        let cfg = test_config();
        let mut st = staged_state();
        let w = crate::windows::daily_spec("UTC", "20:00", "22:00");
        apply_action(&mut st, Action::SetWindow(Some(w)));
        let now = ts("2026-11-24T12:00:00Z");
        let at = st.restart_at(&cfg, "app-1", now).unwrap();
        assert!(
            at >= ts("2026-11-24T20:00:00Z") && at < ts("2026-11-24T22:00:00Z"),
            "{at}"
        );
        assert!(st.report(&cfg, Some(Slot::A), "app-1", now).pending_restart);
        // Cleared: back to no restart by itself.
        let msg = apply_action(&mut st, Action::SetWindow(None));
        assert!(msg.contains("no restart"), "{msg}");
        assert_eq!(st.restart_at(&cfg, "app-1", now), None);
    }

    /// Regression: a sync failure stayed in the report after later syncs succeeded.
    #[test]
    fn a_good_sync_clears_an_earlier_sync_error() {
        let cfg = test_config();
        let now = ts("2026-11-24T12:00:00Z");
        let mut st = AgentState::default();
        st.record_sync(&Err("gateway 127.0.0.1:1: connection refused".into()));
        let r = st.report(&cfg, Some(Slot::A), "app-1", now);
        assert!(
            r.last_error
                .as_deref()
                .is_some_and(|e| e.starts_with("mirror sync failed")),
            "{r:?}"
        );
        st.record_sync(&Ok(None));
        assert_eq!(
            st.report(&cfg, Some(Slot::A), "app-1", now).last_error,
            None
        );
        st.record_sync(&Err("timeout".into()));
        st.record_sync(&Ok(Some(("1.1.0".into(), PathBuf::from("b.tar.zst")))));
        assert_eq!(st.last_error, None);
        assert_eq!(st.mirrored_version.as_deref(), Some("1.1.0"));
        // The error survives a reload of state.json.
        st.record_sync(&Err("timeout".into()));
        let dir = tempfile::tempdir().unwrap();
        save_state(dir.path(), &st).unwrap();
        let mut st = load_state(dir.path()).unwrap();
        st.record_sync(&Ok(None));
        assert_eq!(st.last_error, None);
    }

    #[test]
    fn a_good_sync_keeps_a_health_failure_and_a_good_install_clears_everything() {
        let mut st = AgentState::default();
        st.set_error(ErrorSource::Boot, "health check failed on slot b".into());
        st.record_sync(&Ok(None));
        assert!(st
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("health")));
        st.set_error(ErrorSource::Install, "install failed: disk".into());
        st.clear_error(ErrorSource::Sync);
        assert!(st.last_error.is_some());
        st.clear_error(ErrorSource::Install);
        assert_eq!((st.last_error, st.last_error_from), (None, None));
    }

    /// A file-backed box: slot a booted (kernel command line), entries as given.
    fn trial_box(entries: &[&str]) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let esp = dir.path().join("esp/loader/entries");
        std::fs::create_dir_all(&esp).unwrap();
        for e in entries {
            std::fs::write(
                esp.join(e),
                "title t\nsort-key outpost\nversion 1\nlinux /l\noptions root=PARTLABEL=root-a rw\n",
            )
            .unwrap();
        }
        std::fs::write(dir.path().join("cmdline"), "root=PARTLABEL=root-a rw\n").unwrap();
        let p = dir.path().join("updater.toml");
        let cfg = crate::config::RawConfig::parse(
            &p,
            "box_tz = \"UTC\"\n[slots]\nesp = \"esp\"\ncmdline = \"cmdline\"\n",
        )
        .unwrap()
        .resolve(&p, dir.path())
        .unwrap();
        (dir, cfg)
    }

    fn entry_names(cfg: &Config) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(cfg.slots.esp.join("loader/entries"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// Regression: the factory's counted entry, booted without a gateway in reach, failed the
    /// collector check, was marked bad and the box rebooted into the other factory slot.
    #[test]
    fn a_factory_entry_on_trial_is_committed_without_the_health_check() {
        let (_dir, cfg) = trial_box(&["outpost-a+2-1.conf", "outpost-b+3.conf"]);
        let mut st = AgentState::default();
        assert!(!needs_health_check(&cfg, &st).unwrap());
        let out = boot_check(&cfg, &mut st, || {
            panic!("health check run for a factory entry")
        });
        assert_eq!(out.unwrap(), BootCheck::Committed { slot: Slot::A });
        assert_eq!(entry_names(&cfg), ["outpost-a.conf", "outpost-b+3.conf"]);
        assert_eq!(st.last_error, None);
    }

    #[test]
    fn a_staged_version_on_trial_is_judged_by_the_health_check() {
        let (_dir, cfg) = trial_box(&["outpost-a+2-1.conf", "outpost-b.conf"]);
        let mut st = AgentState {
            version_a: Some("1.1.0".into()),
            staged: Some(Staged {
                slot: "a".into(),
                version: "1.1.0".into(),
                sha256: "00".into(),
            }),
            ..AgentState::default()
        };
        assert!(needs_health_check(&cfg, &st).unwrap());
        let out = boot_check(&cfg, &mut st, || Err("collector not connected".into())).unwrap();
        assert!(
            matches!(out, BootCheck::Failed { slot: Slot::A, .. }),
            "{out:?}"
        );
        assert_eq!(entry_names(&cfg), ["outpost-a+0-3.conf", "outpost-b.conf"]);
        assert_eq!(st.rejected, ["1.1.0"]);
        assert!(!needs_health_check(&cfg, &st).unwrap());
    }

    #[test]
    fn state_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = load_state(dir.path()).unwrap();
        assert_eq!(st, AgentState::default());
        apply_action(&mut st, Action::Restart);
        st.version_a = Some("1.0.0".into());
        save_state(dir.path(), &st).unwrap();
        assert_eq!(load_state(dir.path()).unwrap(), st);
        std::fs::write(dir.path().join(STATE_FILE), "{oops").unwrap();
        let e = load_state(dir.path()).unwrap_err().to_string();
        assert!(e.contains(STATE_FILE) && e.contains("corrupt"), "{e}");
    }
}
