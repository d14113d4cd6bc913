//! `last_seen` of long-polls, kept in memory and written in bulk.
//!
//! A command long-poll used to write the appliance's `last_seen` on every poll: a write
//! transaction per poll, as many as batches. Now the poll notes the time here and
//! [`LastSeen::flush`] writes everything noted in one transaction every
//! [`LAST_SEEN_FLUSH`] (and once more on shutdown). Batches still set `last_seen` in their
//! own transaction, so `last_seen` lags an appliance that only polls by at most
//! [`LAST_SEEN_FLUSH`] plus a flush.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use crate::error::StoreError;
use crate::store::{Millis, Store};

/// How often noted contacts are written to the store.
pub const LAST_SEEN_FLUSH: Duration = Duration::from_secs(5);

/// Contacts noted since the last flush: appliance id → latest time.
#[derive(Debug, Default)]
pub struct LastSeen {
    noted: Mutex<HashMap<String, Millis>>,
}

impl LastSeen {
    /// Notes a contact of `appliance_id` at `now`.
    pub fn note(&self, appliance_id: &str, now: Millis) {
        let mut g = self.noted.lock().unwrap_or_else(PoisonError::into_inner);
        match g.get_mut(appliance_id) {
            Some(t) => *t = (*t).max(now),
            None => {
                g.insert(appliance_id.to_string(), now);
            }
        }
    }

    /// Takes what was noted (for a flush).
    #[must_use]
    pub fn take(&self) -> Vec<(String, Millis)> {
        std::mem::take(&mut *self.noted.lock().unwrap_or_else(PoisonError::into_inner))
            .into_iter()
            .collect()
    }

    /// Writes what was noted in one transaction. On failure the contacts are noted again
    /// (nothing is lost; the next flush retries).
    ///
    /// # Errors
    /// The store's error.
    pub async fn flush(&self, store: &Store) -> Result<usize, StoreError> {
        let seen = self.take();
        if let Err(e) = store.touch_many(&seen).await {
            for (id, at) in &seen {
                self.note(id, *at);
            }
            return Err(e);
        }
        Ok(seen.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_contact_per_appliance() {
        let l = LastSeen::default();
        l.note("ap-1", 10);
        l.note("ap-1", 5);
        l.note("ap-2", 7);
        let mut v = l.take();
        v.sort();
        assert_eq!(v, vec![("ap-1".to_string(), 10), ("ap-2".to_string(), 7)]);
        assert!(l.take().is_empty());
    }
}
