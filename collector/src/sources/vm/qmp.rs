//! A minimal QMP client: `query-status` over a QEMU monitor's unix socket.
//!
//! QMP is line-delimited JSON: the server greets (`{"QMP": …}`), the client leaves
//! capabilities negotiation with `qmp_capabilities`, then commands answer with `{"return": …}`
//! or `{"error": …}`; asynchronous `{"event": …}` lines may arrive in between and are
//! skipped. The whole exchange shares one deadline, every line is capped in length, and
//! nothing is written besides the two commands, so a stuck or hostile peer costs at most
//! the timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::VmState;

/// Longest line accepted from the monitor.
pub const MAX_LINE: u64 = 64 * 1024;

/// What `query-status` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpStatus {
    /// QEMU's run state, e.g. `running`, `paused`, `prelaunch`, `shutdown`, `guest-panicked`.
    pub status: String,
    /// Whether guest CPUs are executing.
    pub running: bool,
}

impl QmpStatus {
    /// Maps QEMU's run state to [`VmState`].
    #[must_use]
    pub fn vm_state(&self) -> VmState {
        match self.status.as_str() {
            "running" => VmState::Running,
            "paused" | "prelaunch" | "inmigrate" | "postmigrate" | "suspended" | "save-vm"
            | "restore-vm" | "finish-migrate" | "debug" | "io-error" | "watchdog" | "colo" => {
                VmState::Paused
            }
            "shutdown" => VmState::Shutdown,
            "guest-panicked" | "internal-error" => VmState::Crashed,
            _ if self.running => VmState::Running,
            _ => VmState::Unknown,
        }
    }
}

/// Why a QMP query failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QmpError {
    /// The socket could not be connected.
    #[error("failed to connect to QMP socket {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Reading or writing failed, or the deadline passed.
    #[error("QMP exchange on {} failed: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The peer said something that is not QMP, or refused the command.
    #[error("QMP socket {} answered unexpectedly: {problem}", path.display())]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        problem: String,
    },
}

struct Session {
    reader: BufReader<UnixStream>,
    deadline: Instant,
    path: PathBuf,
}

impl Session {
    fn io_error(&self, source: std::io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn protocol(&self, problem: impl Into<String>) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            problem: problem.into(),
        }
    }

    fn remaining(&self) -> Result<Duration, QmpError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            Err(self.io_error(std::io::ErrorKind::TimedOut.into()))
        } else {
            Ok(left)
        }
    }

    fn read_message(&mut self) -> Result<Value, QmpError> {
        let left = self.remaining()?;
        self.reader
            .get_ref()
            .set_read_timeout(Some(left))
            .map_err(|e| self.io_error(e))?;
        let mut line = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io_error(e))?;
        if n == 0 {
            return Err(self.protocol("connection closed"));
        }
        if !line.ends_with(b"\n") {
            return Err(self.protocol("line too long"));
        }
        serde_json::from_slice(&line).map_err(|e| self.protocol(format!("not JSON: {e}")))
    }

    /// Sends a command and returns its `return` value, skipping events.
    fn execute(&mut self, command: &str) -> Result<Value, QmpError> {
        let left = self.remaining()?;
        self.reader
            .get_ref()
            .set_write_timeout(Some(left))
            .map_err(|e| self.io_error(e))?;
        let line = format!("{{\"execute\":\"{command}\"}}\n");
        let written = self.reader.get_mut().write_all(line.as_bytes());
        written.map_err(|e| self.io_error(e))?;
        loop {
            let msg = self.read_message()?;
            if let Some(ret) = msg.get("return") {
                return Ok(ret.clone());
            }
            if let Some(err) = msg.get("error") {
                return Err(self.protocol(format!("{command}: {err}")));
            }
            if msg.get("event").is_none() {
                return Err(self.protocol(format!("unexpected message {msg}")));
            }
        }
    }
}

/// Asks the monitor at `path` for the guest's run state, giving up after `timeout`
/// overall.
///
/// # Errors
///
/// When the socket cannot be reached, the exchange fails or times out, or the peer does
/// not speak QMP.
pub fn query_status(path: &Path, timeout: Duration) -> Result<QmpStatus, QmpError> {
    let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let mut session = Session {
        reader: BufReader::new(stream),
        deadline: Instant::now() + timeout,
        path: path.to_path_buf(),
    };
    let greeting = session.read_message()?;
    if greeting.get("QMP").is_none() {
        return Err(session.protocol("no QMP greeting"));
    }
    session.execute("qmp_capabilities")?;
    let ret = session.execute("query-status")?;
    let status = ret
        .get("status")
        .and_then(Value::as_str)
        .ok_or_else(|| session.protocol("query-status without status"))?;
    Ok(QmpStatus {
        status: status.to_string(),
        running: ret.get("running").and_then(Value::as_bool).unwrap_or(false),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::thread;

    /// A scripted monitor: sends `greeting`, then answers each line read with the next
    /// reply (replies may hold several lines).
    fn fake_monitor(path: &Path, greeting: &'static str, replies: Vec<&'static str>) {
        let listener = UnixListener::bind(path).unwrap();
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut writer = stream.try_clone().unwrap();
            writer.write_all(greeting.as_bytes()).unwrap();
            let mut reader = BufReader::new(stream);
            for reply in replies {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                writer.write_all(reply.as_bytes()).unwrap();
            }
            // Keep the connection open until the client is done.
            let mut rest = String::new();
            let _ = reader.read_line(&mut rest);
        });
    }

    const GREETING: &str = "{\"QMP\": {\"version\": {}, \"capabilities\": [\"oob\"]}}\r\n";

    #[test]
    fn answers_prelaunch_through_events() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        fake_monitor(
            &sock,
            GREETING,
            vec![
                "{\"return\": {}}\r\n",
                "{\"event\": \"RESUME\", \"timestamp\": {}}\r\n{\"return\": {\"status\": \"prelaunch\", \"running\": false}}\r\n",
            ],
        );
        let status = query_status(&sock, Duration::from_secs(5)).unwrap();
        assert_eq!(status.status, "prelaunch");
        assert_eq!(status.vm_state(), VmState::Paused);
    }

    #[test]
    fn a_silent_peer_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let _listener = UnixListener::bind(&sock).unwrap(); // accepts nothing, says nothing
        let started = Instant::now();
        let err = query_status(&sock, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(err, QmpError::Io { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn not_qmp_and_errors_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("a.sock");
        fake_monitor(&sock, "SSH-2.0-OpenSSH\r\n", vec![]);
        let err = query_status(&sock, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");

        let sock = dir.path().join("b.sock");
        fake_monitor(
            &sock,
            GREETING,
            vec!["{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no\"}}\n"],
        );
        let err = query_status(&sock, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("CommandNotFound"), "{err}");

        let err =
            query_status(&dir.path().join("absent.sock"), Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, QmpError::Connect { .. }));
    }

    #[test]
    fn status_names_map() {
        let s = |status: &str, running| QmpStatus {
            status: status.into(),
            running,
        };
        assert_eq!(s("running", true).vm_state(), VmState::Running);
        assert_eq!(s("paused", false).vm_state(), VmState::Paused);
        assert_eq!(s("shutdown", false).vm_state(), VmState::Shutdown);
        assert_eq!(s("guest-panicked", false).vm_state(), VmState::Crashed);
        assert_eq!(s("something-new", true).vm_state(), VmState::Running);
        assert_eq!(s("something-new", false).vm_state(), VmState::Unknown);
    }
}
