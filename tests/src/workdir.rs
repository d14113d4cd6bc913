//! A throwaway working directory for one test or demo run.

use std::path::{Path, PathBuf};

use anyhow::Context;

/// A temporary directory removed on drop (unless `OUTPOST_TEST_KEEP=1`, to inspect it).
#[derive(Debug)]
pub struct Workdir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl Workdir {
    /// Creates a fresh directory named after `label` under the system temp dir.
    ///
    /// # Errors
    /// When the directory cannot be created.
    pub fn new(label: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("outpost-{label}-"))
            .tempdir()
            .context("failed to create a temporary directory")?;
        let path = dir.path().to_path_buf();
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    /// The directory.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    #[must_use]
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }

    /// Creates (if needed) and returns a subdirectory.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn subdir(&self, rel: &str) -> anyhow::Result<PathBuf> {
        let p = self.path.join(rel);
        std::fs::create_dir_all(&p).with_context(|| format!("failed to create {}", p.display()))?;
        Ok(p)
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::env::var_os("OUTPOST_TEST_KEEP").is_some_and(|v| v == "1") {
            if let Some(d) = self.dir.take() {
                eprintln!("keeping {}", d.keep().display());
            }
        }
    }
}
