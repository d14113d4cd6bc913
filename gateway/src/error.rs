//! Error types of the gateway. Each variant is named after the operation that failed and
//! carries the path, address or key involved.

use std::path::PathBuf;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{}: {problem}", file.display())]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// What is wrong with it.
    pub problem: ConfigProblem,
}

/// What is wrong with a config file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigProblem {
    /// It could not be read.
    #[error("cannot read: {0}")]
    Read(#[source] std::io::Error),
    /// It is not valid TOML for this schema (the message names key and line).
    #[error("{0}")]
    Syntax(String),
    /// A key has a bad value.
    #[error("key \"{key}\": {message}")]
    Key {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Failures of the certificate authority.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// Reading a PEM file failed.
    #[error("failed to read {}: {source}", path.display())]
    ReadPem {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Writing a file failed.
    #[error("failed to write {}: {source}", path.display())]
    WriteFile {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A PEM file does not hold what it should.
    #[error("{} does not hold a usable {what}: {reason}", path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What was expected.
        what: &'static str,
        /// Why it is unusable.
        reason: String,
    },
    /// A file would be overwritten.
    #[error("{} already exists; pass --force to replace the CA (every appliance must then re-enrol)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// Generating or signing failed.
    #[error("failed to {op}: {source}")]
    Sign {
        /// What was being done.
        op: &'static str,
        /// Cause.
        source: rcgen::Error,
    },
    /// A subject alternative name is not usable.
    #[error("invalid --san {name:?}: {reason}")]
    BadSan {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Why a CSR is refused (answered with 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CsrError {
    /// Not PEM, not a CSR, or its signature does not verify.
    #[error("CSR is invalid: {0}")]
    Invalid(String),
    /// The key is of a kind or size we do not accept.
    #[error("CSR key is too weak: {0}")]
    WeakKey(String),
}

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Opening or migrating the database failed.
    #[error("failed to open store {location}: {source}")]
    Open {
        /// Redacted location.
        location: String,
        /// Cause.
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("failed to migrate store {location}: {source}")]
    Migrate {
        /// Redacted location.
        location: String,
        /// Cause.
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed.
    #[error("store query {op} failed: {source}")]
    Query {
        /// What was being done.
        op: &'static str,
        /// Cause.
        source: sqlx::Error,
    },
    /// An id that does not exist.
    #[error("no {what} with id {id:?}")]
    NotFound {
        /// Kind of object.
        what: &'static str,
        /// The id.
        id: String,
    },
    /// A stored value could not be read back.
    #[error("store holds a bad {what} for {id}: {reason}")]
    Corrupt {
        /// What.
        what: &'static str,
        /// Whose.
        id: String,
        /// Why.
        reason: String,
    },
    /// A state change that is not allowed.
    #[error("appliance {id} is {state}; cannot {op}")]
    BadTransition {
        /// The appliance.
        id: String,
        /// Its state.
        state: String,
        /// What was asked.
        op: &'static str,
    },
    /// The group commit that held a batch failed: nothing of the group was stored, and
    /// no batch of it was acknowledged.
    #[error("store group commit of {batches} batch(es) failed, none stored: {reason}")]
    GroupCommit {
        /// Batches in the group.
        batches: usize,
        /// The commit's error.
        reason: String,
    },
    /// The ingest writer has stopped (the store is closing): the batch was not stored.
    #[error("the store's ingest writer has stopped; batch not stored")]
    WriterStopped,
}

/// Failures of `serve`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Binding the listen address failed.
    #[error("failed to listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Building the TLS configuration failed.
    #[error("failed to set up TLS: {0}")]
    Tls(String),
    /// Writing the address file failed.
    #[error("failed to write {}: {source}", path.display())]
    AddrFile {
        /// Path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}
