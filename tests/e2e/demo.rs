//! `cargo xtask demo` keeps working: the demo binary runs its whole tour (every request must get
//! its expected answer, or it exits non-zero) and tears down everything it built.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests panic with clear messages"
)]

use std::process::Command;

#[test]
fn the_demo_tour_passes_and_leaves_nothing_behind() {
    tollgate_tests::require_root();
    let demo = tollgate_tests::tools::testbed_bin().with_file_name("tollgate-demo");
    let out = Command::new(&demo).output().expect("running tollgate-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}: {}\n{stdout}\n{}",
        demo.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "=== NodePort from outside the cluster",
        "n2p2 192.168.77.100:",
        "(refused as expected: true)",
        "(other port refused as expected: true)",
        "(unallocated Service IP dropped at once as expected: true)",
        "(ping answered by the ClusterIP as expected: true)",
        "\"localEndpoints\": 1,\n\t\"serviceProxyHealthy\": true\n}\nHTTP 200",
        "\"localEndpoints\": 0,\n\t\"serviceProxyHealthy\": true\n}\nHTTP 503",
        "(kube-env concealed from the pod, readable by the node: true)",
        "tg_svc_v1",
        "(unallocated Service IPs)",
        "tollgate_dataplane_programmed_services 5",
        "(0 left)",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?}:\n{stdout}");
    }
}
