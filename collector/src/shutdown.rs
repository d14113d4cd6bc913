//! A stop signal shared by every task of `run`: set once on SIGTERM/SIGINT, observed at the
//! points where stopping is safe (sleeps and network waits, never in the middle of a write).

use std::time::Duration;

use tokio::sync::watch;

/// Sets the stop signal.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Observes the stop signal. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected trigger and observer.
#[must_use]
pub fn channel() -> (ShutdownTrigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (ShutdownTrigger(tx), Shutdown(rx))
}

impl ShutdownTrigger {
    /// Asks every observer to stop.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// Whether stopping was asked for.
    #[must_use]
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Completes once stopping is asked for (or the trigger is gone).
    pub async fn wait(&mut self) {
        // An error means the trigger was dropped: treat it as a stop.
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// Sleeps for `d`; returns `true` when interrupted by a stop request.
    pub async fn sleep(&mut self, d: Duration) -> bool {
        if self.is_triggered() {
            return true;
        }
        tokio::select! {
            () = tokio::time::sleep(d) => false,
            () = self.wait() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sleep_is_cut_short_by_trigger() {
        let (tx, mut rx) = channel();
        assert!(!rx.is_triggered());
        let h = tokio::spawn(async move { rx.sleep(Duration::from_secs(60)).await });
        tx.trigger();
        assert!(h.await.unwrap());
    }

    #[tokio::test]
    async fn sleep_runs_out_without_trigger() {
        let (_tx, mut rx) = channel();
        assert!(!rx.sleep(Duration::from_millis(5)).await);
    }
}
