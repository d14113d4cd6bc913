//! The real `outpost-gateway`: `init` into a directory, `serve` on `127.0.0.1:0`, and its
//! operator CLI (`token`, `appliances`, `commands`) against the same `gateway.toml`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use serde_json::Value;

use crate::proc::{log_tail, run_bounded, Proc, CLI_TIMEOUT};
use crate::wait::{abort, wait_for};

/// How long `serve` may take to write its address file.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The SANs tests give the server certificate.
pub const LOOPBACK_SANS: [&str; 2] = ["127.0.0.1", "localhost"];

/// What a CLI command did.
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOutput {
    /// The exit code (`None` when killed by a signal).
    #[must_use]
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Whether it exited 0.
    #[must_use]
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Stdout if it exited 0, else an error carrying the code and stderr.
    ///
    /// # Errors
    /// When it did not exit 0.
    pub fn ok(self, what: &str) -> anyhow::Result<String> {
        if self.success() {
            Ok(self.stdout)
        } else {
            Err(anyhow!(
                "{what} failed with {}:\nstdout: {}\nstderr: {}",
                self.status,
                self.stdout.trim(),
                self.stderr.trim()
            ))
        }
    }
}

impl From<crate::proc::Output> for CliOutput {
    fn from(o: crate::proc::Output) -> Self {
        Self {
            status: o.status,
            stdout: o.stdout,
            stderr: o.stderr,
        }
    }
}

/// A gateway directory made by `outpost-gateway init`, and the server once started.
#[derive(Debug)]
pub struct Gateway {
    bin: PathBuf,
    dir: PathBuf,
    server: Option<Proc>,
    addr: Option<SocketAddr>,
    /// The address of the last `serve` run, kept across a stop for [`Gateway::restart`].
    last_addr: Option<SocketAddr>,
    /// Soft and hard open-file limit `serve` runs under (through `prlimit`), if set.
    open_files: Option<u64>,
}

impl Gateway {
    /// Runs `outpost-gateway init --dir DIR --san …` with the given SANs.
    ///
    /// # Errors
    /// When the binary is missing or `init` fails.
    pub fn init(dir: &Path, sans: &[&str]) -> anyhow::Result<Self> {
        let bin = crate::bins::gateway()?;
        let mut cmd = Command::new(&bin);
        cmd.arg("init").arg("--dir").arg(dir);
        for s in sans {
            cmd.arg("--san").arg(s);
        }
        CliOutput::from(run_bounded(cmd, CLI_TIMEOUT)?).ok("outpost-gateway init")?;
        Self::open(dir)
    }

    /// A gateway directory that already holds `gateway.toml` and its files (made by
    /// [`Gateway::init`], or copied from one to run a second member of a pool). Does not
    /// start it.
    ///
    /// # Errors
    /// When the binary is missing or the directory has no `gateway.toml`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let bin = crate::bins::gateway()?;
        let config = dir.join("gateway.toml");
        if !config.is_file() {
            bail!("{} does not exist", config.display());
        }
        Ok(Self {
            bin,
            dir: dir.to_path_buf(),
            server: None,
            addr: None,
            last_addr: None,
            open_files: None,
        })
    }

    /// Makes later `serve` runs start under `prlimit --nofile=N:N` (util-linux), so a test can
    /// run the gateway out of file descriptors with a few connections.
    pub fn set_open_files_limit(&mut self, n: u64) {
        self.open_files = Some(n);
    }

    /// [`Gateway::init`] with SANs `127.0.0.1` and `localhost`.
    ///
    /// # Errors
    /// As [`Gateway::init`].
    pub fn init_loopback(dir: &Path) -> anyhow::Result<Self> {
        Self::init(dir, &LOOPBACK_SANS)
    }

    /// Runs `init` and `serve` in one step.
    ///
    /// # Errors
    /// As [`Gateway::init`] and [`Gateway::start`].
    pub fn start_new(dir: &Path) -> anyhow::Result<Self> {
        let mut gw = Self::init_loopback(dir)?;
        gw.start()?;
        Ok(gw)
    }

    /// The gateway directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `DIR/gateway.toml`.
    #[must_use]
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("gateway.toml")
    }

    /// `DIR/ca.pem`.
    #[must_use]
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `DIR/ca-key.pem`.
    #[must_use]
    pub fn ca_key_path(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }

    /// The server's log file (stdout and stderr of every `serve` run, appended).
    #[must_use]
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("gateway.log")
    }

    fn addr_file(&self) -> PathBuf {
        self.dir.join("addr")
    }

    /// The CA certificate (PEM).
    ///
    /// # Errors
    /// When it cannot be read.
    pub fn ca_pem(&self) -> anyhow::Result<String> {
        let p = self.ca_cert_path();
        std::fs::read_to_string(&p).with_context(|| format!("failed to read {}", p.display()))
    }

    /// Sets `key = value` in `gateway.toml` (before [`Gateway::start`] to take effect).
    ///
    /// # Errors
    /// When the file cannot be read, parsed or written.
    pub fn set_config(&self, key: &str, value: impl Into<toml::Value>) -> anyhow::Result<()> {
        let p = self.config_path();
        let text = std::fs::read_to_string(&p)
            .with_context(|| format!("failed to read {}", p.display()))?;
        let mut table: toml::Table = text
            .parse()
            .with_context(|| format!("{} is not TOML", p.display()))?;
        table.insert(key.to_string(), value.into());
        std::fs::write(&p, toml::to_string(&table)?)
            .with_context(|| format!("failed to write {}", p.display()))
    }

    /// Sets `[feed] dir = DIR` in `gateway.toml`: the update feed served under `/v1/feed/`
    /// (before [`Gateway::start`] to take effect).
    ///
    /// # Errors
    /// As [`Gateway::set_config`].
    pub fn set_feed_dir(&self, dir: &Path) -> anyhow::Result<()> {
        let mut feed = toml::Table::new();
        feed.insert("dir".into(), dir.display().to_string().into());
        self.set_config("feed", feed)
    }

    /// Starts `serve --listen 127.0.0.1:0 --addr-file DIR/addr` and waits for the address.
    ///
    /// # Errors
    /// When it is already running, exits early or does not write its address in time.
    pub fn start(&mut self) -> anyhow::Result<SocketAddr> {
        self.start_on("127.0.0.1:0".parse()?)
    }

    /// Starts `serve` again on the address of the previous run (after [`Gateway::stop`] or
    /// [`Gateway::kill9`]), so a collector configured with it finds it again.
    ///
    /// # Errors
    /// When it never ran, or as [`Gateway::start_on`].
    pub fn restart(&mut self) -> anyhow::Result<SocketAddr> {
        let addr = self
            .last_addr
            .ok_or_else(|| anyhow!("gateway in {} never ran", self.dir.display()))?;
        self.start_on(addr)
    }

    /// Starts `serve --listen LISTEN --addr-file DIR/addr` (e.g. `127.0.0.2:5723`, or port 0)
    /// and waits for the bound address.
    ///
    /// # Errors
    /// When it is already running, exits early (e.g. the address is taken) or does not
    /// write its address in time.
    pub fn start_on(&mut self, listen: SocketAddr) -> anyhow::Result<SocketAddr> {
        if self.server.is_some() {
            bail!("gateway in {} is already running", self.dir.display());
        }
        let addr_file = self.addr_file();
        let _ = std::fs::remove_file(&addr_file);
        let mut cmd = match self.open_files {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--addr-file")
            .arg(&addr_file);
        let mut proc = Proc::spawn("outpost-gateway serve", cmd, &self.log_path())?;
        let addr = wait_for(
            "the gateway to write its address file",
            START_TIMEOUT,
            Duration::from_millis(50),
            || {
                if let Some(st) = proc.exit_status()? {
                    return Err(abort(format!(
                        "outpost-gateway serve exited early with {st}"
                    )));
                }
                match std::fs::read_to_string(&addr_file) {
                    Ok(s) if !s.trim().is_empty() => {
                        let a: SocketAddr = s.trim().parse().with_context(|| {
                            format!("{} holds {s:?}, not ip:port", addr_file.display())
                        })?;
                        Ok(Some(a))
                    }
                    _ => Ok(None),
                }
            },
        );
        let addr = match addr {
            Ok(a) => a,
            Err(e) => {
                let tail = proc.log_tail(40);
                let _ = proc.kill();
                return Err(e.context(format!("gateway log tail:\n{tail}")));
            }
        };
        self.server = Some(proc);
        self.addr = Some(addr);
        self.last_addr = Some(addr);
        Ok(addr)
    }

    /// SIGKILL and reap, as a crash or power cut would; [`Gateway::restart`] brings it back
    /// on the same address.
    ///
    /// # Errors
    /// When it is not running or cannot be reaped.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        let mut proc = self
            .server
            .take()
            .ok_or_else(|| anyhow!("gateway is not running"))?;
        self.addr = None;
        proc.kill()
    }

    /// Stops the server with SIGTERM (bounded; SIGKILL after) and returns its exit status.
    ///
    /// # Errors
    /// When it is not running or had to be killed.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let mut proc = self
            .server
            .take()
            .ok_or_else(|| anyhow!("gateway is not running"))?;
        self.addr = None;
        proc.terminate()
    }

    /// Whether the server process is still alive.
    ///
    /// # Errors
    /// When its status cannot be read.
    pub fn is_running(&mut self) -> anyhow::Result<bool> {
        match &mut self.server {
            None => Ok(false),
            Some(p) => Ok(p.exit_status()?.is_none()),
        }
    }

    /// The server's process id while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().and_then(Proc::pid)
    }

    /// The bound address.
    ///
    /// # Panics
    /// When the server is not started.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("gateway is not started")
    }

    /// `https://ADDR{path}`.
    #[must_use]
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr())
    }

    /// The last `lines` lines of the server log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log_path(), lines)
    }

    /// Prints the log tail to stderr, framed with a title.
    pub fn dump_log(&self, lines: usize) {
        eprintln!(
            "----- gateway log ({}) -----\n{}\n----- end of gateway log -----",
            self.log_path().display(),
            self.log_tail(lines)
        );
    }

    /// Runs `outpost-gateway ARGS… --config DIR/gateway.toml` (bounded).
    ///
    /// # Errors
    /// When it cannot be run or overruns; a non-zero exit is not an error here.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<CliOutput> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args).arg("--config").arg(self.config_path());
        Ok(run_bounded(cmd, CLI_TIMEOUT)?.into())
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    ///
    /// # Errors
    /// When it fails.
    pub fn cli_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cli(args)?
            .ok(&format!("outpost-gateway {}", args.join(" ")))
    }

    /// `token create --customer C [--auto-approve] [--ttl T] [--uses N]`; the token.
    ///
    /// # Errors
    /// When it fails or prints nothing.
    pub fn token_create(
        &self,
        customer: &str,
        auto_approve: bool,
        ttl: Option<&str>,
        uses: Option<u32>,
    ) -> anyhow::Result<String> {
        let uses = uses.map(|u| u.to_string());
        let mut args = vec!["token", "create", "--customer", customer];
        if auto_approve {
            args.push("--auto-approve");
        }
        if let Some(t) = ttl {
            args.extend(["--ttl", t]);
        }
        if let Some(u) = &uses {
            args.extend(["--uses", u]);
        }
        let out = self.cli_ok(&args)?;
        let token = out.trim();
        if token.is_empty() || token.lines().count() != 1 {
            bail!("token create printed {out:?}, expected the token alone");
        }
        Ok(token.to_string())
    }

    /// `appliances approve ID`.
    ///
    /// # Errors
    /// When it fails.
    pub fn approve(&self, id: &str) -> anyhow::Result<()> {
        self.cli_ok(&["appliances", "approve", id]).map(drop)
    }

    /// `appliances revoke ID`.
    ///
    /// # Errors
    /// When it fails.
    pub fn revoke(&self, id: &str) -> anyhow::Result<()> {
        self.cli_ok(&["appliances", "revoke", id]).map(drop)
    }

    /// `appliances list --json`.
    ///
    /// # Errors
    /// When it fails or prints something else than JSON.
    pub fn list_json(&self) -> anyhow::Result<Value> {
        let out = self.cli_ok(&["appliances", "list", "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("appliances list --json: {out}"))
    }

    /// `appliances show ID --json`.
    ///
    /// # Errors
    /// When it fails or prints something else than JSON.
    pub fn show_json(&self, id: &str) -> anyhow::Result<Value> {
        let out = self.cli_ok(&["appliances", "show", id, "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("appliances show --json: {out}"))
    }

    /// `commands send ID KIND`; the command id.
    ///
    /// # Errors
    /// When it fails.
    pub fn command_send(&self, id: &str, kind: &str) -> anyhow::Result<String> {
        Ok(self
            .cli_ok(&["commands", "send", id, kind])?
            .trim()
            .to_string())
    }

    /// `commands list ID --json`.
    ///
    /// # Errors
    /// When it fails or prints something else than JSON.
    pub fn commands_json(&self, id: &str) -> anyhow::Result<Value> {
        let out = self.cli_ok(&["commands", "list", id, "--json"])?;
        serde_json::from_str(&out).with_context(|| format!("commands list --json: {out}"))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("OUTPOST_TEST_LOGS").is_some() {
            self.dump_log(60);
        }
        if let Some(mut p) = self.server.take() {
            let _ = p.kill();
        }
    }
}

/// Reads a numeric field of `appliances show --json` (0 when absent or null).
#[must_use]
pub fn count(show: &Value, key: &str) -> u64 {
    show[key].as_u64().unwrap_or(0)
}
