//! Locating the binaries the tests drive (built by `cargo xtask test` before the tests run).

use std::path::PathBuf;

/// `target/<profile>/` of the running test or binary.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    // Integration tests live in target/<profile>/deps.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().map(PathBuf::from).unwrap_or(dir)
    } else {
        dir
    }
}

fn locate(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env) {
        return PathBuf::from(path);
    }
    let path = profile_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: build it first (`cargo build -p {}`) or set {env}",
        path.display(),
        if name == "tollgate" {
            "tollgate"
        } else {
            "tollgate-tests"
        }
    );
    path
}

/// The agent binary (`TOLLGATE_BIN` overrides).
pub fn tollgate_bin() -> PathBuf {
    locate("TOLLGATE_BIN", "tollgate")
}

/// The test-bed helper binary (`TOLLGATE_TESTBED_BIN` overrides).
pub fn testbed_bin() -> PathBuf {
    locate("TOLLGATE_TESTBED_BIN", "tollgate-testbed")
}
