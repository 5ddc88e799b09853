//! The file source through `tollgate enls --watch`: reload on change, one revision per real
//! change, a broken file keeps the last good state and says where the error is. (No
//! privileges needed.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests panic with clear messages"
)]

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use serde_json::Value;
use tollgate_tests::{k8s, tools::tollgate_bin};

struct Watch {
    child: Child,
    lines: mpsc::Receiver<Value>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Watch {
    fn start(path: &std::path::Path) -> Self {
        let mut child = Command::new(tollgate_bin())
            .args([
                "enls",
                "--watch",
                "--node",
                "node1",
                "--file-poll-ms",
                "50",
                "--source",
            ])
            .arg(format!("file:{}", path.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(serde_json::from_str(&line).unwrap());
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let err = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Self {
            child,
            lines,
            stderr,
        }
    }

    fn next(&self) -> Value {
        self.lines
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no update; stderr:\n{}", self.stderr.lock().unwrap()))
    }

    fn quiet(&self, d: Duration) {
        if let Ok(v) = self.lines.recv_timeout(d) {
            panic!("unexpected update: {v}");
        }
    }
}

fn manifest(endpoints: &[&str]) -> String {
    let eps = endpoints
        .iter()
        .map(|ip| k8s::endpoint(ip, "node2"))
        .collect();
    let docs = [
        k8s::node("node1", "192.168.77.11", None),
        k8s::service("default", "web", "10.96.0.10", &[("http", 80)]),
        k8s::slice("default", "web-1", "web", &[("http", 8080)], eps),
        k8s::service("default", "db", "10.96.0.11", &[("", 5432)]),
        k8s::service_cidr("kubernetes", &["10.96.0.0/16"]),
    ];
    docs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// Replaces the file atomically (as editors and ConfigMap mounts do).
fn write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reloads_on_change_and_keeps_the_last_good_state_on_errors() {
    let dir = std::env::temp_dir().join(format!("tg-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.yaml");
    write(&path, &manifest(&["10.244.2.11"]));
    let w = Watch::start(&path);

    let first = w.next();
    assert_eq!(first["revision"], 1);
    assert_eq!(first["initial"], true);
    assert_eq!(first["services"].as_array().unwrap().len(), 2);
    assert_eq!(first["service_cidrs"], serde_json::json!(["10.96.0.0/16"]));

    write(&path, &manifest(&["10.244.2.11", "10.244.2.12"]));
    let u = w.next();
    assert_eq!(u["revision"], 2);
    let changed = u["services"].as_array().unwrap();
    assert_eq!(changed.len(), 1, "only the changed service: {u}");
    assert!(u["service_cidrs"].is_null(), "unchanged: {u}");
    assert_eq!(changed[0]["service"]["name"], "web");
    assert_eq!(
        changed[0]["service"]["ports"][0]["internal_endpoints"],
        serde_json::json!(["10.244.2.11:8080", "10.244.2.12:8080"])
    );

    // The same content rewritten: no revision.
    write(&path, &manifest(&["10.244.2.11", "10.244.2.12"]));
    w.quiet(Duration::from_millis(400));

    // A broken file: no change, an error naming the position.
    write(
        &path,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
    );
    w.quiet(Duration::from_millis(600));
    let err = w.stderr.lock().unwrap().clone();
    assert!(err.contains("keeping the last good state"), "{err}");
    assert!(err.contains("line"), "the error says where: {err}");

    // Fixed, with a service removed: exactly that removal.
    let fixed = manifest(&["10.244.2.11", "10.244.2.12"]);
    let without_db: Vec<&str> = fixed.split("\n---\n").take(3).collect();
    write(&path, &without_db.join("\n---\n"));
    let u = w.next();
    assert_eq!(u["revision"], 3);
    assert_eq!(
        u["service_cidrs"],
        serde_json::json!([]),
        "gone with db: {u}"
    );
    assert_eq!(
        u["services"],
        serde_json::json!([{"op": "remove", "namespace": "default", "name": "db"}])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tollgate enls` without `--watch`: the whole state once, as the watch's first update has
/// it; a file that does not parse is an error that says where, and a missing one says so.
#[test]
fn prints_the_state_once_and_refuses_a_broken_file() {
    let dir = std::env::temp_dir().join(format!("tg-file-once-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluster.yaml");
    let once = |path: &std::path::Path| {
        Command::new(tollgate_bin())
            .args(["enls", "--node", "node1", "--source"])
            .arg(format!("file:{}", path.display()))
            .output()
            .unwrap()
    };
    write(&path, &manifest(&["10.244.2.11"]));
    let out = once(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let state: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(state["node"], "node1");
    assert_eq!(state["revision"], 1);
    assert_eq!(
        state["node_info"]["addresses"],
        serde_json::json!(["192.168.77.11"]),
        "{state}"
    );
    let services = state["services"].as_array().unwrap();
    let names: Vec<&str> = services
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["db", "web"], "{state}");
    assert_eq!(
        state["service_cidrs"],
        serde_json::json!(["10.96.0.0/16"]),
        "{state}"
    );
    assert_eq!(
        services[1]["ports"][0]["internal_endpoints"],
        serde_json::json!(["10.244.2.11:8080"])
    );

    // --stats: one line of totals on stderr, the state unchanged on stdout.
    let stats = Command::new(tollgate_bin())
        .args(["enls", "--stats", "--node", "node1", "--source"])
        .arg(format!("file:{}", path.display()))
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&stats.stderr);
    assert!(
        line.contains("revision 1  services 2  cpu"),
        "one line of totals: {line}"
    );
    assert_eq!(stats.stdout, out.stdout);

    write(
        &path,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web\n",
    );
    let out = once(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken file is an error");
    assert!(
        stderr.contains(&path.display().to_string()) && stderr.contains("line"),
        "the error names the file and where: {stderr}"
    );
    assert!(out.stdout.is_empty(), "nothing printed");

    let out = once(&dir.join("missing.yaml"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot read"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}
