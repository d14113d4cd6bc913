//! Guests, health states and alerts as the boxes report them (migration 0003).
//!
//! Records of kind `vm_inventory`, `vm_metrics`, `health` and `alert` are applied in the
//! ingest transaction that stores them, in record order, so the tables always match the
//! records stored: a full guest list replaces the appliance's guests, a delta adds,
//! changes and removes; a health change sets a monitor's state and is kept as history; an
//! alert is opened when raised, its severity raised when escalated, closed when resolved
//! (a resolution whose raise was lost to the box's spool cap is stored closed).
//!
//! Records of kind `pack_status` (migration 0005) keep the latest word per appliance on
//! whether its delivered packs are in force, why not, and its override conflicts.
//!
//! Records of kind `collected` (migration 0006) add one row per value the packs' collect
//! rules picked on the box.

use outpost_proto::health::PackStatus;
use outpost_proto::vm::VmInventory;
use outpost_proto::{AlertStatus, Record};
use sqlx::{AnyConnection, Row};

use super::{q, Millis, Store};
use crate::error::StoreError;

/// A guest of an appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmRow {
    /// UUID, or `name:NAME`.
    pub key: String,
    /// Guest name.
    pub name: String,
    /// Its inventory (JSON of `VmInventory`).
    pub inventory_json: String,
    /// When it was first reported, unix ms (collection time).
    pub added_at: Millis,
    /// When its inventory last changed, unix ms.
    pub changed_at: Millis,
    /// Latest metrics (JSON of `VmMetrics`).
    pub metrics_json: Option<String>,
    /// When they were collected.
    pub metrics_at: Option<Millis>,
}

/// The current state of one monitor on one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthStateRow {
    /// `CLASS/ID`.
    pub object: String,
    /// Monitor id, or `health` for the object's rolled-up state.
    pub monitor: String,
    /// State name.
    pub state: String,
    /// Since when, unix ms.
    pub since: Millis,
}

/// An alert, open or resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRow {
    /// Occurrence id (`RULE@OBJECT@RAISED_AT`).
    pub id: String,
    /// The alert rule.
    pub rule: String,
    /// The monitor it watches.
    pub monitor: String,
    /// `CLASS/ID`.
    pub object: String,
    /// `warning` or `critical`.
    pub severity: String,
    /// What the rule says.
    pub message: String,
    /// When raised, unix ms.
    pub raised_at: Millis,
    /// When resolved; `None` while open.
    pub resolved_at: Option<Millis>,
    /// Why it resolved.
    pub resolve_reason: Option<String>,
}

/// One state change, as history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthChangeRow {
    /// `CLASS/ID`.
    pub object: String,
    /// Monitor id, or `health` for the object's rolled-up state.
    pub monitor: String,
    /// The state before; `None` when the object or monitor was new.
    pub from: Option<String>,
    /// The state after.
    pub to: String,
    /// When, unix ms.
    pub at: Millis,
}

/// The latest pack status an appliance reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackStatusRow {
    /// What the box said.
    pub status: PackStatus,
    /// Its collection time, unix ms.
    pub reported_at: Millis,
}

/// One value a collect rule picked on the box.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedRow {
    /// The collect rule.
    pub rule: String,
    /// `CLASS/ID`.
    pub object: String,
    /// The metric.
    pub metric: String,
    /// The value.
    pub value: f64,
    /// When it was sampled on the box, unix ms.
    pub at: Millis,
}

fn vm_json(vm: &VmInventory) -> String {
    serde_json::to_string(vm).unwrap_or_default()
}

async fn upsert_vm(
    conn: &mut AnyConnection,
    appliance_id: &str,
    vm: &VmInventory,
    at: Millis,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO vms (appliance_id, vm_key, name, inventory_json, added_at, changed_at)
         VALUES ($1, $2, $3, $4, $5, $5)
         ON CONFLICT (appliance_id, vm_key) DO UPDATE
         SET name = excluded.name, inventory_json = excluded.inventory_json,
             changed_at = excluded.changed_at",
    )
    .bind(appliance_id)
    .bind(vm.key())
    .bind(&vm.name)
    .bind(vm_json(vm))
    .bind(at)
    .execute(&mut *conn)
    .await
    .map_err(q("store vm"))?;
    Ok(())
}

/// Applies one newly stored record of the kinds above; other kinds are left alone.
pub(super) async fn apply_record(
    conn: &mut AnyConnection,
    appliance_id: &str,
    rec: &Record,
) -> Result<(), StoreError> {
    match rec {
        Record::VmInventory {
            collected_at_ms,
            full,
            delta,
        } => {
            if *full {
                sqlx::query("DELETE FROM vms WHERE appliance_id = $1")
                    .bind(appliance_id)
                    .execute(&mut *conn)
                    .await
                    .map_err(q("replace vms"))?;
            }
            for vm in &delta.removed {
                sqlx::query("DELETE FROM vms WHERE appliance_id = $1 AND vm_key = $2")
                    .bind(appliance_id)
                    .bind(vm.key())
                    .execute(&mut *conn)
                    .await
                    .map_err(q("remove vm"))?;
            }
            for vm in delta.added.iter().chain(&delta.changed) {
                upsert_vm(conn, appliance_id, vm, *collected_at_ms).await?;
            }
        }
        Record::VmMetrics {
            collected_at_ms,
            vms,
        } => {
            for m in vms {
                sqlx::query(
                    "UPDATE vms SET metrics_json = $3, metrics_at = $4
                     WHERE appliance_id = $1 AND vm_key = $2",
                )
                .bind(appliance_id)
                .bind(&m.key)
                .bind(serde_json::to_string(m).unwrap_or_default())
                .bind(*collected_at_ms)
                .execute(&mut *conn)
                .await
                .map_err(q("store vm metrics"))?;
            }
        }
        Record::Health {
            changes, removed, ..
        } => {
            for object in removed {
                sqlx::query("DELETE FROM health_states WHERE appliance_id = $1 AND object = $2")
                    .bind(appliance_id)
                    .bind(object)
                    .execute(&mut *conn)
                    .await
                    .map_err(q("forget health object"))?;
            }
            for c in changes {
                sqlx::query(
                    "INSERT INTO health_states (appliance_id, object, monitor, state, since)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (appliance_id, object, monitor) DO UPDATE
                     SET state = excluded.state, since = excluded.since",
                )
                .bind(appliance_id)
                .bind(&c.object)
                .bind(&c.monitor)
                .bind(&c.to)
                .bind(c.at_ms)
                .execute(&mut *conn)
                .await
                .map_err(q("store health state"))?;
                sqlx::query(
                    "INSERT INTO health_changes (appliance_id, object, monitor, from_state, to_state, at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(appliance_id)
                .bind(&c.object)
                .bind(&c.monitor)
                .bind(c.from.clone())
                .bind(&c.to)
                .bind(c.at_ms)
                .execute(&mut *conn)
                .await
                .map_err(q("store health change"))?;
            }
        }
        Record::Alert { alert: a, .. } => {
            let resolved = a.status == AlertStatus::Resolved;
            sqlx::query(
                "INSERT INTO alerts (appliance_id, id, rule, monitor, object, severity, message,
                                     raised_at, resolved_at, resolve_reason)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (appliance_id, id) DO UPDATE
                 SET severity = excluded.severity, message = excluded.message,
                     resolved_at = excluded.resolved_at, resolve_reason = excluded.resolve_reason",
            )
            .bind(appliance_id)
            .bind(&a.id)
            .bind(&a.rule)
            .bind(&a.monitor)
            .bind(&a.object)
            .bind(&a.severity)
            .bind(&a.message)
            .bind(a.raised_at_ms)
            .bind(resolved.then_some(a.at_ms))
            .bind(if resolved { a.reason.clone() } else { None })
            .execute(&mut *conn)
            .await
            .map_err(q("store alert"))?;
        }
        Record::PackStatus {
            collected_at_ms,
            status,
        } => {
            sqlx::query(
                "INSERT INTO pack_status (appliance_id, etag, packs_json, applied, error,
                                          conflicts_json, reported_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (appliance_id) DO UPDATE
                 SET etag = excluded.etag, packs_json = excluded.packs_json,
                     applied = excluded.applied, error = excluded.error,
                     conflicts_json = excluded.conflicts_json,
                     reported_at = excluded.reported_at
                 WHERE excluded.reported_at >= pack_status.reported_at",
            )
            .bind(appliance_id)
            .bind(status.etag.clone())
            .bind(serde_json::to_string(&status.packs).unwrap_or_default())
            .bind(i64::from(status.applied))
            .bind(status.error.clone())
            .bind(serde_json::to_string(&status.conflicts).unwrap_or_default())
            .bind(*collected_at_ms)
            .execute(&mut *conn)
            .await
            .map_err(q("store pack status"))?;
        }
        Record::Collected { values, .. } => {
            for v in values {
                sqlx::query(
                    "INSERT INTO collected (appliance_id, rule, object, metric, value, at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(appliance_id)
                .bind(&v.rule)
                .bind(&v.object)
                .bind(&v.metric)
                .bind(v.value)
                .bind(v.at_ms)
                .execute(&mut *conn)
                .await
                .map_err(q("store collected value"))?;
            }
        }
        Record::Inventory { .. } | Record::Metrics { .. } | Record::Agent { .. } => {}
    }
    Ok(())
}

impl Store {
    /// The appliance's guests, by name.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn vms(&self, appliance_id: &str) -> Result<Vec<VmRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT vm_key, name, inventory_json, added_at, changed_at, metrics_json, metrics_at
             FROM vms WHERE appliance_id = $1 ORDER BY name, vm_key",
        )
        .bind(appliance_id)
        .fetch_all(&self.read)
        .await
        .map_err(q("list vms"))?;
        Ok(rows
            .iter()
            .map(|r| VmRow {
                key: r.get(0),
                name: r.get(1),
                inventory_json: r.get(2),
                added_at: r.get(3),
                changed_at: r.get(4),
                metrics_json: r.get(5),
                metrics_at: r.get(6),
            })
            .collect())
    }

    /// The current health states of the appliance's objects, by object and monitor.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn health_states(
        &self,
        appliance_id: &str,
    ) -> Result<Vec<HealthStateRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT object, monitor, state, since FROM health_states
             WHERE appliance_id = $1 ORDER BY object, monitor",
        )
        .bind(appliance_id)
        .fetch_all(&self.read)
        .await
        .map_err(q("list health states"))?;
        Ok(rows
            .iter()
            .map(|r| HealthStateRow {
                object: r.get(0),
                monitor: r.get(1),
                state: r.get(2),
                since: r.get(3),
            })
            .collect())
    }

    /// How many state changes are kept for the appliance.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn count_health_changes(&self, appliance_id: &str) -> Result<i64, StoreError> {
        let r = sqlx::query("SELECT COUNT(*) FROM health_changes WHERE appliance_id = $1")
            .bind(appliance_id)
            .fetch_one(&self.read)
            .await
            .map_err(q("count health changes"))?;
        Ok(r.get(0))
    }

    /// The appliance's health state changes, oldest first; at most `limit` (the newest).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn health_changes(
        &self,
        appliance_id: &str,
        limit: i64,
    ) -> Result<Vec<HealthChangeRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT object, monitor, from_state, to_state, at FROM health_changes
             WHERE appliance_id = $1 ORDER BY at DESC, object DESC, monitor DESC LIMIT $2",
        )
        .bind(appliance_id)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(q("list health changes"))?;
        let mut out: Vec<HealthChangeRow> = rows
            .iter()
            .map(|r| HealthChangeRow {
                object: r.get(0),
                monitor: r.get(1),
                from: r.get(2),
                to: r.get(3),
                at: r.get(4),
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    /// The latest pack status the appliance reported, if any.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn pack_status(
        &self,
        appliance_id: &str,
    ) -> Result<Option<PackStatusRow>, StoreError> {
        let row = sqlx::query(
            "SELECT etag, packs_json, applied, error, conflicts_json, reported_at
             FROM pack_status WHERE appliance_id = $1",
        )
        .bind(appliance_id)
        .fetch_optional(&self.read)
        .await
        .map_err(q("read pack status"))?;
        Ok(row.map(|r| {
            let packs: String = r.get(1);
            let conflicts: String = r.get(4);
            let applied: i64 = r.get(2);
            PackStatusRow {
                status: PackStatus {
                    etag: r.get(0),
                    packs: serde_json::from_str(&packs).unwrap_or_default(),
                    applied: applied != 0,
                    error: r.get(3),
                    conflicts: serde_json::from_str(&conflicts).unwrap_or_default(),
                },
                reported_at: r.get(5),
            }
        }))
    }

    /// The values collect rules picked on the appliance, oldest first; at most `limit` (the
    /// newest).
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn collected(
        &self,
        appliance_id: &str,
        limit: i64,
    ) -> Result<Vec<CollectedRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT rule, object, metric, value, at FROM collected
             WHERE appliance_id = $1 ORDER BY at DESC, object DESC, metric DESC LIMIT $2",
        )
        .bind(appliance_id)
        .bind(limit)
        .fetch_all(&self.read)
        .await
        .map_err(q("list collected values"))?;
        let mut out: Vec<CollectedRow> = rows
            .iter()
            .map(|r| CollectedRow {
                rule: r.get(0),
                object: r.get(1),
                metric: r.get(2),
                value: r.get(3),
                at: r.get(4),
            })
            .collect();
        out.reverse();
        Ok(out)
    }

    /// The appliance's alerts, newest raise first: only open ones with `open_only`.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn alerts(
        &self,
        appliance_id: &str,
        open_only: bool,
    ) -> Result<Vec<AlertRow>, StoreError> {
        let sql = if open_only {
            "SELECT id, rule, monitor, object, severity, message, raised_at, resolved_at, resolve_reason
             FROM alerts WHERE appliance_id = $1 AND resolved_at IS NULL
             ORDER BY raised_at DESC, id"
        } else {
            "SELECT id, rule, monitor, object, severity, message, raised_at, resolved_at, resolve_reason
             FROM alerts WHERE appliance_id = $1 ORDER BY raised_at DESC, id"
        };
        let rows = sqlx::query(sql)
            .bind(appliance_id)
            .fetch_all(&self.read)
            .await
            .map_err(q("list alerts"))?;
        Ok(rows
            .iter()
            .map(|r| AlertRow {
                id: r.get(0),
                rule: r.get(1),
                monitor: r.get(2),
                object: r.get(3),
                severity: r.get(4),
                message: r.get(5),
                raised_at: r.get(6),
                resolved_at: r.get(7),
                resolve_reason: r.get(8),
            })
            .collect())
    }
}
