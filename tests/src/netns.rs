//! Network namespaces owned by a test, removed on drop.

use std::{fs::File, os::fd::AsRawFd as _, path::PathBuf};

/// A named network namespace (`/run/netns/<name>`, so `ip -n <name>` and `nsenter
/// --net=/run/netns/<name>` work for debugging). Deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    file: File,
}

impl Netns {
    /// Creates the namespace and brings its loopback up.
    pub fn new(name: &str) -> Self {
        assert!(
            name.starts_with(crate::prefix::MARKER),
            "test-bed namespaces must carry the test-bed prefix, got {name}"
        );
        crate::run("ip", &["netns", "add", name]);
        let file = File::open(Self::path_of(name))
            .unwrap_or_else(|e| panic!("opening namespace {name}: {e}"));
        let ns = Self {
            name: name.to_owned(),
            file,
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        Self::path_of(&self.name)
    }

    fn path_of(name: &str) -> PathBuf {
        PathBuf::from("/run/netns").join(name)
    }

    /// Raw fd of the namespace, for `setns(2)` in a child process.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// `ip -n <ns> <args…>`; panics with ip's message on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        crate::run("ip", &full)
    }

    /// A veth pair: `name` here, `peer` in `peer_ns` (both down, unaddressed).
    pub fn add_veth(&self, name: &str, peer: &str, peer_ns: &Netns) {
        self.ip(&[
            "link",
            "add",
            name,
            "type",
            "veth",
            "peer",
            peer,
            "netns",
            peer_ns.name(),
        ]);
    }

    /// Like [`Netns::ip`] but returns the failure instead of panicking.
    pub fn try_ip(&self, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Runs `f` on a thread that has entered this namespace (sockets it creates live here and
    /// may be used from any thread afterwards). Only the network namespace changes; the mount
    /// namespace, and so `/sys/fs/bpf` and `/sys/fs/cgroup`, stay as they are.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.raw_fd();
        std::thread::scope(|s| {
            s.spawn(move || {
                // SAFETY: fd is an open namespace file we own; setns affects this thread only.
                let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns into {}: {}",
                    self.name,
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    /// Sets a sysctl inside this namespace (`net.ipv4.ip_forward` → `/proc/sys/net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        self.run_in(|| {
            std::fs::write(&path, value)
                .unwrap_or_else(|e| panic!("sysctl {key}={value} in {}: {e}", self.name))
        });
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes inside were killed by their owners (dropped earlier); the namespace goes
        // with its last reference, taking its interfaces (and their TC/XDP links) along.
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
