//! Unique name prefixes, and the owner records that let a sweep tell live runs from dead ones.

use std::{io::Read as _, path::PathBuf};

/// Every object the test bed creates starts with this.
pub const MARKER: &str = "tgt";
/// Owner records: `<OWNER_DIR>/<prefix>` holds the owning process id.
pub const OWNER_DIR: &str = "/run/tollgate-testbed";

/// A unique prefix such as `tgtk3x9q`, registered to the current process until dropped.
#[derive(Debug)]
pub struct Prefix {
    name: String,
}

impl Prefix {
    pub fn new() -> Self {
        let mut bytes = [0u8; 5];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut bytes))
            .unwrap_or_else(|e| panic!("reading /dev/urandom: {e}"));
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let suffix: String = bytes
            .iter()
            .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
            .collect();
        let name = format!("{MARKER}{suffix}");
        std::fs::create_dir_all(OWNER_DIR).unwrap_or_else(|e| panic!("creating {OWNER_DIR}: {e}"));
        std::fs::write(owner_file(&name), std::process::id().to_string())
            .unwrap_or_else(|e| panic!("writing owner record for {name}: {e}"));
        Self { name }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// `<prefix>-<role>`, e.g. `tgtk3x9q-node1`.
    pub fn child(&self, role: &str) -> String {
        format!("{}-{role}", self.name)
    }
}

impl Default for Prefix {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(owner_file(&self.name));
    }
}

pub fn owner_file(prefix: &str) -> PathBuf {
    PathBuf::from(OWNER_DIR).join(prefix)
}
