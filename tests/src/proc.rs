//! Child processes of the tests: started with their output in a log file, stopped with
//! SIGTERM within a bound (then SIGKILL), and always killed and reaped on drop.
//! Short commands run through [`run_bounded`], which kills them if they overrun.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rustix::process::{kill_process, Pid, Signal};

/// How long a process gets to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// Default bound on a one-shot CLI command.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

/// A long-running child whose stdout and stderr go to a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd`, appending its stdout and stderr to `log`.
    ///
    /// # Errors
    /// When the log cannot be opened or the program cannot be started.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> anyhow::Result<Self> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("failed to open log {}", log.display()))?;
        let err = out.try_clone().context("failed to clone the log handle")?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let child = cmd
            .spawn()
            .with_context(|| format!("failed to start {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The process id, while it has not been reaped.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The log file.
    #[must_use]
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the process is still running; reaps it if it exited.
    ///
    /// # Errors
    /// When its status cannot be read.
    pub fn exit_status(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match &mut self.child {
            None => Ok(None),
            Some(c) => Ok(c.try_wait()?),
        }
    }

    /// Sends `sig` to the process.
    fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if let Some(c) = &self.child {
            kill_process(Pid::from_child(c), sig)
                .with_context(|| format!("failed to signal {}", self.name))?;
        }
        Ok(())
    }

    /// Waits at most `timeout` for the process to exit.
    fn wait_bounded(&mut self, timeout: Duration) -> anyhow::Result<Option<ExitStatus>> {
        let Some(c) = &mut self.child else {
            return Ok(None);
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(Some(st));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGTERM, then waits up to [`STOP_TIMEOUT`]; SIGKILL if it did not exit.
    ///
    /// # Errors
    /// When it had to be killed (the error says so and carries the log tail), or when it
    /// was already reaped.
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if self.child.is_none() {
            return Err(anyhow!("{} is not running", self.name));
        }
        if let Some(st) = self.exit_status()? {
            self.child = None;
            return Ok(st);
        }
        self.signal(Signal::TERM)?;
        if let Some(st) = self.wait_bounded(STOP_TIMEOUT)? {
            self.child = None;
            return Ok(st);
        }
        self.kill()?;
        Err(anyhow!(
            "{} did not exit within {STOP_TIMEOUT:?} of SIGTERM and was killed; log tail:\n{}",
            self.name,
            self.log_tail(40)
        ))
    }

    /// SIGKILL and reap.
    ///
    /// # Errors
    /// When it cannot be signalled or reaped.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            if c.try_wait()?.is_none() {
                let _ = kill_process(Pid::from_child(&c), Signal::KILL);
                c.wait()
                    .with_context(|| format!("failed to reap {}", self.name))?;
            }
        }
        Ok(())
    }

    /// The last `lines` lines of the log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The last `lines` lines of a file, or a note that it cannot be read.
#[must_use]
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = strip_ansi(&String::from_utf8_lossy(&bytes));
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Removes ANSI escape sequences (colour codes some loggers write even to files).
#[must_use]
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            // Parameters and intermediates, then one final byte in @..~.
            for f in chars.by_ref() {
                if ('@'..='~').contains(&f) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What a one-shot command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit status.
    pub status: ExitStatus,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// Runs `cmd` to completion, at most `timeout`; kills it and fails if it overruns.
///
/// # Errors
/// When it cannot be started or overruns.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> anyhow::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let described = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start {described}"))?;
    let mut out_pipe = child.stdout.take().context("no stdout pipe")?;
    let mut err_pipe = child.stderr.take().context("no stderr pipe")?;
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out_pipe.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err_pipe.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(anyhow!(
                "{described} did not finish within {timeout:?} and was killed"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_ansi_removes_colour_codes_only() {
        let coloured = "\u{1b}[2m2026\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m done [ok]";
        assert_eq!(strip_ansi(coloured), "2026  INFO done [ok]");
    }
}
