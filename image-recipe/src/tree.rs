//! The image tree in memory: every path with its kind, mode, owner and time, and where its
//! bytes live (a range of the base tar, a file on the build host, or bytes in memory).
//!
//! Nothing is unpacked to disk: the base tar is indexed, the customisations edit the index, and
//! the finaliser streams the result into the output archive. That keeps builds unprivileged
//! (owners are numbers in the index, not on a file system) and the order deterministic.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::BuildError;

/// Where the bytes of a regular file come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// `len` bytes at `offset` of the tree's base archive.
    Base {
        /// Byte offset in the base tar.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Bytes held in memory.
    Bytes(Arc<Vec<u8>>),
    /// A file on the build host, read when the image is written.
    Host {
        /// Host path.
        path: PathBuf,
        /// Its size when it was indexed.
        len: u64,
    },
}

impl Data {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            Data::Base { len, .. } | Data::Host { len, .. } => *len,
            Data::Bytes(b) => b.len() as u64,
        }
    }
    /// Whether the file is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Kind of a tree entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// Regular file.
    File(Data),
    /// Directory.
    Dir,
    /// Symbolic link with its target.
    Symlink(String),
    /// Character device (major, minor).
    Char(u32, u32),
    /// Block device (major, minor).
    Block(u32, u32),
    /// Named pipe.
    Fifo,
}

impl Kind {
    /// Short type name used in manifests.
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::File(_) => "file",
            Kind::Dir => "dir",
            Kind::Symlink(_) => "symlink",
            Kind::Char(..) => "char",
            Kind::Block(..) => "block",
            Kind::Fifo => "fifo",
        }
    }
}

/// One path of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (`0o7777`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time (seconds).
    pub mtime: u64,
}

impl Node {
    /// A root-owned directory.
    pub fn dir(mode: u32, mtime: u64) -> Node {
        Node {
            kind: Kind::Dir,
            mode,
            uid: 0,
            gid: 0,
            mtime,
        }
    }
    /// A root-owned file with bytes from memory.
    pub fn bytes(data: Vec<u8>, mode: u32, mtime: u64) -> Node {
        Node {
            kind: Kind::File(Data::Bytes(Arc::new(data))),
            mode,
            uid: 0,
            gid: 0,
            mtime,
        }
    }
}

/// A whole root file system: relative paths (`etc/passwd`, no leading `/`, no `./`) to nodes.
/// The root directory itself is not an entry.
#[derive(Debug, Default, Clone)]
pub struct Tree {
    /// Entries by path; a `BTreeMap`, so iteration is sorted and parents precede children.
    pub nodes: BTreeMap<String, Node>,
    /// The base archive that `Data::Base` ranges point into.
    pub base: Option<PathBuf>,
}

/// Largest symlink chain followed when resolving a path.
const MAX_LINK_HOPS: usize = 40;

/// Normalises a path from an archive or a recipe to the tree's key form.
pub fn normalize(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl Tree {
    /// Indexes a tar archive (uncompressed) without unpacking it. Hard links become regular
    /// files that share the target's bytes.
    pub fn from_tar(path: &Path) -> Result<Tree, BuildError> {
        let io_err = |source| BuildError::Io {
            what: "read base archive",
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let mut archive = tar::Archive::new(io::BufReader::new(file));
        let mut tree = Tree {
            nodes: BTreeMap::new(),
            base: Some(path.to_owned()),
        };
        let mut links = Vec::new();
        for entry in archive.entries_with_seek().map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let Some(key) = normalize(&raw) else { continue };
            if key.is_empty() {
                continue;
            }
            let h = entry.header();
            let mode = h.mode().map_err(io_err)? & 0o7777;
            let uid = u32::try_from(h.uid().map_err(io_err)?).unwrap_or(0);
            let gid = u32::try_from(h.gid().map_err(io_err)?).unwrap_or(0);
            let mtime = h.mtime().map_err(io_err)?;
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned());
            let dev = || -> (u32, u32) {
                (
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                )
            };
            let kind = match h.entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File(Data::Base {
                    offset: entry.raw_file_position(),
                    len: entry.size(),
                }),
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Symlink => Kind::Symlink(link.unwrap_or_default()),
                tar::EntryType::Link => {
                    links.push((key, link.unwrap_or_default()));
                    continue;
                }
                tar::EntryType::Char => {
                    let (a, b) = dev();
                    Kind::Char(a, b)
                }
                tar::EntryType::Block => {
                    let (a, b) = dev();
                    Kind::Block(a, b)
                }
                tar::EntryType::Fifo => Kind::Fifo,
                _ => continue,
            };
            tree.nodes.insert(
                key,
                Node {
                    kind,
                    mode,
                    uid,
                    gid,
                    mtime,
                },
            );
        }
        for (key, target) in links {
            let target = normalize(&target).unwrap_or_default();
            if let Some(node) = tree.nodes.get(&target).cloned() {
                tree.nodes.insert(key, node);
            }
        }
        Ok(tree)
    }

    /// Resolves symlinks in the directory part of `path` (not in its last component), so that
    /// `lib/systemd/system/x` lands in `usr/lib/systemd/system/x` on a merged-/usr base.
    pub fn resolve_parent(&self, path: &str) -> String {
        let Some(path) = normalize(path) else {
            return String::new();
        };
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d, n),
            None => return path,
        };
        let dir = self.resolve(dir);
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    }

    /// Resolves every symlink along `path`, including the last component.
    pub fn resolve(&self, path: &str) -> String {
        let mut pending: Vec<String> = normalize(path)
            .unwrap_or_default()
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(String::from)
            .collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            if c == ".." {
                done.pop();
                continue;
            }
            if c == "." {
                continue;
            }
            done.push(c);
            let cur = done.join("/");
            if let Some(Node {
                kind: Kind::Symlink(target),
                ..
            }) = self.nodes.get(&cur)
            {
                hops += 1;
                if hops > MAX_LINK_HOPS {
                    break;
                }
                done.pop();
                if target.starts_with('/') {
                    done.clear();
                }
                for t in target.split('/').filter(|c| !c.is_empty()).rev() {
                    pending.push(t.to_string());
                }
            }
        }
        done.join("/")
    }

    /// Makes sure every parent directory of `key` exists (creating root-owned 0755 ones).
    pub fn ensure_parents(&mut self, key: &str, mtime: u64) {
        let mut p = parent(key);
        let mut missing = Vec::new();
        while !p.is_empty() && !self.nodes.contains_key(p) {
            missing.push(p.to_string());
            p = parent(p);
        }
        for m in missing {
            self.nodes.insert(m, Node::dir(0o755, mtime));
        }
    }

    /// Inserts a node at `path` (symlinks in its directories followed), replacing a file or
    /// link that was there; a directory over a directory keeps the existing one. Returns the
    /// key it was stored under.
    pub fn put(&mut self, path: &str, node: Node) -> String {
        let key = self.resolve_parent(path);
        if node.kind == Kind::Dir {
            if let Some(Node {
                kind: Kind::Dir, ..
            }) = self.nodes.get(&key)
            {
                return key;
            }
        } else if let Some(Node {
            kind: Kind::Dir, ..
        }) = self.nodes.get(&key)
        {
            self.remove_tree(&key);
        }
        self.ensure_parents(&key, node.mtime);
        self.nodes.insert(key.clone(), node);
        key
    }

    /// Removes `key` and everything below it.
    pub fn remove_tree(&mut self, key: &str) {
        let prefix = format!("{key}/");
        let below: Vec<String> = self
            .nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in below {
            self.nodes.remove(&k);
        }
        self.nodes.remove(key);
    }

    /// Keys of the entries directly or indirectly below `dir` (not `dir` itself).
    pub fn below(&self, dir: &str) -> Vec<String> {
        let prefix = format!("{dir}/");
        self.nodes
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Opens the bytes of a regular file.
    pub fn open<'a>(&self, data: &'a Data) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match data {
            Data::Bytes(b) => Box::new(io::Cursor::new(b.as_slice())),
            Data::Host { path, len } => Box::new(File::open(path)?.take(*len)),
            Data::Base { offset, len } => {
                let base = self
                    .base
                    .as_ref()
                    .ok_or_else(|| io::Error::other("tree has no base archive"))?;
                let mut f = File::open(base)?;
                f.seek(SeekFrom::Start(*offset))?;
                Box::new(f.take(*len))
            }
        })
    }

    /// Reads a whole regular file of the tree (symlinks followed), capped at `max` bytes.
    pub fn read(&self, path: &str, max: u64) -> Option<Vec<u8>> {
        let key = self.resolve(path);
        let Some(Node {
            kind: Kind::File(data),
            ..
        }) = self.nodes.get(&key)
        else {
            return None;
        };
        if data.len() > max {
            return None;
        }
        let mut out = Vec::with_capacity(usize::try_from(data.len()).unwrap_or(0));
        self.open(data).ok()?.read_to_end(&mut out).ok()?;
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(t: &str) -> Node {
        Node {
            kind: Kind::Symlink(t.into()),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    #[test]
    fn resolves_merged_usr_links() {
        let mut t = Tree::default();
        t.nodes.insert("usr".into(), Node::dir(0o755, 0));
        t.nodes.insert("usr/lib".into(), Node::dir(0o755, 0));
        t.nodes.insert("lib".into(), link("usr/lib"));
        assert_eq!(
            t.resolve_parent("/lib/systemd/system/a.service"),
            "usr/lib/systemd/system/a.service"
        );
        assert_eq!(t.resolve("lib"), "usr/lib");
        t.nodes.insert("etc".into(), Node::dir(0o755, 0));
        t.nodes.insert("etc/x".into(), link("/lib/y"));
        assert_eq!(t.resolve("etc/x"), "usr/lib/y");
        t.nodes.insert("etc/loop".into(), link("loop"));
        let _ = t.resolve("etc/loop/a");
    }

    #[test]
    fn put_creates_parents_and_replaces_dirs() {
        let mut t = Tree::default();
        t.put("/a/b/c", Node::bytes(b"x".to_vec(), 0o644, 5));
        assert_eq!(t.nodes.get("a").map(|n| n.kind.clone()), Some(Kind::Dir));
        assert!(t.nodes.contains_key("a/b"));
        t.put("a/b", Node::bytes(b"y".to_vec(), 0o644, 5));
        assert!(!t.nodes.contains_key("a/b/c"));
        assert_eq!(normalize("./x/../y/"), Some("y".into()));
        assert_eq!(normalize("../y"), None);
    }
}
