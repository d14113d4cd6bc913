//! First-boot assets shipped with the builder (`image-recipe/assets/rootfs/**`, embedded at
//! compile time) and the `{{placeholder}}` templating applied to them.
//!
//! Every asset lands at its relative path, owned by root: directories 0755; files take the mode
//! listed in `assets/modes.txt` (`MODE PATH` lines), else 0755 when executable in the source
//! tree, else 0644. Placeholders are replaced in UTF-8 files only; an unknown placeholder is a
//! build error naming the asset.

use std::collections::BTreeMap;

use crate::error::BuildError;

include!(concat!(env!("OUT_DIR"), "/assets.rs"));

/// One asset to install.
#[derive(Debug, Clone, PartialEq)]
pub struct Asset {
    /// Path relative to `/`.
    pub path: String,
    /// Content after templating.
    pub content: Vec<u8>,
    /// File mode.
    pub mode: u32,
}

/// The mode an asset gets (see the module documentation).
pub fn asset_mode(path: &str, executable: bool, modes: &str) -> u32 {
    let listed = modes.lines().find_map(|l| {
        let l = l.trim();
        if l.starts_with('#') {
            return None;
        }
        let (mode, p) = l.split_once(char::is_whitespace)?;
        (p.trim() == path)
            .then(|| crate::recipe::parse_mode(mode))
            .flatten()
    });
    listed.unwrap_or(if executable { 0o755 } else { 0o644 })
}

/// Replaces `{{name}}` placeholders in `text` with `values`; errors on unknown names.
pub fn render(
    path: &str,
    text: &str,
    values: &BTreeMap<&str, String>,
) -> Result<String, BuildError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("{{") {
        out.push_str(&rest[..i]);
        let Some(end) = rest[i..].find("}}") else {
            return Err(BuildError::Asset {
                path: path.into(),
                problem: "has an unclosed {{".into(),
            });
        };
        let name = rest[i + 2..i + end].trim();
        let v = values.get(name).ok_or_else(|| BuildError::Asset {
            path: path.into(),
            problem: format!(
                "unknown placeholder {{{{{name}}}}}; known: {}",
                values
                    .keys()
                    .map(|k| format!("{{{{{k}}}}}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        })?;
        out.push_str(v);
        rest = &rest[i + end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Renders a list of raw assets `(path, bytes, executable)`.
pub fn render_assets(
    raw: &[(&str, &[u8], bool)],
    modes: &str,
    values: &BTreeMap<&str, String>,
) -> Result<Vec<Asset>, BuildError> {
    raw.iter()
        .map(|(path, bytes, exec)| {
            let content = match std::str::from_utf8(bytes) {
                Ok(text) => render(path, text, values)?.into_bytes(),
                Err(_) => bytes.to_vec(),
            };
            Ok(Asset {
                path: (*path).to_string(),
                content,
                mode: asset_mode(path, *exec, modes),
            })
        })
        .collect()
}
