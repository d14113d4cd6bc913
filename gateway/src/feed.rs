//! `GET`/`HEAD /v1/feed/{path}`: the vendor's update feed, served read-only to approved
//! appliances over mTLS.
//!
//! # Design
//!
//! The gateway only serves the directory `[feed] dir` of `gateway.toml` (the published TUF
//! repository: `metadata/` and `targets/`); it never signs or changes it, so it cannot
//! forge an update. A request path is checked in two steps:
//!
//! 1. [`check_feed_path`] (pure): relative, no empty, `.`, `..` or hidden (`.name`)
//!    components, no backslash or NUL, bounded length;
//! 2. [`resolve_feed_file`] (file system): the path is canonicalised and must still lie
//!    inside the canonical feed directory (a symlink pointing out is refused) and be a
//!    regular file.
//!
//! The HTTP side — single `Range` requests (206 with `Content-Range`, 416 when
//! unsatisfiable or multi-range), `HEAD`, `Last-Modified`/`If-Modified-Since`, streaming
//! in chunks without buffering the file — is tower-http's `ServeFile`.
//!
//! # Current limitations
//!
//! Between the check and the open a file could be swapped for a symlink by someone who can
//! write the feed directory; that someone is the vendor's publisher, which is trusted to
//! publish anyway (and every blob is verified by hash on the box).

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;
use tracing::{debug, warn};

use crate::api::{ApiError, AppState, Appliance};

/// Longest feed path accepted, bytes.
pub const MAX_FEED_PATH: usize = 1024;

/// Why a feed path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FeedPathError {
    /// Nothing after `/v1/feed/`.
    #[error("the feed path is empty")]
    Empty,
    /// Longer than [`MAX_FEED_PATH`].
    #[error("the feed path is {0} bytes long; the limit is {MAX_FEED_PATH}")]
    TooLong(usize),
    /// Starts with `/` (after decoding).
    #[error("the feed path {0:?} is absolute")]
    Absolute(String),
    /// A component that could leave the directory or name a hidden file.
    #[error("the feed path {path:?} has a forbidden component {component:?} (empty, '.', '..' or hidden)")]
    Component {
        /// The path.
        path: String,
        /// The component.
        component: String,
    },
    /// A backslash or NUL byte.
    #[error("the feed path {0:?} holds a backslash or NUL byte")]
    BadChar(String),
}

/// Checks a decoded request path relative to the feed directory, without touching the
/// file system.
///
/// # Errors
/// [`FeedPathError`] naming the path and what is wrong with it.
pub fn check_feed_path(rel: &str) -> Result<PathBuf, FeedPathError> {
    if rel.is_empty() {
        return Err(FeedPathError::Empty);
    }
    if rel.len() > MAX_FEED_PATH {
        return Err(FeedPathError::TooLong(rel.len()));
    }
    if rel.starts_with('/') {
        return Err(FeedPathError::Absolute(rel.to_string()));
    }
    if rel.contains(['\\', '\0']) {
        return Err(FeedPathError::BadChar(rel.to_string()));
    }
    let mut out = PathBuf::new();
    for part in rel.split('/') {
        if part.is_empty() || part.starts_with('.') {
            return Err(FeedPathError::Component {
                path: rel.to_string(),
                component: part.to_string(),
            });
        }
        out.push(part);
    }
    // Belt and braces: what was pushed must be plain names only.
    debug_assert!(out.components().all(|c| matches!(c, Component::Normal(_))));
    Ok(out)
}

/// Where a checked path leads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedFile {
    /// A regular file inside the feed directory (canonical path).
    File(PathBuf),
    /// Nothing there, or not a regular file.
    NotFound,
    /// It resolves (through a symlink) to somewhere outside the feed directory.
    Outside,
}

/// Resolves a checked relative path against the feed directory.
///
/// # Errors
/// When the feed directory itself cannot be resolved (missing, unreadable).
pub fn resolve_feed_file(root: &Path, rel: &Path) -> std::io::Result<FeedFile> {
    let root = root.canonicalize()?;
    let full = match root.join(rel).canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FeedFile::NotFound),
        Err(e) => return Err(e),
    };
    if !full.starts_with(&root) {
        return Ok(FeedFile::Outside);
    }
    match std::fs::metadata(&full) {
        Ok(m) if m.is_file() => Ok(FeedFile::File(full)),
        Ok(_) => Ok(FeedFile::NotFound),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FeedFile::NotFound),
        Err(e) => Err(e),
    }
}

fn not_found(rel: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "feed_file_not_found",
        format!("the feed has no file {rel:?}"),
    )
}

/// The route handler: checks the appliance (approved, through [`Appliance`]), the path,
/// then lets `ServeFile` answer (Range, HEAD, conditional requests).
///
/// # Errors
/// 401/403 from [`Appliance`]; 404 when no feed is configured, the feed directory is
/// missing or the file is not there; 400 for a refused path; 403 for a path that leads out
/// of the feed.
pub async fn get_feed(
    State(st): State<AppState>,
    who: Appliance,
    path: Result<UrlPath<String>, PathRejection>,
    req: Request,
) -> Result<Response, ApiError> {
    let UrlPath(rel) = path.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_feed_path",
            format!("the feed path cannot be decoded: {e}"),
        )
    })?;
    let Some(root) = st.cfg.feed_dir.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "feed_not_configured",
            "this gateway serves no update feed (no [feed] dir in gateway.toml)",
        ));
    };
    let checked = check_feed_path(&rel)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_feed_path", e.to_string()))?;
    let resolved = tokio::task::spawn_blocking({
        let root = root.clone();
        move || resolve_feed_file(&root, &checked)
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let file = match resolved {
        Ok(FeedFile::File(f)) => f,
        Ok(FeedFile::NotFound) => return Err(not_found(&rel)),
        Ok(FeedFile::Outside) => {
            warn!(appliance = %who.id, path = %rel, "feed path leads outside the feed directory; refused");
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "feed_path_outside",
                format!("the feed path {rel:?} leads outside the feed"),
            ));
        }
        Err(e) => {
            warn!(feed_dir = %root.display(), error = %e, "the feed directory cannot be read");
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "feed_missing",
                "the feed directory configured at this gateway is missing or unreadable",
            ));
        }
    };
    debug!(appliance = %who.id, path = %rel, range = ?req.headers().get(axum::http::header::RANGE), "feed request");
    let resp = match ServeFile::new(&file).oneshot(req).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    Ok(resp.map(Body::new).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_relative_paths_pass() {
        assert_eq!(
            check_feed_path("metadata/1.root.json").unwrap(),
            PathBuf::from("metadata/1.root.json")
        );
        assert_eq!(
            check_feed_path("targets/ab12.bundle.tar.zst").unwrap(),
            PathBuf::from("targets/ab12.bundle.tar.zst")
        );
    }

    #[test]
    fn traversal_absolute_hidden_and_odd_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../gateway.toml",
            "metadata/../../x",
            "metadata/./x",
            "metadata//x",
            "metadata/",
            ".keys/root.pem",
            "a\\..\\b",
            "a\0b",
        ] {
            assert!(check_feed_path(bad).is_err(), "{bad:?} passed");
        }
        let long = "a/".repeat(MAX_FEED_PATH);
        assert!(matches!(
            check_feed_path(&long),
            Err(FeedPathError::TooLong(_))
        ));
        let e = check_feed_path("x/../y").unwrap_err().to_string();
        assert!(e.contains("\"..\"") && e.contains("x/../y"), "{e}");
    }

    #[test]
    fn symlinks_out_of_the_feed_are_refused_and_inside_ones_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        std::fs::create_dir_all(root.join("metadata")).unwrap();
        std::fs::write(root.join("metadata/timestamp.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), root.join("metadata/out")).unwrap();
        std::os::unix::fs::symlink("timestamp.json", root.join("metadata/in")).unwrap();
        let at = |p: &str| resolve_feed_file(&root, Path::new(p)).unwrap();
        assert!(matches!(at("metadata/timestamp.json"), FeedFile::File(_)));
        assert!(matches!(at("metadata/in"), FeedFile::File(_)));
        assert_eq!(at("metadata/out"), FeedFile::Outside);
        assert_eq!(at("metadata/nope"), FeedFile::NotFound);
        assert_eq!(at("metadata"), FeedFile::NotFound);
        assert!(resolve_feed_file(&dir.path().join("missing"), Path::new("x")).is_err());
    }
}
