//! The certificate cache: which appliance an approved client certificate belongs to,
//! without a store lookup on every request — and without weakening revocation.
//!
//! # Design
//!
//! Every mTLS request still has its certificate checked; a cache hit just answers from
//! memory. An entry is only ever used while the cache is *verified*: the gateway polls the
//! store's revocation mark (count and latest time of revocations, [`Store::revocation_mark`])
//! every [`crate::server::COMMAND_POLL`], and each poll whose mark is unchanged verifies
//! the cache as of the poll's start. A changed mark (someone revoked an appliance, through
//! this gateway's CLI, another process or another gateway of a pool) empties the cache. A
//! hit is allowed only if the last verification started less than [`REVOCATION_BOUND`] ago;
//! when polls stall or fail, the cache goes unverified and every request goes to the store
//! as before. So a revocation committed at time T is honoured by every gateway from
//! T + [`REVOCATION_BOUND`] on, and `outpost-gateway appliances revoke` returns only after
//! that bound: a request after the command returns is refused, as before the cache.
//!
//! Only approved owners are cached; unknown, pending and revoked certificates always go to
//! the store (so an approval takes effect at once). An insert carries the generation it
//! read under, so a lookup that raced a clear cannot put a stale owner back.
//!
//! Time is an argument ([`Instant`]), so the rules are tested without sleeping.
//!
//! [`Store::revocation_mark`]: crate::store::Store::revocation_mark

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long after a revocation is committed a gateway may still accept the certificate
/// from its cache, at most; `appliances revoke` waits this long before it returns.
pub const REVOCATION_BOUND: Duration = Duration::from_secs(2);

/// Entries kept at most; past it the cache is emptied and refilled (a bound on memory,
/// far above a gateway's fleet).
pub const MAX_ENTRIES: usize = 1_000_000;

/// Fingerprint → appliance id of approved certificates, verified against revocations.
#[derive(Debug, Default)]
pub struct CertCache {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    generation: u64,
    mark: Option<(i64, i64)>,
    verified_at: Option<Instant>,
    owners: HashMap<String, String>,
}

impl CertCache {
    /// The approved appliance behind `fingerprint`, if cached and the cache is verified as
    /// of less than [`REVOCATION_BOUND`] before `now`.
    #[must_use]
    pub fn get(&self, fingerprint: &str, now: Instant) -> Option<String> {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let fresh = g
            .verified_at
            .is_some_and(|v| now.saturating_duration_since(v) < REVOCATION_BOUND);
        if !fresh {
            return None;
        }
        g.owners.get(fingerprint).cloned()
    }

    /// The generation to pass to [`CertCache::insert`]; read it before the store lookup.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .generation
    }

    /// Caches an approved owner found by a lookup made under `generation`; ignored when
    /// the cache was emptied since.
    pub fn insert(&self, fingerprint: &str, appliance_id: &str, generation: u64) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if g.generation != generation {
            return;
        }
        if g.owners.len() >= MAX_ENTRIES {
            g.owners.clear();
        }
        g.owners
            .insert(fingerprint.to_string(), appliance_id.to_string());
    }

    /// The result of a revocation-mark poll that started at `started`: an unchanged mark
    /// verifies the cache as of then; a changed one empties it.
    pub fn observe(&self, mark: (i64, i64), started: Instant) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if g.mark != Some(mark) {
            if g.mark.is_some() {
                tracing::info!(
                    revoked = mark.0,
                    "revocations changed; certificate cache emptied"
                );
            }
            g.mark = Some(mark);
            g.owners.clear();
            g.generation += 1;
        }
        g.verified_at = Some(started);
    }

    /// Empties the cache (this process revoked something).
    pub fn clear(&self) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.owners.clear();
        g.generation += 1;
        g.verified_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unverified_cache_answers_nothing() {
        let c = CertCache::default();
        let t0 = Instant::now();
        c.insert("fp", "ap-1", c.generation());
        assert_eq!(c.get("fp", t0), None, "used before any revocation poll");
    }

    #[test]
    fn a_changed_revocation_mark_empties_the_cache() {
        let c = CertCache::default();
        let t0 = Instant::now();
        c.observe((0, 0), t0);
        c.insert("fp", "ap-1", c.generation());
        assert_eq!(c.get("fp", t0).as_deref(), Some("ap-1"));
        c.observe((0, 0), t0 + Duration::from_millis(500));
        assert_eq!(
            c.get("fp", t0 + Duration::from_millis(600)).as_deref(),
            Some("ap-1")
        );
        c.observe((1, 42), t0 + Duration::from_secs(1));
        assert_eq!(
            c.get("fp", t0 + Duration::from_secs(1)),
            None,
            "kept after a revocation"
        );
    }

    #[test]
    fn entries_go_stale_when_polls_stop() {
        let c = CertCache::default();
        let t0 = Instant::now();
        c.observe((0, 0), t0);
        c.insert("fp", "ap-1", c.generation());
        assert!(c
            .get("fp", t0 + REVOCATION_BOUND - Duration::from_millis(1))
            .is_some());
        assert_eq!(
            c.get("fp", t0 + REVOCATION_BOUND),
            None,
            "used past the bound"
        );
    }

    #[test]
    fn a_lookup_that_raced_a_clear_is_not_cached() {
        let c = CertCache::default();
        let t0 = Instant::now();
        c.observe((0, 0), t0);
        let generation = c.generation();
        // The revocation lands between the lookup and the insert.
        c.observe((1, 7), t0);
        c.insert("fp", "ap-1", generation);
        assert_eq!(c.get("fp", t0), None);
        c.clear();
        c.insert("fp", "ap-1", c.generation());
        assert_eq!(c.get("fp", t0), None, "verified again without a poll");
    }
}
