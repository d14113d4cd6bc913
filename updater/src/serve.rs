//! The verified mirror over plain HTTP for the VMs on the box, like a downstream update
//! server.
//!
//! * `GET /metadata/<file>` — the TUF metadata that passed verification at the last sync
//!   (`timestamp.json`, `N.snapshot.json`, `N.targets.json`, `N.root.json`).
//! * `GET /targets/<name>` or `/targets/<sha256>.<name>` — a verified bundle.
//!
//! Only what `state.json` names is served: a request resolves to a file through the
//! mirror state, never by joining the URL onto a directory, so path traversal has nothing
//! to reach. Range requests and HEAD are answered by tower-http's `ServeFile`. The
//! signatures still travel with the metadata, so a VM can verify everything itself.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::mirror;

/// Serving the mirror failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("local mirror server: {0}")]
    Serve(std::io::Error),
}

/// What a request path asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum MirrorRequest {
    /// A metadata file by name.
    Metadata(String),
    /// A target by name (`name` or `<sha256>.name`).
    Target(String),
}

/// Parses a request path into a [`MirrorRequest`]; `None` for anything else (including
/// names with `/`, `..`, a leading `.` or `%`).
#[must_use]
pub fn parse_path(path: &str) -> Option<MirrorRequest> {
    let (kind, name) = path.strip_prefix('/')?.split_once('/')?;
    let safe = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
    if !safe {
        return None;
    }
    match kind {
        "metadata" => Some(MirrorRequest::Metadata(name.to_owned())),
        "targets" => Some(MirrorRequest::Target(name.to_owned())),
        _ => None,
    }
}

/// Resolves a request to a file of the verified mirror in `store`.
#[must_use]
pub fn resolve(store: &Path, req: &MirrorRequest) -> Option<PathBuf> {
    let state = mirror::load_state(store).ok()??;
    match req {
        MirrorRequest::Metadata(name) => {
            let p = store.join(&state.meta_dir).join(name);
            p.is_file().then_some(p)
        }
        MirrorRequest::Target(name) => state
            .targets
            .iter()
            .find(|t| &t.name == name || format!("{}.{}", t.sha256, t.name) == *name)
            .map(|t| mirror::blob_path(store, &t.sha256))
            .filter(|p| p.is_file()),
    }
}

async fn handle(State(store): State<PathBuf>, req: Request) -> Response {
    let Some(file) = parse_path(req.uri().path()).and_then(|r| resolve(&store, &r)) else {
        return (StatusCode::NOT_FOUND, "not in the verified mirror\n").into_response();
    };
    match ServeFile::new(file).oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// The router of the local mirror over `store_dir`.
pub fn router(store_dir: PathBuf) -> Router {
    Router::new().fallback(handle).with_state(store_dir)
}

/// Serves the verified mirror in `store_dir` on `listen` until `shutdown` completes.
///
/// # Errors
/// [`ServeError::Bind`] when the address cannot be bound, [`ServeError::Serve`].
pub async fn serve(
    listen: SocketAddr,
    store_dir: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: listen,
            source,
        })?;
    serve_on(listener, store_dir, shutdown).await
}

/// [`serve`] on a listener the caller bound (e.g. port 0 in tests).
///
/// # Errors
/// [`ServeError::Serve`].
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    store_dir: PathBuf,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, router(store_dir))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Serve)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_safe_names() {
        assert_eq!(
            parse_path("/metadata/timestamp.json"),
            Some(MirrorRequest::Metadata("timestamp.json".into()))
        );
        assert_eq!(
            parse_path("/targets/outpost-1.0.0.tar.zst"),
            Some(MirrorRequest::Target("outpost-1.0.0.tar.zst".into()))
        );
        for bad in [
            "/metadata/../state.json",
            "/metadata/..",
            "/targets/a/b",
            "/targets/%2e%2e",
            "/metadata/.tmp",
            "/blobs/x",
            "/metadata/",
            "metadata/x",
        ] {
            assert_eq!(parse_path(bad), None, "{bad}");
        }
    }
}
