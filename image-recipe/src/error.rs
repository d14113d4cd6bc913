//! Errors of the image builder: each says what failed and where (file, key, tool, package).

use std::path::PathBuf;

use crate::recipe::RecipeError;

/// Why a build or a diff failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The recipe itself is wrong.
    #[error(transparent)]
    Recipe(#[from] RecipeError),
    /// A file or directory the recipe names is missing or unusable.
    #[error("{}: key `{key}` = {value:?}: {problem}", recipe.display())]
    Input {
        /// Recipe file.
        recipe: PathBuf,
        /// Dotted key.
        key: String,
        /// The value as written.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// A file or directory operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// The operation.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// An external tool is not installed.
    #[error(
        "required tool `{tool}` was not found in PATH (install the Debian package `{package}`)"
    )]
    MissingTool {
        /// Command name.
        tool: &'static str,
        /// Debian package providing it.
        package: &'static str,
    },
    /// An external tool failed.
    #[error("{tool} failed ({status}): {detail}")]
    ToolFailed {
        /// Command name.
        tool: &'static str,
        /// Exit status.
        status: String,
        /// Last lines of its error output.
        detail: String,
    },
    /// Packages in `base.packages` that the configured sources do not have.
    #[error("{}: key `base.packages`: package(s) not found in the configured apt sources: {}", recipe.display(), packages.join(", "))]
    UnknownPackages {
        /// Recipe file.
        recipe: PathBuf,
        /// Missing package names.
        packages: Vec<String>,
    },
    /// No usable apt source on the build host.
    #[error("no apt sources found on this host ({detail}); set `base.mirror` or `base.sources` in the recipe")]
    NoSources {
        /// What was looked at.
        detail: String,
    },
    /// An image-recipe asset or template is wrong.
    #[error("asset {path}: {problem}")]
    Asset {
        /// Asset path (relative to the assets root).
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The tree lacks something a customisation needs.
    #[error("{}: key `{key}` = {value:?}: {problem}", recipe.display())]
    Customize {
        /// Recipe file.
        recipe: PathBuf,
        /// Dotted key.
        key: String,
        /// The value.
        value: String,
        /// What is wrong.
        problem: String,
    },
    /// A diff input is not an image output.
    #[error("{}: {problem}", path.display())]
    BadOutput {
        /// The path given.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
}
