//! Long-poll wake-ups per appliance.
//!
//! A long-poll waits on its appliance's [`Notify`]; when the command watcher sees the queue
//! change it wakes only the appliances that have queued commands
//! ([`Store::appliances_with_queued_commands`](crate::store::Store::appliances_with_queued_commands)),
//! not every long-poll of the gateway. Entries exist only while someone waits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

/// The appliances whose long-polls are waiting, each with its [`Notify`].
#[derive(Debug, Default)]
pub struct Wakeups {
    waiting: Mutex<HashMap<String, (Arc<Notify>, usize)>>,
}

/// A registration of one waiting long-poll; leaving it (drop) unregisters.
#[derive(Debug)]
pub struct Waiter {
    wakeups: Arc<Wakeups>,
    appliance_id: String,
    notify: Arc<Notify>,
}

impl Waiter {
    /// The [`Notify`] to wait on (enable its `notified()` before looking at the queue).
    #[must_use]
    pub fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut g = self
            .wakeups
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, n)) = g.get_mut(&self.appliance_id) {
            *n -= 1;
            if *n == 0 {
                g.remove(&self.appliance_id);
            }
        }
    }
}

impl Wakeups {
    /// Registers a long-poll of `appliance_id`.
    #[must_use]
    pub fn wait_for(self: &Arc<Self>, appliance_id: &str) -> Waiter {
        let mut g = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let e = g
            .entry(appliance_id.to_string())
            .or_insert_with(|| (Arc::new(Notify::new()), 0));
        e.1 += 1;
        Waiter {
            wakeups: Arc::clone(self),
            appliance_id: appliance_id.to_string(),
            notify: Arc::clone(&e.0),
        }
    }

    /// Wakes the long-polls of these appliances; returns how many appliances had one.
    pub fn wake<'a>(&self, appliance_ids: impl IntoIterator<Item = &'a str>) -> usize {
        let g = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let mut woken = 0;
        for id in appliance_ids {
            if let Some((n, _)) = g.get(id) {
                n.notify_waiters();
                woken += 1;
            }
        }
        woken
    }

    /// Appliances with a waiting long-poll.
    #[must_use]
    pub fn len(&self) -> usize {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no long-poll waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wakes_only_the_appliance_named_and_forgets_leavers() {
        let w = Arc::new(Wakeups::default());
        let a = w.wait_for("ap-a");
        let b = w.wait_for("ap-b");
        {
            let na = a.notify().notified();
            let nb = b.notify().notified();
            tokio::pin!(na, nb);
            na.as_mut().enable();
            nb.as_mut().enable();
            assert_eq!(w.wake(["ap-a", "ap-unknown"]), 1);
            tokio::time::timeout(std::time::Duration::from_secs(1), na)
                .await
                .expect("ap-a woken");
            assert!(
                tokio::time::timeout(std::time::Duration::from_millis(50), nb)
                    .await
                    .is_err(),
                "ap-b woken by ap-a's command"
            );
        }
        assert_eq!(w.len(), 2);
        drop(a);
        drop(b);
        assert!(w.is_empty());
    }
}
