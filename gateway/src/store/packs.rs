//! Health packs: imported TOML, assignments per customer or appliance, and the packs one
//! appliance gets through `GET /v1/config` (migration 0003).
//!
//! The store keeps what it is given; validation happens before (the CLI parses every pack
//! with `outpost-health`, the same checks a collector applies).

use outpost_proto::PackDoc;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{q, Millis, Store};
use crate::error::StoreError;

/// Whom a pack is assigned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackScope {
    /// Every appliance of a customer.
    Customer,
    /// One appliance.
    Appliance,
}

impl PackScope {
    /// `customer` or `appliance`, as stored.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Appliance => "appliance",
        }
    }
}

/// A stored pack as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRow {
    /// Pack name.
    pub name: String,
    /// 1 at the first import, +1 per import with other content.
    pub version: i64,
    /// sha256 (hex) of the TOML.
    pub sha256: String,
    /// Last import that changed it, unix ms.
    pub imported_at: Millis,
    /// Assignments: (scope, target), sorted.
    pub assigned: Vec<(String, String)>,
}

/// What an import did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackImport {
    /// The pack's version now.
    pub version: i64,
    /// Whether the content differed from what was stored.
    pub changed: bool,
}

impl Store {
    /// Stores a validated pack under its name; the same content again changes nothing.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn import_pack(
        &self,
        name: &str,
        toml: &str,
        now: Millis,
    ) -> Result<PackImport, StoreError> {
        let sha = hex::encode(Sha256::digest(toml.as_bytes()));
        let mut tx = self.write.begin().await.map_err(q("begin pack import"))?;
        let old = sqlx::query("SELECT sha256, version FROM packs WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(q("read pack"))?;
        let outcome = match old {
            Some(r) if r.get::<String, _>(0) == sha => PackImport {
                version: r.get(1),
                changed: false,
            },
            Some(r) => {
                let version = r.get::<i64, _>(1) + 1;
                sqlx::query(
                    "UPDATE packs SET toml = $2, sha256 = $3, version = $4, imported_at = $5
                     WHERE name = $1",
                )
                .bind(name)
                .bind(toml)
                .bind(&sha)
                .bind(version)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(q("update pack"))?;
                PackImport {
                    version,
                    changed: true,
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO packs (name, toml, sha256, version, imported_at)
                     VALUES ($1, $2, $3, 1, $4)",
                )
                .bind(name)
                .bind(toml)
                .bind(&sha)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(q("insert pack"))?;
                PackImport {
                    version: 1,
                    changed: true,
                }
            }
        };
        tx.commit().await.map_err(q("commit pack import"))?;
        Ok(outcome)
    }

    /// Every stored pack with its assignments, by name.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn list_packs(&self) -> Result<Vec<PackRow>, StoreError> {
        let rows =
            sqlx::query("SELECT name, version, sha256, imported_at FROM packs ORDER BY name")
                .fetch_all(&self.read)
                .await
                .map_err(q("list packs"))?;
        let assigned = sqlx::query(
            "SELECT pack_name, scope, target FROM pack_assignments ORDER BY pack_name, scope, target",
        )
        .fetch_all(&self.read)
        .await
        .map_err(q("list pack assignments"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let name: String = r.get(0);
                PackRow {
                    assigned: assigned
                        .iter()
                        .filter(|a| a.get::<String, _>(0) == name)
                        .map(|a| (a.get(1), a.get(2)))
                        .collect(),
                    name,
                    version: r.get(1),
                    sha256: r.get(2),
                    imported_at: r.get(3),
                }
            })
            .collect())
    }

    /// Assigns a stored pack to a customer or an appliance (again: no change). Returns
    /// whether the assignment is new.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown pack, or an unknown appliance with
    /// [`PackScope::Appliance`]; [`StoreError::Query`].
    pub async fn assign_pack(
        &self,
        name: &str,
        scope: PackScope,
        target: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let known = sqlx::query("SELECT 1 FROM packs WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.write)
            .await
            .map_err(q("find pack"))?;
        if known.is_none() {
            return Err(StoreError::NotFound {
                what: "pack",
                id: name.to_string(),
            });
        }
        if scope == PackScope::Appliance {
            let found = sqlx::query("SELECT 1 FROM appliances WHERE id = $1")
                .bind(target)
                .fetch_optional(&self.write)
                .await
                .map_err(q("find appliance"))?;
            if found.is_none() {
                return Err(StoreError::NotFound {
                    what: "appliance",
                    id: target.to_string(),
                });
            }
        }
        let done = sqlx::query(
            "INSERT INTO pack_assignments (pack_name, scope, target, assigned_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (pack_name, scope, target) DO NOTHING",
        )
        .bind(name)
        .bind(scope.as_str())
        .bind(target)
        .bind(now)
        .execute(&self.write)
        .await
        .map_err(q("assign pack"))?;
        Ok(done.rows_affected() == 1)
    }

    /// The packs an appliance gets: assigned to it or to its customer, by name.
    ///
    /// # Errors
    /// [`StoreError::Query`].
    pub async fn packs_for(&self, appliance_id: &str) -> Result<Vec<PackDoc>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, toml FROM packs WHERE name IN (
                 SELECT pack_name FROM pack_assignments
                 WHERE (scope = 'appliance' AND target = $1)
                    OR (scope = 'customer'
                        AND target = (SELECT customer FROM appliances WHERE id = $1)))
             ORDER BY name",
        )
        .bind(appliance_id)
        .fetch_all(&self.read)
        .await
        .map_err(q("packs for appliance"))?;
        Ok(rows
            .iter()
            .map(|r| PackDoc {
                name: r.get(0),
                toml: r.get(1),
            })
            .collect())
    }
}
