//! A throwaway PostgreSQL database per test, for gateways that share one store (a pool).
//!
//! The server comes from `OUTPOST_TEST_POSTGRES` (`.ci/run` sets
//! `postgres://postgres@127.0.0.1:5432/test`). [`TestDatabase::create_or_skip`] makes
//! `outpost_e2e_<random>` there and hands back its URL for `store = "postgres://…"` in
//! `gateway.toml`; dropping the guard drops the database `WITH (FORCE)`, ending the
//! connections of gateways still holding it. Where the variable is unset the test is
//! skipped *loudly*: a `SKIP:` line goes straight to the process's stderr (libtest captures
//! `eprintln!` of passing tests), never a silent pass.
//!
//! Admin statements run on a short-lived thread with its own runtime, so the guard works
//! the same from synchronous tests, from `#[tokio::test]` bodies and from `Drop`.

use std::io::Write;
use std::time::Duration;

use anyhow::{bail, Context};
use sqlx::Connection;

/// Names the PostgreSQL server the tests may use.
pub const ENV: &str = "OUTPOST_TEST_POSTGRES";

/// Bound on each admin step (connect, create, drop).
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes `SKIP: {test}: {reason}` to the process's stderr, bypassing libtest's capture.
pub fn print_skip(test: &str, reason: &str) {
    let line = format!("SKIP: {test}: {reason}\n");
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}

/// The server URL from [`ENV`], when set and not empty.
#[must_use]
pub fn server_url() -> Option<String> {
    std::env::var(ENV).ok().filter(|u| !u.trim().is_empty())
}

/// `url` with its database name replaced by `db` (query parameters kept).
///
/// # Errors
/// When `url` is not a `postgres://` or `postgresql://` URL.
pub fn url_with_database(url: &str, db: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("{ENV}={url:?} is not a URL"))?;
    if scheme != "postgres" && scheme != "postgresql" {
        bail!("{ENV}={url:?} is not a postgres:// URL");
    }
    let (body, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let authority = body.split_once('/').map_or(body, |(a, _)| a);
    let mut out = format!("{scheme}://{authority}/{db}");
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    Ok(out)
}

/// A database name no other run uses: `outpost_e2e_` and 12 hex digits.
#[must_use]
pub fn random_database_name() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let h = RandomState::new().hash_one((nanos, std::process::id()));
    format!("outpost_e2e_{:012x}", h & 0xffff_ffff_ffff)
}

/// Runs one admin statement against the server at `admin_url`, bounded, on its own thread.
fn admin_execute(admin_url: &str, sql: &str) -> anyhow::Result<()> {
    let admin_url = admin_url.to_string();
    let sql = sql.to_string();
    let worker = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("failed to build a runtime for PostgreSQL admin")?;
        rt.block_on(async move {
            let step = async {
                let mut conn = sqlx::PgConnection::connect(&admin_url)
                    .await
                    .with_context(|| format!("failed to connect to {ENV} ({admin_url})"))?;
                sqlx::query(&sql)
                    .execute(&mut conn)
                    .await
                    .with_context(|| format!("`{sql}` failed"))?;
                conn.close().await.context("failed to close the connection")
            };
            tokio::time::timeout(ADMIN_TIMEOUT, step)
                .await
                .with_context(|| format!("`{sql}` took longer than {ADMIN_TIMEOUT:?}"))?
        })
    });
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the PostgreSQL admin thread panicked"))?
}

/// A database made for one test; dropped (`WITH (FORCE)`) with this guard.
#[derive(Debug)]
pub struct TestDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a fresh database on the server named by [`ENV`], or prints
    /// `SKIP: {test}: OUTPOST_TEST_POSTGRES is not set` and returns `None` when it is unset.
    ///
    /// # Errors
    /// When the variable is set but the database cannot be created (a broken server is a
    /// failure, not a skip).
    pub fn create_or_skip(test: &str) -> anyhow::Result<Option<Self>> {
        match server_url() {
            Some(url) => Self::create(&url).map(Some),
            None => {
                print_skip(test, &format!("{ENV} is not set"));
                Ok(None)
            }
        }
    }

    /// Creates `outpost_e2e_<random>` on the server at `admin_url`.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses.
    pub fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = random_database_name();
        let url = url_with_database(admin_url, &name)?;
        admin_execute(admin_url, &format!("CREATE DATABASE {name}"))?;
        Ok(Self {
            admin_url: admin_url.to_string(),
            name,
            url,
        })
    }

    /// The database's URL, for `store = "…"` in `gateway.toml`.
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        if let Err(e) = admin_execute(&self.admin_url, &sql) {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "warning: could not drop {}: {e:#}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_with_database_replaces_only_the_database() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432/test", "x").unwrap(),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            url_with_database("postgresql://u:p@h:1/db?sslmode=disable", "x").unwrap(),
            "postgresql://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1", "x").unwrap(),
            "postgres://postgres@127.0.0.1/x"
        );
        assert!(url_with_database("mysql://h/db", "x").is_err());
    }

    #[test]
    fn database_names_are_fresh_and_safe_identifiers() {
        let a = random_database_name();
        let b = random_database_name();
        assert_ne!(a, b);
        assert!(a.starts_with("outpost_e2e_"));
        assert!(a
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'));
    }
}
