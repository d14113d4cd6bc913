//! SPDX 2.3 JSON bill of materials of the Debian packages installed in the tree, read from the
//! tree's own dpkg status (`var/lib/dpkg/status`) and `usr/share/doc/*/copyright`.

use serde::Serialize;
use serde_json::{json, Value};

use crate::tree::Tree;

/// Largest dpkg status file read.
const MAX_STATUS: u64 = 64 * 1024 * 1024;
/// Largest copyright file read.
const MAX_COPYRIGHT: u64 = 4 * 1024 * 1024;

/// An installed package.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Package {
    /// Package name.
    pub name: String,
    /// Version (with epoch).
    pub version: String,
    /// Architecture.
    pub architecture: String,
    /// Declared licence as an SPDX expression, if the copyright file says.
    pub license: Option<String>,
}

/// Parses a dpkg status file; only packages whose status is "install ok installed".
pub fn parse_dpkg_status(text: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for para in text.split("\n\n") {
        let field = |name: &str| {
            para.lines().find_map(|l| {
                l.strip_prefix(name)
                    .and_then(|r| r.strip_prefix(':'))
                    .map(|v| v.trim().to_string())
            })
        };
        let (Some(name), Some(version), Some(status)) =
            (field("Package"), field("Version"), field("Status"))
        else {
            continue;
        };
        if status != "install ok installed" {
            continue;
        }
        let architecture = field("Architecture").unwrap_or_else(|| "all".into());
        out.push(Package {
            name,
            version,
            architecture,
            license: None,
        });
    }
    out.sort();
    out
}

/// The licence of the `Files: *` paragraph of a machine-readable Debian copyright file,
/// mapped to an SPDX expression (unknown names become `LicenseRef-…`).
pub fn license_from_copyright(text: &str) -> Option<String> {
    if !text.starts_with("Format:") {
        return None;
    }
    let para = text
        .split("\n\n")
        .find(|p| p.lines().any(|l| l.trim() == "Files: *"))?;
    let lic = para
        .lines()
        .find_map(|l| l.strip_prefix("License:"))?
        .trim();
    if lic.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for word in lic.split_whitespace() {
        match word {
            "or" | "OR" => out.push("OR".to_string()),
            "and" | "AND" | "," => out.push("AND".to_string()),
            w => out.push(spdx_id(w.trim_end_matches(','))),
        }
    }
    Some(out.join(" "))
}

fn spdx_id(debian: &str) -> String {
    let known = [
        ("GPL-1", "GPL-1.0-only"),
        ("GPL-1+", "GPL-1.0-or-later"),
        ("GPL-2", "GPL-2.0-only"),
        ("GPL-2+", "GPL-2.0-or-later"),
        ("GPL-3", "GPL-3.0-only"),
        ("GPL-3+", "GPL-3.0-or-later"),
        ("LGPL-2", "LGPL-2.0-only"),
        ("LGPL-2+", "LGPL-2.0-or-later"),
        ("LGPL-2.1", "LGPL-2.1-only"),
        ("LGPL-2.1+", "LGPL-2.1-or-later"),
        ("LGPL-3", "LGPL-3.0-only"),
        ("LGPL-3+", "LGPL-3.0-or-later"),
        ("Expat", "MIT"),
        ("MIT", "MIT"),
        ("BSD-2-clause", "BSD-2-Clause"),
        ("BSD-3-clause", "BSD-3-Clause"),
        ("BSD-4-clause", "BSD-4-Clause"),
        ("Apache-2.0", "Apache-2.0"),
        ("ISC", "ISC"),
        ("Zlib", "Zlib"),
        ("zlib", "Zlib"),
        ("public-domain", "LicenseRef-public-domain"),
        ("MPL-2.0", "MPL-2.0"),
        ("Artistic", "Artistic-1.0-Perl"),
        ("OpenSSL", "OpenSSL"),
        ("CC0-1.0", "CC0-1.0"),
    ];
    known
        .iter()
        .find(|(d, _)| d.eq_ignore_ascii_case(debian))
        .map_or_else(
            || format!("LicenseRef-{}", sanitize_id(debian)),
            |(_, s)| (*s).to_string(),
        )
}

fn sanitize_id(s: &str) -> String {
    s.replace('+', "-plus")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

fn purl_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Formats seconds since 1970 as `YYYY-MM-DDThh:mm:ssZ`.
pub fn format_utc(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Reads the installed packages (with licences) from a tree.
pub fn packages_of_tree(tree: &Tree) -> Vec<Package> {
    let status = tree
        .read("var/lib/dpkg/status", MAX_STATUS)
        .unwrap_or_default();
    let mut pkgs = parse_dpkg_status(&String::from_utf8_lossy(&status));
    for p in &mut pkgs {
        let text = tree
            .read(
                &format!("usr/share/doc/{}/copyright", p.name),
                MAX_COPYRIGHT,
            )
            .unwrap_or_default();
        p.license = license_from_copyright(&String::from_utf8_lossy(&text));
    }
    pkgs
}

/// Identity of the SBOM document.
#[derive(Debug, Clone)]
pub struct SbomId {
    /// Image name.
    pub name: String,
    /// Image version.
    pub version: String,
    /// Creation time (the recipe's SOURCE_DATE_EPOCH).
    pub created: u64,
    /// Hash of the build inputs (makes the namespace unique per build input).
    pub inputs_sha256: String,
}

/// Builds the SPDX 2.3 JSON document.
pub fn spdx_document(id: &SbomId, packages: &[Package]) -> Value {
    let image_ref = "SPDXRef-Image";
    let mut pkgs = vec![json!({
        "SPDXID": image_ref,
        "name": id.name,
        "versionInfo": id.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    })];
    let mut rels = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_ref,
    })];
    for p in packages {
        let spdx_id = format!(
            "SPDXRef-Package-deb-{}-{}",
            sanitize_id(&p.name),
            sanitize_id(&p.architecture)
        );
        let purl = format!(
            "pkg:deb/debian/{}@{}?arch={}",
            purl_escape(&p.name),
            purl_escape(&p.version),
            purl_escape(&p.architecture)
        );
        pkgs.push(json!({
            "SPDXID": spdx_id,
            "name": p.name,
            "versionInfo": p.version,
            "supplier": "Organization: Debian",
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": p.license.clone().unwrap_or_else(|| "NOASSERTION".into()),
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }],
        }));
        rels.push(json!({
            "spdxElementId": image_ref,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": spdx_id,
        }));
    }
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", id.name, id.version),
        "documentNamespace": format!("urn:outpost-image:spdx:{}:{}:{}", sanitize_id(&id.name), sanitize_id(&id.version), id.inputs_sha256),
        "creationInfo": {
            "created": format_utc(id.created),
            "creators": [format!("Tool: outpost-image-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": pkgs,
        "relationships": rels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(1_735_689_600), "2025-01-01T00:00:00Z");
        assert_eq!(format_utc(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn maps_licences() {
        let text = "Format: (machine-readable copyright format 1.0)\n\nFiles: *\nCopyright: x\nLicense: GPL-2+ or Artistic\n\nLicense: GPL-2+\n text\n";
        assert_eq!(
            license_from_copyright(text).as_deref(),
            Some("GPL-2.0-or-later OR Artistic-1.0-Perl")
        );
        assert_eq!(license_from_copyright("free text").as_deref(), None);
        assert_eq!(spdx_id("BSL 1"), "LicenseRef-BSL-1");
    }

    #[test]
    fn escapes_purl_versions() {
        assert_eq!(
            purl_escape("1:2.3+dfsg-1~deb12u1"),
            "1%3A2.3%2Bdfsg-1~deb12u1"
        );
    }
}
