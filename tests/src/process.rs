//! Processes run inside a test-bed namespace (and cgroup), killed on drop.

use std::{
    fs::{File, OpenOptions},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::Netns;

/// Where a process runs: a network namespace and optionally a cgroup (v2 directory) it joins
/// before `exec`, so that cgroup socket hooks see its sockets.
#[derive(Debug, Clone, Copy)]
pub struct Placement<'a> {
    pub netns: &'a Netns,
    pub cgroup: Option<&'a Path>,
}

impl<'a> Placement<'a> {
    pub fn new(netns: &'a Netns, cgroup: Option<&'a Path>) -> Self {
        Self { netns, cgroup }
    }

    /// Prepares `cmd` to enter the namespace (and cgroup) between fork and exec.
    fn apply(&self, cmd: &mut Command) -> Option<File> {
        let ns_fd = self.netns.raw_fd();
        let procs = self.cgroup.map(|cg| {
            OpenOptions::new()
                .write(true)
                .open(cg.join("cgroup.procs"))
                .unwrap_or_else(|e| panic!("opening {}/cgroup.procs: {e}", cg.display()))
        });
        let procs_fd = procs.as_ref().map(|f| f.as_raw_fd());
        // SAFETY: the closure only calls async-signal-safe functions (write, setns) on fds that
        // stay open until after spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = procs_fd {
                    // "0" means the writing process itself.
                    if libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        procs
    }

    /// Runs `cmd` to completion here and returns its output.
    pub fn output(&self, mut cmd: Command) -> Output {
        let _procs = self.apply(&mut cmd);
        cmd.output()
            .unwrap_or_else(|e| panic!("running {cmd:?} in {}: {e}", self.netns.name()))
    }
}

/// A background process; SIGTERM then SIGKILL on drop. Its stdout and stderr go to a log file
/// that [`BgProcess::logs`] reads (tests print it when they fail).
#[derive(Debug)]
pub struct BgProcess {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl BgProcess {
    pub fn spawn(name: &str, placement: Placement<'_>, mut cmd: Command) -> Self {
        // One file per spawn: a process started again under the same name (an agent restarted
        // in place) must not share the file its predecessor's drop removes.
        static SPAWNED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = SPAWNED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = std::env::temp_dir().join(format!("{name}-{n}.log"));
        let out = File::create(&log).unwrap_or_else(|e| panic!("creating {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cloning log fd: {e}"));
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let _procs = placement.apply(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Everything the process wrote so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Is it still running?
    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until the log contains `needle`, panicking with the log on timeout or exit.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return;
            }
            if !self.alive() {
                panic!("{} exited before logging {needle:?}:\n{logs}", self.name);
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not log {needle:?} within {timeout:?}:\n{logs}",
                    self.name
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, as a crash would: no clean-up code runs.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (≤ 5 s, then SIGKILL). Returns the exit status if it exited by itself.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for BgProcess {
    fn drop(&mut self) {
        self.terminate();
        if std::thread::panicking() {
            eprintln!("---- log of {} ----\n{}", self.name, self.logs());
        }
        let _ = std::fs::remove_file(&self.log);
    }
}
