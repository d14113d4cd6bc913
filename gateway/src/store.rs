//! The gateway's store: tokens, appliances, certificates, telemetry and commands.
//!
//! One schema and one set of SQL statements serve both engines through `sqlx::Any`:
//! embedded SQLite (WAL, `synchronous=FULL`, a single writer connection so write
//! transactions never fight over the lock) for a lone gateway, PostgreSQL for a pool.
//! Statements use `$N` placeholders, which both drivers map by number.
//!
//! Ingest is exactly-once: a batch, its records and the appliance's new `last_seq` are
//! written in one transaction that starts with a compare-and-set on `last_seq`, so two
//! gateways of a pool can never both store the same sequence: the second waits on the
//! appliance's row, finds the sequence taken, and answers "duplicate". Records are also unique per
//! `(appliance, rid)`: a record whose id is already stored (it came before under another
//! sequence) is skipped, deterministically, and the rest of its batch is stored.
//!
//! On SQLite every batch goes through one writer task that stores the batches queued during
//! the previous commit together, one savepoint each, in one transaction with one fsync
//! (group commit, `group_commit`); each is acknowledged only after that commit. On
//! PostgreSQL each batch is its own transaction on a pool of connections.

use std::time::Duration;

mod group_commit;
mod health;
mod packs;
mod updates;

pub use health::{AlertRow, HealthChangeRow, HealthStateRow, PackStatusRow, VmRow};
pub use packs::{PackImport, PackRow, PackScope};
pub use updates::{agent_for_kind, UpdateStateRow, WindowRow, WindowScope};

use outpost_proto::{ApplianceState, Envelope, Record};
use sha2::{Digest, Sha256};
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::config::StoreLocation;
use crate::error::StoreError;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// The current time in unix milliseconds.
#[must_use]
pub fn now_ms() -> Millis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// sha256 (hex) of a bootstrap token: tokens are stored hashed, never in clear.
#[must_use]
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn q(op: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { op, source }
}

/// A bootstrap token as stored (the token itself is not: only its hash).
#[derive(Debug, Clone)]
pub struct TokenRow {
    /// Token id (`tk-…`).
    pub id: String,
    /// Customer the enrolled appliances belong to.
    pub customer: String,
    /// Expiry, unix ms.
    pub expires_at: Millis,
    /// How many enrolments it allows.
    pub max_uses: i64,
    /// How many it has had.
    pub uses: i64,
    /// Whether enrolments are approved at once.
    pub auto_approve: bool,
}

/// An appliance as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApplianceSummary {
    /// Id (`ap-…`).
    pub id: String,
    /// State.
    pub state: ApplianceState,
    /// Customer.
    pub customer: String,
    /// Host name it reported at enrolment.
    pub hostname: String,
    /// Enrolment time, unix ms.
    pub enrolled_at: Millis,
    /// Last authenticated contact, unix ms.
    pub last_seen: Option<Millis>,
}

/// Everything `appliances show` prints.
#[derive(Debug, Clone)]
pub struct ApplianceDetail {
    /// Summary fields.
    pub summary: ApplianceSummary,
    /// Approval time.
    pub approved_at: Option<Millis>,
    /// Revocation time.
    pub revoked_at: Option<Millis>,
    /// Highest stored batch sequence.
    pub last_seq: i64,
    /// Batches stored.
    pub batches: i64,
    /// Records stored.
    pub records: i64,
    /// Highest record id stored.
    pub last_rid: i64,
    /// Latest self-metrics of the collector (JSON of `AgentMetrics`).
    pub agent_json: Option<String>,
    /// When they were collected.
    pub agent_at: Option<Millis>,
    /// Records the collector dropped at its spool cap (cumulative, as last reported).
    pub dropped_records: i64,
    /// Records the collector lost to spool damage (cumulative, as last reported).
    pub spool_corrupt_records: i64,
    /// Latest inventory (JSON text).
    pub inventory_json: Option<String>,
    /// When it was collected.
    pub inventory_at: Option<Millis>,
    /// Latest metrics (JSON text).
    pub metrics_json: Option<String>,
    /// When they were collected.
    pub metrics_at: Option<Millis>,
    /// Current certificate: serial hex and not-after (unix ms).
    pub certificate: Option<(String, Millis)>,
    /// The CSR it enrolled with (used to issue on approval).
    pub csr_pem: String,
    /// Token it enrolled with.
    pub token_id: String,
}

/// What an mTLS request's certificate maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertOwner {
    /// Appliance id.
    pub appliance_id: String,
    /// Its state now.
    pub state: ApplianceState,
}

/// A certificate to record at issue time.
#[derive(Debug, Clone)]
pub struct NewCert<'a> {
    /// Serial hex.
    pub serial: &'a str,
    /// sha256 of DER, hex.
    pub fingerprint: &'a str,
    /// PEM.
    pub pem: &'a str,
    /// Validity, unix ms.
    pub not_before: Millis,
    /// Validity, unix ms.
    pub not_after: Millis,
}

/// Outcome of storing a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IngestOutcome {
    /// Stored.
    Stored {
        /// The new highest sequence (the batch's).
        seq: u64,
        /// The highest record id stored now.
        last_rid: u64,
        /// Records skipped because their id was stored before.
        skipped: u64,
    },
    /// Stored before; nothing written.
    Duplicate {
        /// The highest stored sequence.
        last_seq: u64,
        /// The highest record id stored.
        last_rid: u64,
    },
    /// A sequence from the future; the one expected next.
    Gap {
        /// Next sequence the gateway accepts.
        expected: u64,
    },
}

/// One stored record, as `appliances records` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Record id; `None` for records stored before record ids existed.
    pub rid: Option<i64>,
    /// Sequence of the batch that carried it.
    pub seq: i64,
    /// Kind (`inventory`, `metrics`, `agent`).
    pub kind: String,
    /// Collection time, unix ms.
    pub collected_at: Millis,
}

/// A command row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommandRow {
    /// Id (`cmd-…`).
    pub id: String,
    /// Appliance.
    pub appliance_id: String,
    /// Kind.
    pub kind: String,
    /// JSON arguments.
    pub args: serde_json::Value,
    /// queued | delivered | done | failed.
    pub state: String,
    /// Output of the result, if any.
    pub output: Option<String>,
    /// Queue time.
    pub created_at: Millis,
    /// Completion time.
    pub completed_at: Option<Millis>,
}

/// Connection to the store.
#[derive(Debug, Clone)]
pub struct Store {
    read: AnyPool,
    write: AnyPool,
    is_sqlite: bool,
    /// SQLite only: the group-commit writer every batch goes through.
    ingest_writer: Option<group_commit::IngestWriter>,
}

/// A random id with a prefix: `ap-` + 12 hex characters.
#[must_use]
pub fn new_id(prefix: &str) -> String {
    let b: [u8; 6] = rand::random();
    format!("{prefix}-{}", hex::encode(b))
}

impl Store {
    /// Opens (creating if needed) and migrates the store.
    ///
    /// # Errors
    /// [`StoreError::Open`] or [`StoreError::Migrate`] naming the (redacted) location.
    pub async fn open(location: &StoreLocation) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let shown = location.redacted();
        let open_err = |source| StoreError::Open {
            location: shown.clone(),
            source,
        };
        let (read, write, is_sqlite) = match location {
            StoreLocation::Sqlite(path) => {
                let url = format!("sqlite://{}?mode=rwc", path.display());
                let opts = || {
                    AnyPoolOptions::new()
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                use sqlx::Executor;
                                conn.execute("PRAGMA busy_timeout = 10000").await?;
                                conn.execute("PRAGMA synchronous = FULL").await?;
                                conn.execute("PRAGMA foreign_keys = ON").await?;
                                Ok(())
                            })
                        })
                };
                let write = opts()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .map_err(open_err)?;
                sqlx::query("PRAGMA journal_mode = WAL")
                    .execute(&write)
                    .await
                    .map_err(open_err)?;
                let read = opts()
                    .max_connections(4)
                    .connect(&url)
                    .await
                    .map_err(open_err)?;
                (read, write, true)
            }
            StoreLocation::Postgres(url) => {
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect(url)
                    .await
                    .map_err(open_err)?;
                (pool.clone(), pool, false)
            }
        };
        sqlx::migrate!("./migrations")
            .run(&write)
            .await
            .map_err(|source| StoreError::Migrate {
                location: shown.clone(),
                source,
            })?;
        let ingest_writer = is_sqlite.then(|| group_commit::IngestWriter::start(write.clone()));
        Ok(Self {
            read,
            write,
            is_sqlite,
            ingest_writer,
        })
    }

    /// Whether this is the embedded SQLite store.
    #[must_use]
    pub fn is_sqlite(&self) -> bool {
        self.is_sqlite
    }

    /// Closes the pools, flushing SQLite's WAL.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    // ---- tokens -------------------------------------------------------------------------

    /// Creates a bootstrap token and returns it in clear (the only time it exists so).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn create_token(
        &self,
        customer: &str,
        ttl: Duration,
        max_uses: u32,
        auto_approve: bool,
        now: Millis,
    ) -> Result<(String, String), StoreError> {
        use base64::Engine;
        let secret: [u8; 32] = rand::random();
        let token = format!(
            "opb_{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let id = new_id("tk");
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO tokens (id, token_hash, customer, created_at, expires_at, max_uses, uses, auto_approve)
             VALUES ($1, $2, $3, $4, $5, $6, 0, $7)",
        )
        .bind(&id)
        .bind(hash_token(&token))
        .bind(customer)
        .bind(now)
        .bind(now.saturating_add(ttl_ms))
        .bind(i64::from(max_uses))
        .bind(i64::from(auto_approve))
        .execute(&self.write)
        .await
        .map_err(q("create token"))?;
        Ok((id, token))
    }

    /// Finds a token by its clear text.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn find_token(&self, token: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, customer, expires_at, max_uses, uses, auto_approve FROM tokens WHERE token_hash = $1",
        )
        .bind(hash_token(token))
        .fetch_optional(&self.read)
        .await
        .map_err(q("find token"))?;
        Ok(row.map(|r| TokenRow {
            id: r.get(0),
            customer: r.get(1),
            expires_at: r.get(2),
            max_uses: r.get(3),
            uses: r.get(4),
            auto_approve: r.get::<i64, _>(5) != 0,
        }))
    }

    // ---- enrolment ----------------------------------------------------------------------

    /// The appliance that enrolled with this key, if any: `(id, token_id)`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn appliance_by_key(
        &self,
        key_fingerprint: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = sqlx::query("SELECT id, token_id FROM appliances WHERE key_fingerprint = $1")
            .bind(key_fingerprint)
            .fetch_optional(&self.write)
            .await
            .map_err(q("find appliance by key"))?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Consumes one use of a token and records a pending appliance, in one transaction.
    /// Returns `false` (and writes nothing) when the token has no use left.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn enroll_pending(
        &self,
        token: &TokenRow,
        id: &str,
        hostname: &str,
        key_fingerprint: &str,
        csr_pem: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.write.begin().await.map_err(q("begin enrol"))?;
        let used =
            sqlx::query("UPDATE tokens SET uses = uses + 1 WHERE id = $1 AND uses < max_uses")
                .bind(&token.id)
                .execute(&mut *tx)
                .await
                .map_err(q("consume token"))?;
        if used.rows_affected() != 1 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO appliances (id, customer, state, hostname, token_id, key_fingerprint, csr_pem, enrolled_at)
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7)",
        )
        .bind(id)
        .bind(&token.customer)
        .bind(hostname)
        .bind(&token.id)
        .bind(key_fingerprint)
        .bind(csr_pem)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(q("insert appliance"))?;
        tx.commit().await.map_err(q("commit enrol"))?;
        Ok(true)
    }

    /// Marks a pending appliance approved and records its first certificate, in one
    /// transaction. Approving an approved appliance is refused with `BadTransition`
    /// only when it is revoked; an already approved one is left as it is.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::BadTransition`], [`StoreError::Query`].
    pub async fn approve(
        &self,
        id: &str,
        cert: &NewCert<'_>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.write.begin().await.map_err(q("begin approve"))?;
        let changed = sqlx::query(
            "UPDATE appliances SET state = 'approved', approved_at = $2 WHERE id = $1 AND state = 'pending'",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(q("approve appliance"))?;
        if changed.rows_affected() != 1 {
            drop(tx);
            let state = self.state_of(id).await?;
            return Err(StoreError::BadTransition {
                id: id.to_string(),
                state: state.to_string(),
                op: "approve",
            });
        }
        insert_cert(&mut tx, id, cert, now).await?;
        tx.commit().await.map_err(q("commit approve"))?;
        Ok(())
    }

    /// Revokes an appliance: its certificates are refused from the next request on.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::BadTransition`] (already revoked).
    pub async fn revoke(&self, id: &str, now: Millis) -> Result<(), StoreError> {
        let changed = sqlx::query(
            "UPDATE appliances SET state = 'revoked', revoked_at = $2 WHERE id = $1 AND state <> 'revoked'",
        )
        .bind(id)
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(q("revoke appliance"))?;
        if changed.rows_affected() != 1 {
            let state = self.state_of(id).await?;
            return Err(StoreError::BadTransition {
                id: id.to_string(),
                state: state.to_string(),
                op: "revoke",
            });
        }
        Ok(())
    }

    async fn state_of(&self, id: &str) -> Result<ApplianceState, StoreError> {
        let row = sqlx::query("SELECT state FROM appliances WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.write)
            .await
            .map_err(q("read state"))?
            .ok_or_else(|| StoreError::NotFound {
                what: "appliance",
                id: id.to_string(),
            })?;
        parse_state(id, &row.get::<String, _>(0))
    }

    /// The newest certificate of an appliance (PEM).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn latest_cert_pem(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT pem FROM certificates WHERE appliance_id = $1 ORDER BY issued_at DESC, serial DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(q("latest certificate"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Who holds the certificate with this fingerprint, and in what state.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn cert_owner(&self, fingerprint: &str) -> Result<Option<CertOwner>, StoreError> {
        let row = sqlx::query(
            "SELECT a.id, a.state FROM certificates c JOIN appliances a ON a.id = c.appliance_id
             WHERE c.fingerprint = $1",
        )
        .bind(fingerprint)
        .fetch_optional(&self.read)
        .await
        .map_err(q("find certificate owner"))?;
        row.map(|r| {
            let id: String = r.get(0);
            let state = parse_state(&id, &r.get::<String, _>(1))?;
            Ok(CertOwner {
                appliance_id: id,
                state,
            })
        })
        .transpose()
    }

    // ---- listing ------------------------------------------------------------------------

    /// All appliances, oldest enrolment first.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub async fn list_appliances(&self) -> Result<Vec<ApplianceSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, state, customer, hostname, enrolled_at, last_seen FROM appliances ORDER BY enrolled_at, id",
        )
        .fetch_all(&self.read)
        .await
        .map_err(q("list appliances"))?;
        rows.iter().map(summary_from_row).collect()
    }

    /// One appliance in full.
    ///
    /// # Errors
    /// [`StoreError::NotFound`], [`StoreError::Query`].
    pub async fn appliance(&self, id: &str) -> Result<ApplianceDetail, StoreError> {
        let r = sqlx::query(
            "SELECT id, state, customer, hostname, enrolled_at, last_seen,
                    approved_at, revoked_at, last_seq, batches, records,
                    inventory_json, inventory_at, metrics_json, metrics_at, csr_pem, token_id,
                    last_rid, agent_json, agent_at, dropped_records, spool_corrupt_records
             FROM appliances WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(q("show appliance"))?
        .ok_or_else(|| StoreError::NotFound {
            what: "appliance",
            id: id.to_string(),
        })?;
        let cert = sqlx::query(
            "SELECT serial, not_after FROM certificates WHERE appliance_id = $1 ORDER BY issued_at DESC, serial DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.read)
        .await
        .map_err(q("show certificate"))?;
        Ok(ApplianceDetail {
            summary: summary_from_row(&r)?,
            approved_at: r.get(6),
            revoked_at: r.get(7),
            last_seq: r.get(8),
            batches: r.get(9),
            records: r.get(10),
            inventory_json: r.get(11),
            inventory_at: r.get(12),
            metrics_json: r.get(13),
            metrics_at: r.get(14),
            csr_pem: r.get(15),
            token_id: r.get(16),
            last_rid: r.get(17),
            agent_json: r.get(18),
            agent_at: r.get(19),
            dropped_records: r.get(20),
            spool_corrupt_records: r.get(21),
            certificate: cert.map(|c| (c.get(0), c.get(1))),
        })
    }

    // ---- telemetry ----------------------------------------------------------------------

    /// Stores one batch exactly once (see the module docs). Records come in increasing
    /// `rid` order (the API checks); one whose `(appliance, rid)` is already stored is
    /// skipped and counted in `skipped`, the rest of the batch is stored.
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing is stored then.
    pub async fn ingest(
        &self,
        appliance_id: &str,
        seq: u64,
        records: &[Envelope],
        now: Millis,
    ) -> Result<IngestOutcome, StoreError> {
        if let Some(writer) = &self.ingest_writer {
            return writer
                .ingest(appliance_id.to_string(), seq, records.to_vec(), now)
                .await;
        }
        let mut tx = self.write.begin().await.map_err(q("begin ingest"))?;
        match ingest_in(&mut tx, appliance_id, seq, records, now).await? {
            IngestStep::Done(outcome) => {
                tx.commit().await.map_err(q("commit ingest"))?;
                Ok(outcome)
            }
            IngestStep::LostRace => {
                drop(tx);
                self.ingest_lost_race(appliance_id, seq).await
            }
        }
    }

    /// The answer when another gateway of the pool moved `last_seq` between our read and
    /// our claim: read it again and classify `seq` against it.
    async fn ingest_lost_race(
        &self,
        appliance_id: &str,
        seq: u64,
    ) -> Result<IngestOutcome, StoreError> {
        let row = sqlx::query("SELECT last_seq, last_rid FROM appliances WHERE id = $1")
            .bind(appliance_id)
            .fetch_one(&self.write)
            .await
            .map_err(q("read last_seq"))?;
        let last_seq = u64::try_from(row.get::<i64, _>(0)).unwrap_or(0);
        let last_rid = u64::try_from(row.get::<i64, _>(1)).unwrap_or(0);
        Ok(if seq <= last_seq {
            IngestOutcome::Duplicate { last_seq, last_rid }
        } else {
            IngestOutcome::Gap {
                expected: last_seq + 1,
            }
        })
    }

    /// Stored records of an appliance in record id order (records from before record ids
    /// first, in batch order), optionally of one kind and at most `limit`.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown appliance, [`StoreError::Query`].
    pub async fn list_records(
        &self,
        appliance_id: &str,
        kind: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Vec<StoredRecord>, StoreError> {
        self.state_of(appliance_id).await?;
        let mut sql = String::from(
            "SELECT rid, seq, kind, collected_at FROM records WHERE appliance_id = $1",
        );
        let mut n = 1;
        if kind.is_some() {
            n += 1;
            sql.push_str(&format!(" AND kind = ${n}"));
        }
        sql.push_str(" ORDER BY CASE WHEN rid IS NULL THEN 0 ELSE 1 END, rid, seq, idx");
        if limit.is_some() {
            n += 1;
            sql.push_str(&format!(" LIMIT ${n}"));
        }
        let mut query = sqlx::query(&sql).bind(appliance_id);
        if let Some(k) = kind {
            query = query.bind(k);
        }
        if let Some(l) = limit {
            query = query.bind(i64::try_from(l).unwrap_or(i64::MAX));
        }
        let rows = query
            .fetch_all(&self.read)
            .await
            .map_err(q("list records"))?;
        Ok(rows
            .iter()
            .map(|r| StoredRecord {
                rid: r.get(0),
                seq: r.get(1),
                kind: r.get(2),
                collected_at: r.get(3),
            })
            .collect())
    }

    /// Counts stored records of a kind for an appliance.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn count_records(&self, appliance_id: &str, kind: &str) -> Result<i64, StoreError> {
        let r = sqlx::query("SELECT COUNT(*) FROM records WHERE appliance_id = $1 AND kind = $2")
            .bind(appliance_id)
            .bind(kind)
            .fetch_one(&self.read)
            .await
            .map_err(q("count records"))?;
        Ok(r.get(0))
    }

    /// Notes contact from an appliance.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn touch(&self, appliance_id: &str, now: Millis) -> Result<(), StoreError> {
        sqlx::query("UPDATE appliances SET last_seen = $2 WHERE id = $1")
            .bind(appliance_id)
            .bind(now)
            .execute(&self.write)
            .await
            .map_err(q("update last_seen"))?;
        Ok(())
    }

    /// Notes the contact of many appliances at once, in one transaction: the long-polls'
    /// `last_seen`, kept in memory by the gateway and written every few seconds. A time
    /// older than the stored one is ignored.
    ///
    /// # Errors
    /// [`StoreError::Query`]; nothing is written then.
    pub async fn touch_many(&self, seen: &[(String, Millis)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await.map_err(q("begin last_seen"))?;
        for (id, at) in seen {
            sqlx::query(
                "UPDATE appliances SET last_seen = $2 WHERE id = $1 AND (last_seen IS NULL OR last_seen < $2)",
            )
            .bind(id)
            .bind(*at)
            .execute(&mut *tx)
            .await
            .map_err(q("update last_seen"))?;
        }
        tx.commit().await.map_err(q("commit last_seen"))?;
        Ok(())
    }

    /// A cheap fingerprint of the revocations: the number of revoked appliances and the
    /// latest revocation time. It changes whenever an appliance is revoked, whichever
    /// process or gateway revoked it (a partial index keeps it a read of the revoked rows).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn revocation_mark(&self) -> Result<(i64, i64), StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*), COALESCE(MAX(revoked_at), 0) FROM appliances WHERE state = 'revoked'",
        )
        .fetch_one(&self.read)
        .await
        .map_err(q("revocation mark"))?;
        Ok((r.get(0), r.get(1)))
    }

    // ---- commands -----------------------------------------------------------------------

    /// The appliances that have queued commands (whose long-polls have something to take).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn appliances_with_queued_commands(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT appliance_id FROM commands WHERE state = 'queued'")
            .fetch_all(&self.read)
            .await
            .map_err(q("appliances with queued commands"))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Queues a command for an appliance; returns its id.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown appliance, [`StoreError::Query`].
    pub async fn queue_command(
        &self,
        appliance_id: &str,
        kind: &str,
        args: &serde_json::Value,
        now: Millis,
    ) -> Result<String, StoreError> {
        self.state_of(appliance_id).await?;
        let id = new_id("cmd");
        sqlx::query(
            "INSERT INTO commands (id, appliance_id, kind, args, state, created_at, agent) VALUES ($1, $2, $3, $4, 'queued', $5, $6)",
        )
        .bind(&id)
        .bind(appliance_id)
        .bind(kind)
        .bind(args.to_string())
        .bind(now)
        .bind(agent_for_kind(kind))
        .execute(&self.write)
        .await
        .map_err(q("queue command"))?;
        Ok(id)
    }

    /// The collector's commands to hand to an appliance; see [`Store::take_agent_commands`].
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn take_commands(
        &self,
        appliance_id: &str,
        now: Millis,
        redeliver_after: Duration,
    ) -> Result<Vec<CommandRow>, StoreError> {
        self.take_agent_commands(appliance_id, "collector", now, redeliver_after)
            .await
    }

    /// Commands for one agent of an appliance (`collector`, `updater`): queued ones, and
    /// delivered ones unanswered for longer than `redeliver_after` (the agent may have lost
    /// them). Marks them delivered.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn take_agent_commands(
        &self,
        appliance_id: &str,
        agent: &str,
        now: Millis,
        redeliver_after: Duration,
    ) -> Result<Vec<CommandRow>, StoreError> {
        let cutoff = now - i64::try_from(redeliver_after.as_millis()).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT id, appliance_id, kind, args, state, output, created_at, completed_at FROM commands
             WHERE appliance_id = $1 AND agent = $3
               AND (state = 'queued' OR (state = 'delivered' AND delivered_at < $2))
             ORDER BY created_at, id LIMIT 100",
        )
        .bind(appliance_id)
        .bind(cutoff)
        .bind(agent)
        .fetch_all(&self.read)
        .await
        .map_err(q("take commands"))?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let cmds: Vec<CommandRow> = rows.iter().map(command_from_row).collect();
        for c in &cmds {
            sqlx::query(
                "UPDATE commands SET state = 'delivered', delivered_at = $2 WHERE id = $1 AND state IN ('queued', 'delivered')",
            )
            .bind(&c.id)
            .bind(now)
            .execute(&self.write)
            .await
            .map_err(q("mark command delivered"))?;
        }
        Ok(cmds)
    }

    /// A cheap fingerprint of the queue: changes whenever a command is queued.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn command_queue_mark(&self) -> Result<(i64, i64), StoreError> {
        let r = sqlx::query(
            "SELECT COUNT(*), COALESCE(MAX(created_at), 0) FROM commands WHERE state = 'queued'",
        )
        .fetch_one(&self.read)
        .await
        .map_err(q("command queue mark"))?;
        Ok((r.get(0), r.get(1)))
    }

    /// Records a command's outcome. Only the appliance the command was for may answer it.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no such command belongs to the appliance.
    pub async fn complete_command(
        &self,
        appliance_id: &str,
        command_id: &str,
        ok: bool,
        output: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let changed = sqlx::query(
            "UPDATE commands SET state = $3, output = $4, completed_at = $5 WHERE id = $1 AND appliance_id = $2",
        )
        .bind(command_id)
        .bind(appliance_id)
        .bind(if ok { "done" } else { "failed" })
        .bind(output)
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(q("complete command"))?;
        if changed.rows_affected() != 1 {
            return Err(StoreError::NotFound {
                what: "command",
                id: command_id.to_string(),
            });
        }
        Ok(())
    }

    /// Commands of an appliance, newest last.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn list_commands(&self, appliance_id: &str) -> Result<Vec<CommandRow>, StoreError> {
        self.state_of(appliance_id).await?;
        let rows = sqlx::query(
            "SELECT id, appliance_id, kind, args, state, output, created_at, completed_at FROM commands
             WHERE appliance_id = $1 ORDER BY created_at, id",
        )
        .bind(appliance_id)
        .fetch_all(&self.read)
        .await
        .map_err(q("list commands"))?;
        Ok(rows.iter().map(command_from_row).collect())
    }
}

/// What storing a batch inside a transaction came to.
pub(crate) enum IngestStep {
    /// An outcome to answer once the transaction commits (nothing written unless `Stored`).
    Done(IngestOutcome),
    /// Another gateway of the pool moved `last_seq` between the read and the claim; the
    /// transaction holds nothing of this batch.
    LostRace,
}

/// Stores one batch in `tx` (see [`Store::ingest`]); the caller commits. Used per batch
/// on PostgreSQL and, inside a savepoint per batch, by SQLite's group commit.
pub(crate) async fn ingest_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    appliance_id: &str,
    seq: u64,
    records: &[Envelope],
    now: Millis,
) -> Result<IngestStep, StoreError> {
    let seq_i = i64::try_from(seq).unwrap_or(i64::MAX);
    let row = sqlx::query("SELECT last_seq, last_rid FROM appliances WHERE id = $1")
        .bind(appliance_id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(q("read last_seq"))?
        .ok_or_else(|| StoreError::NotFound {
            what: "appliance",
            id: appliance_id.to_string(),
        })?;
    let (last, last_rid): (i64, i64) = (row.get(0), row.get(1));
    let last_u = u64::try_from(last).unwrap_or(0);
    let last_rid_u = u64::try_from(last_rid).unwrap_or(0);
    if seq <= last_u {
        return Ok(IngestStep::Done(IngestOutcome::Duplicate {
            last_seq: last_u,
            last_rid: last_rid_u,
        }));
    }
    if seq != last_u + 1 {
        return Ok(IngestStep::Done(IngestOutcome::Gap {
            expected: last_u + 1,
        }));
    }
    // Claim the sequence first. The update takes the appliance's row lock, so a gateway
    // of the pool storing the same sequence at the same moment waits here until this
    // transaction ends, then finds `last_seq` moved and answers "duplicate" instead of
    // failing on the batch's primary key.
    let claimed = sqlx::query(
        "UPDATE appliances SET last_seq = $2, last_seen = $3 WHERE id = $1 AND last_seq = $4",
    )
    .bind(appliance_id)
    .bind(seq_i)
    .bind(now)
    .bind(last)
    .execute(&mut **tx)
    .await
    .map_err(q("advance last_seq"))?;
    if claimed.rows_affected() != 1 {
        return Ok(IngestStep::LostRace);
    }
    let count = i64::try_from(records.len()).unwrap_or(i64::MAX);
    sqlx::query(
        "INSERT INTO batches (appliance_id, seq, received_at, record_count) VALUES ($1, $2, $3, $4)",
    )
    .bind(appliance_id)
    .bind(seq_i)
    .bind(now)
    .bind(count)
    .execute(&mut **tx)
    .await
    .map_err(q("insert batch"))?;
    let mut inventory: Option<(String, String, Millis)> = None;
    let mut metrics: Option<(String, Millis)> = None;
    let mut agent: Option<(String, Millis, i64, i64)> = None;
    let mut inserted: i64 = 0;
    let mut new_last_rid = last_rid;
    for (idx, env) in records.iter().enumerate() {
        let rec = &env.record;
        let rid = i64::try_from(env.rid).map_err(|_| StoreError::Corrupt {
            what: "record id",
            id: appliance_id.to_string(),
            reason: format!("{} does not fit a BIGINT", env.rid),
        })?;
        let body = serde_json::to_string(rec).map_err(|e| StoreError::Corrupt {
            what: "record",
            id: appliance_id.to_string(),
            reason: e.to_string(),
        })?;
        let done = sqlx::query(
            "INSERT INTO records (appliance_id, seq, idx, rid, kind, collected_at, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (appliance_id, rid) DO NOTHING",
        )
        .bind(appliance_id)
        .bind(seq_i)
        .bind(i64::try_from(idx).unwrap_or(i64::MAX))
        .bind(rid)
        .bind(rec.kind())
        .bind(rec.collected_at_ms())
        .bind(body)
        .execute(&mut **tx)
        .await
        .map_err(q("insert record"))?;
        new_last_rid = new_last_rid.max(rid);
        if done.rows_affected() == 0 {
            continue;
        }
        inserted += 1;
        match rec {
            Record::Inventory {
                collected_at_ms,
                hash,
                inventory: inv,
            } => {
                let json = serde_json::to_string(inv).unwrap_or_default();
                inventory = Some((json, hash.clone(), *collected_at_ms));
            }
            Record::Metrics {
                collected_at_ms,
                metrics: m,
            } => {
                let json = serde_json::to_string(m).unwrap_or_default();
                metrics = Some((json, *collected_at_ms));
            }
            Record::VmInventory { .. }
            | Record::VmMetrics { .. }
            | Record::Health { .. }
            | Record::Alert { .. }
            | Record::PackStatus { .. }
            | Record::Collected { .. } => {
                health::apply_record(tx, appliance_id, rec).await?;
            }
            Record::Agent {
                collected_at_ms,
                agent: a,
            } => {
                let json = serde_json::to_string(a).unwrap_or_default();
                agent = Some((
                    json,
                    *collected_at_ms,
                    i64::try_from(a.dropped_records).unwrap_or(i64::MAX),
                    i64::try_from(a.spool_corrupt_records).unwrap_or(i64::MAX),
                ));
            }
        }
    }
    sqlx::query(
        "UPDATE appliances SET batches = batches + 1, records = records + $2, last_rid = $3
         WHERE id = $1",
    )
    .bind(appliance_id)
    .bind(inserted)
    .bind(new_last_rid)
    .execute(&mut **tx)
    .await
    .map_err(q("count batch"))?;
    if let Some((json, hash, at)) = inventory {
        sqlx::query(
            "UPDATE appliances SET inventory_json = $2, inventory_hash = $3, inventory_at = $4 WHERE id = $1",
        )
        .bind(appliance_id)
        .bind(json)
        .bind(hash)
        .bind(at)
        .execute(&mut **tx)
        .await
        .map_err(q("update inventory"))?;
    }
    if let Some((json, at)) = metrics {
        sqlx::query("UPDATE appliances SET metrics_json = $2, metrics_at = $3 WHERE id = $1")
            .bind(appliance_id)
            .bind(json)
            .bind(at)
            .execute(&mut **tx)
            .await
            .map_err(q("update metrics"))?;
    }
    if let Some((json, at, dropped, corrupt)) = agent {
        sqlx::query(
            "UPDATE appliances SET agent_json = $2, agent_at = $3, dropped_records = $4,
                    spool_corrupt_records = $5
             WHERE id = $1",
        )
        .bind(appliance_id)
        .bind(json)
        .bind(at)
        .bind(dropped)
        .bind(corrupt)
        .execute(&mut **tx)
        .await
        .map_err(q("update self-metrics"))?;
    }
    Ok(IngestStep::Done(IngestOutcome::Stored {
        seq,
        last_rid: u64::try_from(new_last_rid).unwrap_or(0),
        skipped: u64::try_from(count - inserted).unwrap_or(0),
    }))
}

async fn insert_cert(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    id: &str,
    cert: &NewCert<'_>,
    now: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO certificates (serial, fingerprint, appliance_id, pem, not_before, not_after, issued_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(cert.serial)
    .bind(cert.fingerprint)
    .bind(id)
    .bind(cert.pem)
    .bind(cert.not_before)
    .bind(cert.not_after)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(q("insert certificate"))?;
    Ok(())
}

fn parse_state(id: &str, s: &str) -> Result<ApplianceState, StoreError> {
    ApplianceState::parse(s).ok_or_else(|| StoreError::Corrupt {
        what: "state",
        id: id.to_string(),
        reason: format!("unknown state {s:?}"),
    })
}

fn summary_from_row(r: &AnyRow) -> Result<ApplianceSummary, StoreError> {
    let id: String = r.get(0);
    let state = parse_state(&id, &r.get::<String, _>(1))?;
    Ok(ApplianceSummary {
        state,
        customer: r.get(2),
        hostname: r.get(3),
        enrolled_at: r.get(4),
        last_seen: r.get(5),
        id,
    })
}

fn command_from_row(r: &AnyRow) -> CommandRow {
    let args: String = r.get(3);
    CommandRow {
        id: r.get(0),
        appliance_id: r.get(1),
        kind: r.get(2),
        args: serde_json::from_str(&args).unwrap_or(serde_json::Value::Null),
        state: r.get(4),
        output: r.get(5),
        created_at: r.get(6),
        completed_at: r.get(7),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outpost_proto::{AgentMetrics, HostMetrics};

    /// A fresh store per backend: always SQLite in a temp dir, plus a throwaway PostgreSQL
    /// database when `OUTPOST_TEST_POSTGRES` names a server (a skip is printed otherwise).
    struct Backends {
        _dir: tempfile::TempDir,
        stores: Vec<(&'static str, Store)>,
        pg_admin: Option<(AnyPool, String)>,
    }

    impl Backends {
        async fn cleanup(self) {
            for (_, s) in &self.stores {
                s.close().await;
            }
            if let Some((admin, db)) = self.pg_admin {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .execute(&admin)
                    .await;
                admin.close().await;
            }
        }
    }

    async fn backends() -> Backends {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let sqlite = Store::open(&StoreLocation::Sqlite(dir.path().join("t.db")))
            .await
            .unwrap();
        let mut stores = vec![("sqlite", sqlite)];
        let mut pg_admin = None;
        match std::env::var("OUTPOST_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => {
                sqlx::any::install_default_drivers();
                let admin = AnyPoolOptions::new()
                    .max_connections(1)
                    .connect(&url)
                    .await
                    .unwrap();
                let db = format!("outpost_unit_{}", hex::encode(rand::random::<[u8; 6]>()));
                sqlx::query(&format!("CREATE DATABASE {db}"))
                    .execute(&admin)
                    .await
                    .unwrap();
                let base = url.split('?').next().unwrap_or(&url);
                let cut = base.rfind('/').unwrap_or(base.len());
                let pg_url = format!("{}/{db}", &base[..cut]);
                let pg = Store::open(&StoreLocation::Postgres(pg_url)).await.unwrap();
                stores.push(("postgres", pg));
                pg_admin = Some((admin, db));
            }
            _ => {
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIP (postgres half): OUTPOST_TEST_POSTGRES is not set; store tests ran on SQLite only"
                );
            }
        }
        Backends {
            _dir: dir,
            stores,
            pg_admin,
        }
    }

    async fn pending(store: &Store, uses: u32) -> (TokenRow, String) {
        let (_, token) = store
            .create_token("acme", Duration::from_secs(60), uses, false, now_ms())
            .await
            .unwrap();
        let row = store.find_token(&token).await.unwrap().unwrap();
        let id = new_id("ap");
        assert!(store
            .enroll_pending(&row, &id, "box", &new_id("key"), "csr", now_ms())
            .await
            .unwrap());
        (row, id)
    }

    fn cert(serial: &str) -> NewCert<'_> {
        NewCert {
            serial,
            fingerprint: serial,
            pem: "pem",
            not_before: 0,
            not_after: 1,
        }
    }

    /// A metrics record with record id `rid`, collected at `rid`.
    fn metrics(rid: u64) -> Envelope {
        Envelope {
            rid,
            record: Record::Metrics {
                collected_at_ms: i64::try_from(rid).unwrap(),
                metrics: HostMetrics::default(),
            },
        }
    }

    fn agent(rid: u64, dropped: u64, corrupt: u64) -> Envelope {
        Envelope {
            rid,
            record: Record::Agent {
                collected_at_ms: 7,
                agent: AgentMetrics {
                    current_gateway: "127.0.0.3:5723".into(),
                    reconnects: 4,
                    spool_depth: 10,
                    spool_bytes: 2048,
                    dropped_records: dropped,
                    spool_corrupt_records: corrupt,
                    send_latency_ms: Some(9),
                },
            },
        }
    }

    async fn approved(store: &Store) -> String {
        let (_, id) = pending(store, 1).await;
        store
            .approve(&id, &cert(&new_id("serial")), now_ms())
            .await
            .unwrap();
        id
    }

    fn stored(seq: u64, last_rid: u64, skipped: u64) -> IngestOutcome {
        IngestOutcome::Stored {
            seq,
            last_rid,
            skipped,
        }
    }

    fn guest(name: &str, uuid: &str, vcpus: u32) -> outpost_proto::VmInventory {
        outpost_proto::VmInventory {
            name: name.into(),
            uuid: uuid.into(),
            source: outpost_proto::vm::VmOrigin::Qemu,
            vcpus,
            memory_bytes: 64 << 20,
            disks: Vec::new(),
            nics: Vec::new(),
        }
    }

    fn env(rid: u64, record: Record) -> Envelope {
        Envelope { rid, record }
    }

    fn change(object: &str, monitor: &str, to: &str, at_ms: i64) -> outpost_proto::HealthChange {
        outpost_proto::HealthChange {
            object: object.into(),
            monitor: monitor.into(),
            from: None,
            to: to.into(),
            at_ms,
        }
    }

    fn alert_event(status: outpost_proto::AlertStatus, at_ms: i64) -> outpost_proto::AlertEvent {
        outpost_proto::AlertEvent {
            id: "cpu-high@host/box@10".into(),
            status,
            severity: "critical".into(),
            object: "host/box".into(),
            monitor: "cpu".into(),
            rule: "cpu-high".into(),
            message: "busy".into(),
            raised_at_ms: 10,
            at_ms,
            reason: (status == outpost_proto::AlertStatus::Resolved).then(|| "healthy".into()),
        }
    }

    #[tokio::test]
    async fn vms_health_and_alerts_follow_the_records() {
        let b = backends().await;
        for (name, store) in &b.stores {
            eprintln!("backend {name}");
            vms_health_and_alerts_follow_the_records_on(store).await;
        }
        b.cleanup().await;
    }

    async fn vms_health_and_alerts_follow_the_records_on(store: &Store) {
        use outpost_proto::{AlertStatus, VmDelta, VmMetrics};
        let id = approved(store).await;
        let (a, b_vm, c) = (
            guest("a", "u-a", 1),
            guest("b", "u-b", 2),
            guest("c", "", 1),
        );
        let batch1 = vec![
            env(
                1,
                Record::VmInventory {
                    collected_at_ms: 5,
                    full: true,
                    delta: VmDelta {
                        added: vec![a.clone(), b_vm.clone()],
                        ..VmDelta::default()
                    },
                },
            ),
            env(
                2,
                Record::VmMetrics {
                    collected_at_ms: 5,
                    vms: vec![VmMetrics {
                        key: "u-a".into(),
                        state: outpost_proto::vm::VmState::Running,
                        state_detail: "proc:S".into(),
                        pid: Some(7),
                        cpu_time_ms: 1,
                        rss_bytes: 2,
                        io_read_bytes: None,
                        io_write_bytes: None,
                        net_rx_bytes: None,
                        net_tx_bytes: None,
                        cgroup: None,
                    }],
                },
            ),
            env(
                3,
                Record::Health {
                    collected_at_ms: 5,
                    changes: vec![
                        change("host/box", "health", "healthy", 5),
                        change("host/box", "cpu", "healthy", 5),
                        change("vm/b", "health", "healthy", 5),
                    ],
                    removed: Vec::new(),
                },
            ),
            env(
                4,
                Record::Alert {
                    collected_at_ms: 10,
                    alert: alert_event(AlertStatus::Raised, 10),
                },
            ),
        ];
        assert_eq!(
            store.ingest(&id, 1, &batch1, now_ms()).await.unwrap(),
            stored(1, 4, 0)
        );
        let vms = store.vms(&id).await.unwrap();
        assert_eq!(
            vms.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(vms[0].metrics_json.as_deref().unwrap().contains("proc:S"));
        assert_eq!(vms[0].metrics_at, Some(5));
        assert_eq!(store.health_states(&id).await.unwrap().len(), 3);
        let open = store.alerts(&id, true).await.unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].resolved_at, None);

        // A delta: b goes, c comes, a changes; vm/b is forgotten; cpu goes critical; the
        // alert resolves.
        let mut a2 = a.clone();
        a2.vcpus = 4;
        let batch2 = vec![
            env(
                5,
                Record::VmInventory {
                    collected_at_ms: 20,
                    full: false,
                    delta: VmDelta {
                        added: vec![c.clone()],
                        removed: vec![b_vm],
                        changed: vec![a2],
                    },
                },
            ),
            env(
                6,
                Record::Health {
                    collected_at_ms: 20,
                    changes: vec![change("host/box", "cpu", "critical", 20)],
                    removed: vec!["vm/b".into()],
                },
            ),
            env(
                7,
                Record::Alert {
                    collected_at_ms: 30,
                    alert: alert_event(AlertStatus::Resolved, 30),
                },
            ),
        ];
        assert_eq!(
            store.ingest(&id, 2, &batch2, now_ms()).await.unwrap(),
            stored(2, 7, 0)
        );
        let vms = store.vms(&id).await.unwrap();
        assert_eq!(
            vms.iter().map(|v| v.key.as_str()).collect::<Vec<_>>(),
            ["u-a", "name:c"]
        );
        assert!(
            vms[0].inventory_json.contains("\"vcpus\":4"),
            "{}",
            vms[0].inventory_json
        );
        assert_eq!((vms[0].added_at, vms[0].changed_at), (5, 20));
        let states = store.health_states(&id).await.unwrap();
        assert_eq!(states.len(), 2);
        let cpu = states.iter().find(|s| s.monitor == "cpu").unwrap();
        assert_eq!((cpu.state.as_str(), cpu.since), ("critical", 20));
        assert_eq!(store.count_health_changes(&id).await.unwrap(), 4);
        assert!(store.alerts(&id, true).await.unwrap().is_empty());
        let all = store.alerts(&id, false).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].raised_at, 10);
        assert_eq!(all[0].resolved_at, Some(30));
        assert_eq!(all[0].resolve_reason.as_deref(), Some("healthy"));

        // The next start of the collector sends a full list: it replaces the guests.
        let batch3 = vec![env(
            8,
            Record::VmInventory {
                collected_at_ms: 40,
                full: true,
                delta: VmDelta::default(),
            },
        )];
        assert_eq!(
            store.ingest(&id, 3, &batch3, now_ms()).await.unwrap(),
            stored(3, 8, 0)
        );
        assert!(store.vms(&id).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn packs_are_versioned_and_delivered_by_assignment() {
        let b = backends().await;
        for (name, store) in &b.stores {
            eprintln!("backend {name}");
            packs_are_versioned_and_delivered_by_assignment_on(store).await;
        }
        b.cleanup().await;
    }

    async fn packs_are_versioned_and_delivered_by_assignment_on(store: &Store) {
        let id = approved(store).await; // customer acme
        let other = approved(store).await;
        let first = store.import_pack("p1", "a = 1", 1).await.unwrap();
        assert_eq!(
            first,
            PackImport {
                version: 1,
                changed: true
            }
        );
        let again = store.import_pack("p1", "a = 1", 2).await.unwrap();
        assert_eq!(
            again,
            PackImport {
                version: 1,
                changed: false
            }
        );
        store.import_pack("p2", "b = 2", 3).await.unwrap();
        assert!(store.packs_for(&id).await.unwrap().is_empty());
        assert!(matches!(
            store
                .assign_pack("nope", PackScope::Customer, "acme", 4)
                .await,
            Err(StoreError::NotFound { what: "pack", .. })
        ));
        assert!(matches!(
            store
                .assign_pack("p1", PackScope::Appliance, "ap-none", 4)
                .await,
            Err(StoreError::NotFound {
                what: "appliance",
                ..
            })
        ));
        assert!(store
            .assign_pack("p2", PackScope::Appliance, &id, 4)
            .await
            .unwrap());
        assert!(!store
            .assign_pack("p2", PackScope::Appliance, &id, 5)
            .await
            .unwrap());
        let names = |docs: Vec<outpost_proto::PackDoc>| {
            docs.into_iter().map(|d| d.name).collect::<Vec<_>>()
        };
        assert_eq!(names(store.packs_for(&id).await.unwrap()), ["p2"]);
        assert!(store.packs_for(&other).await.unwrap().is_empty());
        assert!(store
            .assign_pack("p1", PackScope::Customer, "acme", 6)
            .await
            .unwrap());
        assert_eq!(names(store.packs_for(&id).await.unwrap()), ["p1", "p2"]);
        assert_eq!(names(store.packs_for(&other).await.unwrap()), ["p1"]);
        let changed = store.import_pack("p1", "a = 2", 7).await.unwrap();
        assert_eq!(
            changed,
            PackImport {
                version: 2,
                changed: true
            }
        );
        let docs = store.packs_for(&other).await.unwrap();
        assert_eq!(docs[0].toml, "a = 2");
        let listed = store.list_packs().await.unwrap();
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].version, 2);
        assert_eq!(
            listed[0].assigned,
            vec![("customer".to_string(), "acme".to_string())]
        );
        assert_eq!(
            listed[1].assigned,
            vec![("appliance".to_string(), id.clone())]
        );
    }

    #[tokio::test]
    async fn tokens_are_stored_hashed_and_uses_are_capped() {
        let b = backends().await;
        for (name, store) in &b.stores {
            eprintln!("backend {name}");
            tokens_are_stored_hashed_and_uses_are_capped_on(store).await;
        }
        b.cleanup().await;
    }

    async fn tokens_are_stored_hashed_and_uses_are_capped_on(store: &Store) {
        let (row, _) = pending(store, 1).await;
        assert_eq!(row.max_uses, 1);
        let raw: Vec<String> = sqlx::query("SELECT token_hash FROM tokens")
            .fetch_all(&store.read)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(raw.iter().all(|h| h.len() == 64 && !h.starts_with("opb_")));
        // Second enrolment with the used-up token writes nothing.
        let again = store
            .enroll_pending(&row, "ap-x", "box", "other-key", "csr", now_ms())
            .await
            .unwrap();
        assert!(!again);
        assert_eq!(store.list_appliances().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn ingest_is_exactly_once_and_refuses_gaps() {
        let b = backends().await;
        for (name, store) in &b.stores {
            eprintln!("backend {name}");
            ingest_is_exactly_once_and_refuses_gaps_on(store).await;
        }
        b.cleanup().await;
    }

    async fn ingest_is_exactly_once_and_refuses_gaps_on(store: &Store) {
        let (_, id) = pending(store, 1).await;
        store.approve(&id, &cert("s1"), now_ms()).await.unwrap();
        let out = store
            .ingest(&id, 1, &[metrics(1), metrics(2)], now_ms())
            .await
            .unwrap();
        assert_eq!(out, stored(1, 2, 0));
        let out = store
            .ingest(&id, 1, &[metrics(1), metrics(2)], now_ms())
            .await
            .unwrap();
        assert_eq!(
            out,
            IngestOutcome::Duplicate {
                last_seq: 1,
                last_rid: 2
            }
        );
        let out = store.ingest(&id, 5, &[metrics(3)], now_ms()).await.unwrap();
        assert_eq!(out, IngestOutcome::Gap { expected: 2 });
        let d = store.appliance(&id).await.unwrap();
        assert_eq!((d.last_seq, d.batches, d.records, d.last_rid), (1, 1, 2, 2));
        assert_eq!(store.count_records(&id, "metrics").await.unwrap(), 2);
        assert_eq!(d.metrics_at, Some(2));
    }

    #[tokio::test]
    async fn a_record_id_stored_before_is_skipped_and_the_rest_stored() {
        let b = backends().await;
        for (name, store) in &b.stores {
            eprintln!("backend {name}");
            a_record_id_stored_before_is_skipped_and_the_rest_stored_on(store).await;
        }
        b.cleanup().await;
    }

    async fn a_record_id_stored_before_is_skipped_and_the_rest_stored_on(store: &Store) {
        let id = approved(store).await;
        let other = approved(store).await;
        assert_eq!(
            store
                .ingest(&id, 1, &[metrics(1), metrics(2)], now_ms())
                .await
                .unwrap(),
            stored(1, 2, 0)
        );
        // Batch 2 carries record 2 again (under a new sequence) and record 3: record 2 is
        // skipped, the first copy stays, record 3 and the sequence are stored.
        let mut again = metrics(2);
        if let Record::Metrics {
            collected_at_ms, ..
        } = &mut again.record
        {
            *collected_at_ms = 999;
        }
        assert_eq!(
            store
                .ingest(&id, 2, &[again.clone(), metrics(3)], now_ms())
                .await
                .unwrap(),
            stored(2, 3, 1)
        );
        // A batch of nothing but known ids still advances the sequence.
        assert_eq!(
            store
                .ingest(&id, 3, &[metrics(1), again], now_ms())
                .await
                .unwrap(),
            stored(3, 3, 2)
        );
        let d = store.appliance(&id).await.unwrap();
        assert_eq!((d.last_seq, d.batches, d.records), (3, 3, 3));
        let list = store.list_records(&id, None, None).await.unwrap();
        assert_eq!(
            list.iter()
                .map(|r| (r.rid, r.seq, r.collected_at))
                .collect::<Vec<_>>(),
            vec![(Some(1), 1, 1), (Some(2), 1, 2), (Some(3), 2, 3)],
            "the first copy of record 2 wins"
        );
        // Record ids are per appliance: another may use the same ones.
        assert_eq!(
            store
                .ingest(&other, 1, &[metrics(1), metrics(2)], now_ms())
                .await
                .unwrap(),
            stored(1, 2, 0)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_batch_stored_at_once_twice_is_stored_once() {
        let b = backends().await;
        for (name, store) in &b.stores {
            eprintln!("backend {name}");
            the_same_batch_stored_at_once_twice_is_stored_once_on(store).await;
        }
        b.cleanup().await;
    }

    /// Two gateways of a pool receiving the same batch at the same moment: one stores
    /// it, the other answers "duplicate" (never a store failure).
    async fn the_same_batch_stored_at_once_twice_is_stored_once_on(store: &Store) {
        let id = approved(store).await;
        for seq in 1..=15u64 {
            let batch: Vec<Envelope> = (0..10).map(|i| metrics(seq * 100 + i)).collect();
            let (a, b) = tokio::join!(
                store.ingest(&id, seq, &batch, now_ms()),
                store.ingest(&id, seq, &batch, now_ms())
            );
            let outcomes = [a.unwrap(), b.unwrap()];
            let stored = outcomes
                .iter()
                .filter(|o| matches!(o, IngestOutcome::Stored { .. }))
                .count();
            assert_eq!(stored, 1, "seq {seq}: {outcomes:?}");
            assert!(
                outcomes.iter().any(|o| *o
                    == IngestOutcome::Duplicate {
                        last_seq: seq,
                        last_rid: seq * 100 + 9
                    }),
                "seq {seq}: {outcomes:?}"
            );
        }
        let d = store.appliance(&id).await.unwrap();
        assert_eq!((d.last_seq, d.batches, d.records), (15, 15, 150));
    }

    #[tokio::test]
    async fn self_metrics_update_the_appliance_and_records_list_in_rid_order() {
        let b = backends().await;
        for (name, store) in &b.stores {
            eprintln!("backend {name}");
            self_metrics_update_the_appliance_and_records_list_in_rid_order_on(store).await;
        }
        b.cleanup().await;
    }

    async fn self_metrics_update_the_appliance_and_records_list_in_rid_order_on(store: &Store) {
        let id = approved(store).await;
        let d = store.appliance(&id).await.unwrap();
        assert_eq!((d.dropped_records, d.spool_corrupt_records), (0, 0));
        assert_eq!(d.agent_json, None);
        store
            .ingest(&id, 1, &[metrics(1), agent(2, 5, 1)], now_ms())
            .await
            .unwrap();
        store
            .ingest(&id, 2, &[metrics(3), agent(4, 6, 2), metrics(5)], now_ms())
            .await
            .unwrap();
        let d = store.appliance(&id).await.unwrap();
        assert_eq!((d.dropped_records, d.spool_corrupt_records), (6, 2));
        assert_eq!(d.agent_at, Some(7));
        let a: AgentMetrics = serde_json::from_str(d.agent_json.as_deref().unwrap()).unwrap();
        assert_eq!(a.current_gateway, "127.0.0.3:5723");
        assert_eq!(a.send_latency_ms, Some(9));
        assert_eq!(store.count_records(&id, "agent").await.unwrap(), 2);

        let all = store.list_records(&id, None, None).await.unwrap();
        assert_eq!(
            all.iter().map(|r| r.rid).collect::<Vec<_>>(),
            (1..=5).map(Some).collect::<Vec<_>>()
        );
        assert_eq!(all[1].kind, "agent");
        assert_eq!(all[3].seq, 2);
        let agents = store.list_records(&id, Some("agent"), None).await.unwrap();
        assert_eq!(
            agents.iter().map(|r| r.rid).collect::<Vec<_>>(),
            [Some(2), Some(4)]
        );
        let first = store
            .list_records(&id, Some("metrics"), Some(2))
            .await
            .unwrap();
        assert_eq!(
            first.iter().map(|r| r.rid).collect::<Vec<_>>(),
            [Some(1), Some(3)]
        );
        assert_eq!(
            store.list_records(&id, None, Some(0)).await.unwrap(),
            vec![]
        );
        assert!(matches!(
            store.list_records("ap-nope", None, None).await,
            Err(StoreError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn approvals_follow_the_state_machine() {
        let b = backends().await;
        for (name, store) in &b.stores {
            eprintln!("backend {name}");
            approvals_follow_the_state_machine_on(store).await;
        }
        b.cleanup().await;
    }

    async fn approvals_follow_the_state_machine_on(store: &Store) {
        let (_, id) = pending(store, 1).await;
        assert_eq!(store.cert_owner("s1").await.unwrap(), None);
        store.approve(&id, &cert("s1"), now_ms()).await.unwrap();
        let owner = store.cert_owner("s1").await.unwrap().unwrap();
        assert_eq!(owner.state, ApplianceState::Approved);
        let err = store.approve(&id, &cert("s2"), now_ms()).await.unwrap_err();
        assert!(matches!(err, StoreError::BadTransition { .. }), "{err}");
        store.revoke(&id, now_ms()).await.unwrap();
        let owner = store.cert_owner("s1").await.unwrap().unwrap();
        assert_eq!(owner.state, ApplianceState::Revoked);
        assert!(store.revoke(&id, now_ms()).await.is_err());
        assert!(matches!(
            store
                .approve("ap-nope", &cert("s3"), now_ms())
                .await
                .unwrap_err(),
            StoreError::NotFound { .. }
        ));
    }

    #[tokio::test]
    async fn commands_are_bound_to_their_appliance() {
        let b = backends().await;
        for (name, store) in &b.stores {
            eprintln!("backend {name}");
            commands_are_bound_to_their_appliance_on(store).await;
        }
        b.cleanup().await;
    }

    async fn commands_are_bound_to_their_appliance_on(store: &Store) {
        let (_, a) = pending(store, 1).await;
        let (_, b) = pending(store, 1).await;
        let cmd = store
            .queue_command(&a, "ping", &serde_json::json!({}), now_ms())
            .await
            .unwrap();
        assert!(store
            .take_commands(&b, now_ms(), Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty());
        let got = store
            .take_commands(&a, now_ms(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(got.len(), 1);
        // Delivered, not yet due for redelivery.
        assert!(store
            .take_commands(&a, now_ms(), Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty());
        assert!(store
            .complete_command(&b, &cmd, true, "x", now_ms())
            .await
            .is_err());
        store
            .complete_command(&a, &cmd, true, "pong", now_ms())
            .await
            .unwrap();
        let list = store.list_commands(&a).await.unwrap();
        assert_eq!(list[0].state, "done");
        assert_eq!(list[0].output.as_deref(), Some("pong"));
    }
}
