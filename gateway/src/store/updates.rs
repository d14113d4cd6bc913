//! Staged updates at the gateway (migration 0004): the VAR's maintenance windows, the
//! updater's command queue (`set_window`, `restart`), and the latest state each updater
//! reported.
//!
//! Windows are kept per customer and per appliance; an appliance's own window overrides its
//! customer's. Setting or clearing a window queues a `set_window` command, in the same
//! transaction, for every approved appliance whose effective window it changes; an
//! appliance approved later gets its effective window queued on approval. A newer
//! `set_window` supersedes an older one the appliance has not fetched yet, so a box that was
//! offline gets the latest window once, not the whole history.

use outpost_proto::update::{
    UpdateState, WindowSpec, AGENT_COLLECTOR, AGENT_UPDATER, CMD_RESTART, CMD_SET_WINDOW,
};
use outpost_proto::ApplianceState;
use sqlx::Row;

use super::{new_id, q, Millis, Store};
use crate::error::StoreError;

/// The agent on the box a command kind is for: `set_window` and `restart` go to the
/// updater, everything else to the collector.
#[must_use]
pub fn agent_for_kind(kind: &str) -> &'static str {
    match kind {
        CMD_SET_WINDOW | CMD_RESTART => AGENT_UPDATER,
        _ => AGENT_COLLECTOR,
    }
}

/// Whom a window applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowScope {
    /// Every appliance of a customer that has no window of its own.
    Customer,
    /// One appliance.
    Appliance,
}

impl WindowScope {
    /// `customer` or `appliance`, as stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Appliance => "appliance",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "customer" => Some(Self::Customer),
            "appliance" => Some(Self::Appliance),
            _ => None,
        }
    }
}

/// A stored window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowRow {
    /// Customer or appliance.
    pub scope: WindowScope,
    /// Customer name or appliance id.
    pub target: String,
    /// The window.
    pub spec: WindowSpec,
    /// When it was set, unix ms.
    pub set_at: Millis,
}

/// The latest state an updater reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateStateRow {
    /// What it reported.
    pub state: UpdateState,
    /// When the gateway received it, unix ms.
    pub received_at: Millis,
}

/// The `set_window` arguments sent when no window applies any more: no ranges, which tells
/// the updater to fall back to its own default.
#[must_use]
pub fn no_window() -> WindowSpec {
    WindowSpec {
        tz: "UTC".to_string(),
        ranges: Vec::new(),
    }
}

type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

impl Store {
    /// Stores a (validated) window for a customer or an appliance, replacing the one it
    /// had, and queues `set_window` for every approved appliance it now applies to.
    /// Returns `(appliance, command id)` per queued command.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown appliance, [`StoreError::BadTransition`] for a
    /// revoked one, [`StoreError::Query`].
    pub async fn set_window(
        &self,
        scope: WindowScope,
        target: &str,
        spec: &WindowSpec,
        now: Millis,
    ) -> Result<Vec<(String, String)>, StoreError> {
        if scope == WindowScope::Appliance {
            self.refuse_revoked(target, "set a window for").await?;
        }
        let spec_json = serde_json::to_string(spec).unwrap_or_default();
        let mut tx = self.write.begin().await.map_err(q("begin set window"))?;
        sqlx::query(
            "INSERT INTO windows (scope, target, spec, set_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (scope, target) DO UPDATE SET spec = excluded.spec, set_at = excluded.set_at",
        )
        .bind(scope.as_str())
        .bind(target)
        .bind(&spec_json)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(q("store window"))?;
        let affected = affected_appliances(&mut tx, scope, target).await?;
        let mut queued = Vec::with_capacity(affected.len());
        for ap in affected {
            let cmd = queue_set_window(&mut tx, &ap, spec, now).await?;
            queued.push((ap, cmd));
        }
        tx.commit().await.map_err(q("commit set window"))?;
        Ok(queued)
    }

    /// Removes a window and queues `set_window` with what applies now (the customer's
    /// window for an appliance that had its own, or [`no_window`]) for every approved
    /// appliance it applied to.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no such window is set, [`StoreError::Query`].
    pub async fn clear_window(
        &self,
        scope: WindowScope,
        target: &str,
        now: Millis,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut tx = self.write.begin().await.map_err(q("begin clear window"))?;
        // Who it applied to, read before it goes (an appliance's own window hides the
        // customer's from `affected_appliances`).
        let affected = affected_appliances(&mut tx, scope, target).await?;
        let deleted = sqlx::query("DELETE FROM windows WHERE scope = $1 AND target = $2")
            .bind(scope.as_str())
            .bind(target)
            .execute(&mut *tx)
            .await
            .map_err(q("delete window"))?;
        if deleted.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "window",
                id: format!("{} {target}", scope.as_str()),
            });
        }
        let mut queued = Vec::with_capacity(affected.len());
        for ap in affected {
            let spec = effective_window_in(&mut tx, &ap)
                .await?
                .map_or_else(no_window, |w| w.spec);
            let cmd = queue_set_window(&mut tx, &ap, &spec, now).await?;
            queued.push((ap, cmd));
        }
        tx.commit().await.map_err(q("commit clear window"))?;
        Ok(queued)
    }

    /// Every stored window, customers first, then by target.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub async fn list_windows(&self) -> Result<Vec<WindowRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT scope, target, spec, set_at FROM windows ORDER BY scope DESC, target",
        )
        .fetch_all(&self.read)
        .await
        .map_err(q("list windows"))?;
        rows.iter().map(window_from_row).collect()
    }

    /// The window in force for an appliance: its own, else its customer's.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub async fn effective_window(
        &self,
        appliance_id: &str,
    ) -> Result<Option<WindowRow>, StoreError> {
        let mut conn = self.read.acquire().await.map_err(q("acquire"))?;
        effective_window_on(&mut conn, appliance_id).await
    }

    /// Queues the effective window (if any) for an appliance just approved; returns the
    /// command id.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub async fn queue_window_on_approval(
        &self,
        appliance_id: &str,
        now: Millis,
    ) -> Result<Option<String>, StoreError> {
        let mut tx = self.write.begin().await.map_err(q("begin queue window"))?;
        let Some(w) = effective_window_in(&mut tx, appliance_id).await? else {
            return Ok(None);
        };
        let cmd = queue_set_window(&mut tx, appliance_id, &w.spec, now).await?;
        tx.commit().await.map_err(q("commit queue window"))?;
        Ok(Some(cmd))
    }

    /// Queues an explicit `restart` for an approved appliance's updater; returns its id.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown appliance, [`StoreError::BadTransition`] for
    /// a pending or revoked one, [`StoreError::Query`].
    pub async fn queue_restart(
        &self,
        appliance_id: &str,
        now: Millis,
    ) -> Result<String, StoreError> {
        let state = self.state_of(appliance_id).await?;
        if state != ApplianceState::Approved {
            return Err(StoreError::BadTransition {
                id: appliance_id.to_string(),
                state: state.to_string(),
                op: "restart",
            });
        }
        self.queue_command(
            appliance_id,
            CMD_RESTART,
            &serde_json::Value::Object(serde_json::Map::new()),
            now,
        )
        .await
    }

    /// Keeps the latest state an updater reported.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn store_update_state(
        &self,
        appliance_id: &str,
        state: &UpdateState,
        now: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO update_states (appliance_id, state_json, received_at) VALUES ($1, $2, $3)
             ON CONFLICT (appliance_id) DO UPDATE
             SET state_json = excluded.state_json, received_at = excluded.received_at",
        )
        .bind(appliance_id)
        .bind(serde_json::to_string(state).unwrap_or_default())
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(q("store update state"))?;
        Ok(())
    }

    /// The latest state an appliance's updater reported, if any.
    ///
    /// # Errors
    /// [`StoreError::Query`], [`StoreError::Corrupt`].
    pub async fn update_state(
        &self,
        appliance_id: &str,
    ) -> Result<Option<UpdateStateRow>, StoreError> {
        let row = sqlx::query(
            "SELECT state_json, received_at FROM update_states WHERE appliance_id = $1",
        )
        .bind(appliance_id)
        .fetch_optional(&self.read)
        .await
        .map_err(q("read update state"))?;
        row.map(|r| {
            let text: String = r.get(0);
            let state = serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
                what: "update state",
                id: appliance_id.to_string(),
                reason: e.to_string(),
            })?;
            Ok(UpdateStateRow {
                state,
                received_at: r.get(1),
            })
        })
        .transpose()
    }

    async fn refuse_revoked(&self, appliance_id: &str, op: &'static str) -> Result<(), StoreError> {
        let state = self.state_of(appliance_id).await?;
        if state == ApplianceState::Revoked {
            return Err(StoreError::BadTransition {
                id: appliance_id.to_string(),
                state: state.to_string(),
                op,
            });
        }
        Ok(())
    }
}

/// Approved appliances whose effective window is the one at `(scope, target)`.
async fn affected_appliances(
    tx: &mut Tx<'_>,
    scope: WindowScope,
    target: &str,
) -> Result<Vec<String>, StoreError> {
    let sql = match scope {
        WindowScope::Appliance => "SELECT id FROM appliances WHERE id = $1 AND state = 'approved'",
        WindowScope::Customer => {
            "SELECT id FROM appliances WHERE customer = $1 AND state = 'approved'
               AND id NOT IN (SELECT target FROM windows WHERE scope = 'appliance')
             ORDER BY id"
        }
    };
    let rows = sqlx::query(sql)
        .bind(target)
        .fetch_all(&mut **tx)
        .await
        .map_err(q("find appliances a window applies to"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

async fn effective_window_in(
    tx: &mut Tx<'_>,
    appliance_id: &str,
) -> Result<Option<WindowRow>, StoreError> {
    effective_window_on(tx, appliance_id).await
}

async fn effective_window_on(
    conn: &mut sqlx::AnyConnection,
    appliance_id: &str,
) -> Result<Option<WindowRow>, StoreError> {
    // The appliance's own window sorts first ('appliance' < 'customer').
    let row = sqlx::query(
        "SELECT scope, target, spec, set_at FROM windows
         WHERE (scope = 'appliance' AND target = $1)
            OR (scope = 'customer' AND target = (SELECT customer FROM appliances WHERE id = $1))
         ORDER BY scope LIMIT 1",
    )
    .bind(appliance_id)
    .fetch_optional(&mut *conn)
    .await
    .map_err(q("read effective window"))?;
    row.as_ref().map(window_from_row).transpose()
}

/// Supersedes an undelivered older `set_window` and queues the new one for the updater.
async fn queue_set_window(
    tx: &mut Tx<'_>,
    appliance_id: &str,
    spec: &WindowSpec,
    now: Millis,
) -> Result<String, StoreError> {
    let id = new_id("cmd");
    sqlx::query(
        "UPDATE commands SET state = 'superseded', output = $3, completed_at = $4
         WHERE appliance_id = $1 AND kind = $2 AND state = 'queued'",
    )
    .bind(appliance_id)
    .bind(CMD_SET_WINDOW)
    .bind(format!("superseded by {id} before delivery"))
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(q("supersede set_window"))?;
    sqlx::query(
        "INSERT INTO commands (id, appliance_id, kind, args, state, created_at, agent)
         VALUES ($1, $2, $3, $4, 'queued', $5, $6)",
    )
    .bind(&id)
    .bind(appliance_id)
    .bind(CMD_SET_WINDOW)
    .bind(serde_json::to_string(spec).unwrap_or_default())
    .bind(now)
    .bind(AGENT_UPDATER)
    .execute(&mut **tx)
    .await
    .map_err(q("queue set_window"))?;
    Ok(id)
}

fn window_from_row(r: &sqlx::any::AnyRow) -> Result<WindowRow, StoreError> {
    let scope_text: String = r.get(0);
    let target: String = r.get(1);
    let corrupt = |reason: String| StoreError::Corrupt {
        what: "window",
        id: format!("{scope_text} {target}"),
        reason,
    };
    let scope = WindowScope::parse(&scope_text)
        .ok_or_else(|| corrupt(format!("unknown scope {scope_text:?}")))?;
    let spec_text: String = r.get(2);
    let spec = serde_json::from_str(&spec_text).map_err(|e| corrupt(e.to_string()))?;
    Ok(WindowRow {
        scope,
        target: target.clone(),
        spec,
        set_at: r.get(3),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StoreLocation;
    use crate::store::{NewCert, TokenRow};
    use outpost_proto::update::WindowRange;

    fn spec(tz: &str, start: &str) -> WindowSpec {
        WindowSpec {
            tz: tz.into(),
            ranges: vec![WindowRange {
                days: vec!["sat".into(), "sun".into()],
                start: start.into(),
                end: "05:00".into(),
            }],
        }
    }

    async fn appliance(store: &Store, tok: &TokenRow, n: u8, approve: bool) -> String {
        let id = format!("ap-{n:012}");
        assert!(store
            .enroll_pending(tok, &id, "h", &format!("fp{n}"), "csr", 1)
            .await
            .unwrap());
        if approve {
            let serial = format!("s{n}");
            let fp = format!("cfp{n}");
            let cert = NewCert {
                serial: &serial,
                fingerprint: &fp,
                pem: "pem",
                not_before: 0,
                not_after: 1,
            };
            store.approve(&id, &cert, 2).await.unwrap();
        }
        id
    }

    async fn updater_kinds(store: &Store, id: &str) -> Vec<(String, serde_json::Value)> {
        store
            .take_agent_commands(
                id,
                AGENT_UPDATER,
                now_ms_for_tests(),
                std::time::Duration::from_secs(60),
            )
            .await
            .unwrap()
            .into_iter()
            .map(|c| (c.kind, c.args))
            .collect()
    }

    fn now_ms_for_tests() -> Millis {
        crate::store::now_ms()
    }

    #[tokio::test]
    async fn windows_queue_set_window_for_the_right_appliances_and_agent() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&StoreLocation::Sqlite(dir.path().join("t.db")))
            .await
            .unwrap();
        let token = store
            .create_token("acme", std::time::Duration::from_secs(3600), 10, false, 1)
            .await
            .unwrap();
        let tok = store.find_token(&token.1).await.unwrap().unwrap();
        let a = appliance(&store, &tok, 1, true).await;
        let b = appliance(&store, &tok, 2, true).await;
        let pending = appliance(&store, &tok, 3, false).await;

        // b has its own window: the customer's does not reach it.
        store
            .set_window(WindowScope::Appliance, &b, &spec("UTC", "02:00"), 10)
            .await
            .unwrap();
        let queued = store
            .set_window(
                WindowScope::Customer,
                "acme",
                &spec("Europe/Berlin", "01:00"),
                11,
            )
            .await
            .unwrap();
        assert_eq!(
            queued.iter().map(|q| q.0.as_str()).collect::<Vec<_>>(),
            [a.as_str()]
        );
        // A second set before delivery supersedes the first.
        store
            .set_window(
                WindowScope::Customer,
                "acme",
                &spec("Europe/Berlin", "03:00"),
                12,
            )
            .await
            .unwrap();
        let got = updater_kinds(&store, &a).await;
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, CMD_SET_WINDOW);
        assert_eq!(got[0].1["ranges"][0]["start"], "03:00");
        // Not in the collector's queue.
        assert!(store
            .take_commands(&a, now_ms_for_tests(), std::time::Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            updater_kinds(&store, &b).await[0].1["ranges"][0]["start"],
            "02:00"
        );

        // Approval later gets the customer's window.
        assert_eq!(
            store
                .effective_window(&pending)
                .await
                .unwrap()
                .unwrap()
                .spec
                .tz,
            "Europe/Berlin"
        );
        assert!(store
            .queue_window_on_approval(&pending, 13)
            .await
            .unwrap()
            .is_some());

        // Clearing b's own window sends it the customer's; clearing the customer's sends
        // "no window" to everyone it applied to.
        store
            .clear_window(WindowScope::Appliance, &b, 14)
            .await
            .unwrap();
        assert_eq!(updater_kinds(&store, &b).await[0].1["tz"], "Europe/Berlin");
        let cleared = store
            .clear_window(WindowScope::Customer, "acme", 15)
            .await
            .unwrap();
        assert_eq!(cleared.len(), 2);
        assert_eq!(
            updater_kinds(&store, &a).await[0].1,
            serde_json::to_value(no_window()).unwrap()
        );
        assert!(matches!(
            store.clear_window(WindowScope::Customer, "acme", 16).await,
            Err(StoreError::NotFound { .. })
        ));

        // Restart goes to the updater; refused for a pending appliance.
        store.queue_restart(&a, 17).await.unwrap();
        assert_eq!(updater_kinds(&store, &a).await[0].0, CMD_RESTART);
        store.revoke(&b, 18).await.unwrap();
        assert!(matches!(
            store.queue_restart(&b, 19).await,
            Err(StoreError::BadTransition { .. })
        ));

        // Update state: the latest is kept.
        assert!(store.update_state(&a).await.unwrap().is_none());
        for v in ["1.0.0", "1.1.0"] {
            let st = UpdateState {
                current_version: Some(v.into()),
                ..UpdateState::default()
            };
            store.store_update_state(&a, &st, 20).await.unwrap();
        }
        let st = store.update_state(&a).await.unwrap().unwrap();
        assert_eq!(st.state.current_version.as_deref(), Some("1.1.0"));
        assert_eq!(st.received_at, 20);
        store.close().await;
    }

    #[test]
    fn only_updater_kinds_go_to_the_updater() {
        assert_eq!(agent_for_kind("set_window"), "updater");
        assert_eq!(agent_for_kind("restart"), "updater");
        assert_eq!(agent_for_kind("ping"), "collector");
    }
}
