//! Group commit for SQLite's one writer: batches that arrive while a commit is under way
//! are stored together in the next transaction, with one fsync for all of them.
//!
//! Each batch runs inside its own savepoint, so a batch that fails (a constraint, a bad
//! record) is rolled back alone and answered with its error while the rest of the group
//! is stored. No batch is answered before the transaction that holds it has committed: an
//! acknowledgement still means "on disk" (`synchronous=FULL`). When the commit fails,
//! every batch of the group gets the error and none is acknowledged.
//!
//! There is no timer: a group is whatever queued up during the previous commit (at most
//! [`MAX_GROUP`]), so a lone batch is committed at once and a busy gateway amortises its
//! fsync and transaction overhead over many batches.
//!
//! PostgreSQL does not use this: a pool's gateways would hold row locks of many appliances
//! in one transaction and could deadlock each other; there each batch is one transaction on
//! a pool of connections.

use outpost_proto::Envelope;
use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use super::{ingest_in, IngestOutcome, IngestStep, Millis};
use crate::error::StoreError;

/// Most batches stored in one transaction.
pub const MAX_GROUP: usize = 512;

/// One batch waiting for the writer.
struct Job {
    appliance_id: String,
    seq: u64,
    records: Vec<Envelope>,
    now: Millis,
    reply: oneshot::Sender<Result<IngestOutcome, StoreError>>,
}

/// The handle of the writer task; the task ends when every handle is dropped.
#[derive(Debug, Clone)]
pub(crate) struct IngestWriter {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("appliance_id", &self.appliance_id)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl IngestWriter {
    /// Starts the writer task on `write` (a pool of one connection).
    pub(crate) fn start(write: AnyPool) -> Self {
        let (tx, rx) = mpsc::channel(MAX_GROUP * 4);
        tokio::spawn(run(write, rx));
        Self { tx }
    }

    /// Queues a batch and waits until its group has committed.
    pub(crate) async fn ingest(
        &self,
        appliance_id: String,
        seq: u64,
        records: Vec<Envelope>,
        now: Millis,
    ) -> Result<IngestOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Job {
                appliance_id,
                seq,
                records,
                now,
                reply,
            })
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }
}

async fn run(write: AnyPool, mut rx: mpsc::Receiver<Job>) {
    let mut jobs = Vec::with_capacity(MAX_GROUP);
    while rx.recv_many(&mut jobs, MAX_GROUP).await > 0 {
        let results = commit_group(&write, &jobs).await;
        for (job, result) in jobs.drain(..).zip(results) {
            // The request may have gone (client gone); the batch is stored all the same.
            let _ = job.reply.send(result);
        }
    }
    debug!("ingest writer stopped");
}

/// Stores `jobs` in one transaction, one savepoint each; answers in the same order.
async fn commit_group(write: &AnyPool, jobs: &[Job]) -> Vec<Result<IngestOutcome, StoreError>> {
    let n = jobs.len();
    let fail_all = |reason: String| {
        (0..n)
            .map(|_| {
                Err(StoreError::GroupCommit {
                    batches: n,
                    reason: reason.clone(),
                })
            })
            .collect()
    };
    let mut tx = match write.begin().await {
        Ok(tx) => tx,
        Err(e) => return fail_all(format!("begin: {e}")),
    };
    let mut results = Vec::with_capacity(n);
    for job in jobs {
        let mut sp = match sqlx::Acquire::begin(&mut *tx).await {
            Ok(sp) => sp,
            Err(e) => return fail_all(format!("savepoint: {e}")),
        };
        let step = ingest_in(&mut sp, &job.appliance_id, job.seq, &job.records, job.now).await;
        match step {
            Ok(IngestStep::Done(outcome)) => {
                if let Err(e) = sp.commit().await {
                    return fail_all(format!("release savepoint: {e}"));
                }
                results.push(Ok(outcome));
            }
            Ok(IngestStep::LostRace) => {
                // One writer: nobody else moves last_seq. Refuse rather than guess.
                if let Err(e) = sp.rollback().await {
                    return fail_all(format!("rollback to savepoint: {e}"));
                }
                results.push(Err(StoreError::Corrupt {
                    what: "last_seq",
                    id: job.appliance_id.clone(),
                    reason: "moved under the only writer".into(),
                }));
            }
            Err(e) => {
                warn!(appliance = %job.appliance_id, seq = job.seq, error = %e, "batch not stored; the rest of its group is");
                if let Err(e) = sp.rollback().await {
                    return fail_all(format!("rollback to savepoint: {e}"));
                }
                results.push(Err(e));
            }
        }
    }
    match tx.commit().await {
        Ok(()) => {
            if n > 1 {
                debug!(batches = n, "group committed");
            }
            results
        }
        Err(e) => fail_all(format!("commit: {e}")),
    }
}
