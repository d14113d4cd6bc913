//! The real `outpost-collector run`, with a `collector.toml` written for a [`Gateway`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::gateway::{CliOutput, Gateway};
use crate::proc::{log_tail, run_bounded, Proc, CLI_TIMEOUT};
use crate::wait::{abort, wait_for};

/// Settings of a `collector.toml`.
#[derive(Debug, Clone)]
pub struct CollectorSettings {
    /// `host:port` of each gateway, primary first.
    pub gateways: Vec<String>,
    /// The Outpost CA certificate.
    pub ca_cert: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// Bootstrap token.
    pub bootstrap_token: String,
    /// Collection interval, e.g. `"1s"`.
    pub interval: String,
}

impl CollectorSettings {
    /// The file's text.
    #[must_use]
    pub fn to_toml(&self) -> String {
        let mut t = toml::Table::new();
        t.insert(
            "gateways".into(),
            toml::Value::Array(
                self.gateways
                    .iter()
                    .map(|g| toml::Value::String(g.clone()))
                    .collect(),
            ),
        );
        t.insert(
            "ca_cert".into(),
            self.ca_cert.to_string_lossy().into_owned().into(),
        );
        t.insert(
            "state_dir".into(),
            self.state_dir.to_string_lossy().into_owned().into(),
        );
        t.insert(
            "bootstrap_token".into(),
            self.bootstrap_token.clone().into(),
        );
        t.insert("interval".into(), self.interval.clone().into());
        toml::to_string(&t).unwrap_or_default()
    }
}

/// A collector with its own directory (`collector.toml`, `state/`, `collector.log`).
#[derive(Debug)]
pub struct Collector {
    bin: PathBuf,
    dir: PathBuf,
    settings: CollectorSettings,
    /// Further keys written after the settings (e.g. `spool_max_bytes`, `failback_probe`);
    /// a key here overrides the same key of the settings.
    extra: toml::Table,
    proc: Option<Proc>,
}

impl Collector {
    /// Writes `DIR/collector.toml` pointing at the running `gw` (its CA, a state dir in
    /// `DIR/state`, the token and interval). Does not start it.
    ///
    /// # Errors
    /// When the binary is missing or the files cannot be written.
    pub fn configure(
        dir: &Path,
        gw: &Gateway,
        token: &str,
        interval: &str,
    ) -> anyhow::Result<Self> {
        let bin = crate::bins::collector()?;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let settings = CollectorSettings {
            gateways: vec![gw.addr().to_string()],
            ca_cert: gw.ca_cert_path(),
            state_dir: dir.join("state"),
            bootstrap_token: token.to_string(),
            interval: interval.to_string(),
        };
        let c = Self {
            bin,
            dir: dir.to_path_buf(),
            settings,
            extra: toml::Table::new(),
            proc: None,
        };
        c.write_config()?;
        Ok(c)
    }

    /// [`Collector::configure`] then [`Collector::start`].
    ///
    /// # Errors
    /// As both.
    pub fn start_new(
        dir: &Path,
        gw: &Gateway,
        token: &str,
        interval: &str,
    ) -> anyhow::Result<Self> {
        let mut c = Self::configure(dir, gw, token, interval)?;
        c.start()?;
        Ok(c)
    }

    /// The settings written to the config file.
    #[must_use]
    pub fn settings(&self) -> &CollectorSettings {
        &self.settings
    }

    /// Points the collector at other gateways and rewrites the file (restart to apply).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set_gateways(&mut self, addrs: &[SocketAddr]) -> anyhow::Result<()> {
        self.settings.gateways = addrs.iter().map(ToString::to_string).collect();
        self.write_config()
    }

    /// Sets `key = value` in `collector.toml` besides the settings (overriding a setting of
    /// the same name) and rewrites the file; restart to apply.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn set_config(&mut self, key: &str, value: impl Into<toml::Value>) -> anyhow::Result<()> {
        self.extra.insert(key.to_string(), value.into());
        self.write_config()
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let p = self.config_path();
        let mut table: toml::Table = self
            .settings
            .to_toml()
            .parse()
            .context("the settings do not make TOML")?;
        for (k, v) in &self.extra {
            table.insert(k.clone(), v.clone());
        }
        std::fs::write(&p, toml::to_string(&table)?)
            .with_context(|| format!("failed to write {}", p.display()))
    }

    /// `outpost-collector status --config DIR/collector.toml --json` (reads the state
    /// directory only; run it while the collector is stopped for a settled answer).
    ///
    /// # Errors
    /// When it fails or prints something else than JSON.
    pub fn status_json(&self) -> anyhow::Result<serde_json::Value> {
        let config = self.config_path();
        let config = config.to_string_lossy();
        let out = collector_cli(&["status", "--config", &config, "--json"])?
            .ok("outpost-collector status --json")?;
        serde_json::from_str(&out).with_context(|| format!("status --json: {out}"))
    }

    /// `DIR/collector.toml`.
    #[must_use]
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("collector.toml")
    }

    /// The state directory.
    #[must_use]
    pub fn state_dir(&self) -> &Path {
        &self.settings.state_dir
    }

    /// The log file (appended across restarts).
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("collector.log")
    }

    /// Starts `outpost-collector run --config DIR/collector.toml`.
    ///
    /// # Errors
    /// When it is already running or cannot be started.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.proc.is_some() {
            bail!("collector in {} is already running", self.dir.display());
        }
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run").arg("--config").arg(self.config_path());
        self.proc = Some(Proc::spawn("outpost-collector run", cmd, &self.log_path())?);
        Ok(())
    }

    /// SIGTERM, bounded; SIGKILL after. Returns the exit status.
    ///
    /// # Errors
    /// When it is not running or had to be killed.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        self.proc
            .take()
            .ok_or_else(|| anyhow!("collector is not running"))?
            .terminate()
    }

    /// SIGKILL, as a power cut would.
    ///
    /// # Errors
    /// When it is not running or cannot be reaped.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        self.proc
            .take()
            .ok_or_else(|| anyhow!("collector is not running"))?
            .kill()
    }

    /// The process id while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().and_then(Proc::pid)
    }

    /// Whether the process is alive.
    ///
    /// # Errors
    /// When its status cannot be read.
    pub fn is_running(&mut self) -> anyhow::Result<bool> {
        match &mut self.proc {
            None => Ok(false),
            Some(p) => Ok(p.exit_status()?.is_none()),
        }
    }

    /// Waits (bounded) for `state_dir/enrollment.json` and returns its `id`.
    ///
    /// # Errors
    /// When it does not appear within `timeout` (the error carries the log tail).
    pub fn enrollment_id(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let file = self.state_dir().join("enrollment.json");
        let r = wait_for(
            "the collector to write enrollment.json",
            timeout,
            Duration::from_millis(100),
            || {
                if let Some(p) = &mut self.proc {
                    if let Some(st) = p.exit_status()? {
                        return Err(abort(format!("outpost-collector run exited with {st}")));
                    }
                }
                let Ok(text) = std::fs::read_to_string(&file) else {
                    return Ok(None);
                };
                let v: serde_json::Value = serde_json::from_str(&text)
                    .with_context(|| format!("{} is not JSON: {text:?}", file.display()))?;
                let id = v["id"]
                    .as_str()
                    .with_context(|| format!("{} has no string id: {text}", file.display()))?;
                Ok(Some(id.to_string()))
            },
        );
        r.map_err(|e| e.context(format!("collector log tail:\n{}", self.log_tail(40))))
    }

    /// The last `lines` lines of the log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Prints the log tail to stderr, framed with a title.
    pub fn dump_log(&self, lines: usize) {
        eprintln!(
            "----- collector log ({}) -----\n{}\n----- end of collector log -----",
            self.log_path().display(),
            self.log_tail(lines)
        );
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("OUTPOST_TEST_LOGS").is_some() {
            self.dump_log(60);
        }
        if let Some(mut p) = self.proc.take() {
            let _ = p.kill();
        }
    }
}

/// Runs `outpost-collector ARGS…` to completion (bounded).
///
/// # Errors
/// When the binary is missing, cannot be run or overruns.
pub fn collector_cli(args: &[&str]) -> anyhow::Result<CliOutput> {
    let mut cmd = Command::new(crate::bins::collector()?);
    cmd.args(args);
    Ok(run_bounded(cmd, CLI_TIMEOUT)?.into())
}
