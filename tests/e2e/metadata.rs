//! Metadata concealment end to end in the test bed: pods curl 169.254.169.254 and get the
//! filtered answers of the metadata-server double in the "cloud" namespace, per their identity
//! and policy; host processes reach the double directly; pods are refused before the agent is
//! ready; other ports, UDP and raw bypasses behave.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "end-to-end tests panic with clear messages"
)]

use std::{process::Command, time::Duration};

use serde_json::Value;
use tollgate_tests::{
    BgProcess, Cluster, ClusterSpec,
    agent::{admin_get, metric_opt, start_agent, start_agent_until},
    cluster::METADATA_V4,
    metadata_double::{self, AWS_SECRET, IDENTITY, KUBE_ENV, NODE_TOKEN, PROJECT_ID, USER_DATA},
    process::Placement,
    scenario::run_client,
    tools::testbed_bin,
    traffic::Mode,
};

fn cluster() -> Cluster {
    Cluster::new(&ClusterSpec {
        pods_per_node: vec![2],
        ..Default::default()
    })
}

/// The double on 169.254.169.254:80 in the cloud namespace.
fn double(c: &Cluster, extra: &[&str]) -> BgProcess {
    let mut cmd = Command::new(testbed_bin());
    cmd.args(["metadata-double", "--listen", &format!("{METADATA_V4}:80")])
        .args(extra);
    let mut p = c.spawn_cloud("metadata", cmd);
    p.wait_for_log("serving metadata", Duration::from_secs(5));
    p
}

/// curl from `at`: (exit code, HTTP status, body).
fn curl(at: Placement<'_>, url: &str, headers: &[&str], extra: &[&str]) -> (i32, u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-g", "-m", "3", "-w", "\n%{http_code}"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    cmd.args(extra).arg(url);
    let out = at.output(cmd);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_owned(),
    )
}

const G: &[&str] = &["Metadata-Flavor: Google"];

fn url(path: &str) -> String {
    format!("http://{METADATA_V4}{path}")
}

/// The test bed's objects with pod n1p2 in namespace `ci` as service account `deployer`.
fn objects(c: &Cluster) -> Vec<Value> {
    let mut objs = c.base_objects();
    for o in &mut objs {
        if o["kind"] == "Pod" && o["metadata"]["name"] == "n1p2" {
            o["metadata"]["namespace"] = "ci".into();
            o["spec"]["serviceAccountName"] = "deployer".into();
        }
    }
    objs
}

fn requests(p: &BgProcess) -> Vec<Value> {
    metadata_double::logged(&p.logs())
}

#[test]
fn pods_get_filtered_answers_per_identity_and_hosts_reach_the_server() {
    let c = cluster();
    let node = c.node("node1");
    let md = double(&c, &[]);
    let policy = c.workdir().join("policy.yaml");
    std::fs::write(
        &policy,
        "default:\n  deny: [\"/computeMetadata/v1/instance/service-accounts/*/token\"]\n\
         rules:\n  - namespace: ci\n    serviceAccount: deployer\n    deny: []\n",
    )
    .unwrap();
    let source = c.write_objects(&objects(&c));
    let _agent = start_agent(
        node,
        &source,
        &[
            "--metadata",
            "gce",
            "--metadata-policy",
            policy.to_str().unwrap(),
        ],
    );
    let web = c.pod("n1p1").placement(); // default/default
    let ci = c.pod("n1p2").placement(); // ci/deployer

    let (_, code, body) = curl(web, &url("/computeMetadata/v1/project/project-id"), G, &[]);
    assert_eq!((code, body.as_str()), (200, PROJECT_ID));
    let (_, code, body) = curl(
        web,
        &url("/computeMetadata/v1/instance/attributes/kube-env"),
        G,
        &[],
    );
    assert_eq!(
        (code, body.trim()),
        (403, "This metadata endpoint is concealed")
    );
    let (_, code, body) = curl(
        web,
        &url("/computeMetadata/v1/instance/service-accounts/default/identity"),
        G,
        &[],
    );
    assert_eq!(code, 403, "{body}");
    let (_, code, _) = curl(
        web,
        &url("/computeMetadata/v1/instance/?recursive=true"),
        G,
        &[],
    );
    assert_eq!(code, 403);
    // The node's token: the default rule denies it, ci/deployer's rule allows it.
    let token = url("/computeMetadata/v1/instance/service-accounts/default/token");
    let (_, code, body) = curl(web, &token, G, &[]);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("not allowed for default/default by the metadata policy"),
        "{body}"
    );
    let (_, code, body) = curl(ci, &token, G, &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(NODE_TOKEN));
    // The IPv4-mapped IPv6 form of the address is redirected too.
    let (_, code, body) = curl(
        web,
        &format!("http://[::ffff:{METADATA_V4}]/computeMetadata/v1/instance/attributes/kube-env"),
        G,
        &[],
    );
    assert_eq!(code, 403, "{body}");
    // The redirected socket still reports the metadata server as its peer (getpeername).
    let server = format!("{METADATA_V4}:80");
    let t = run_client(web, &server, 2, Mode::Tcp, Duration::from_secs(3));
    assert_eq!(t.ok, 2, "{t:?}");
    assert_eq!(t.peers, std::slice::from_ref(&server), "{t:?}");
    // Host processes are not redirected: the node itself reads kube-env.
    let (_, code, body) = curl(
        node.host(),
        &url("/computeMetadata/v1/instance/attributes/kube-env"),
        G,
        &[],
    );
    assert_eq!((code, body.as_str()), (200, KUBE_ENV));

    // What reached the cloud: the proxy's requests come from the node, without any
    // client-address header, and kube-env and the identity only ever for the host.
    let seen = requests(&md);
    let node_ip = node.ip.to_string();
    assert!(
        seen.iter().all(|r| r["peer"] == node_ip.as_str()),
        "{seen:?}"
    );
    assert!(seen.iter().all(|r| r["xff"] == false));
    assert_eq!(
        seen.iter()
            .filter(|r| r["path"].as_str().unwrap().contains("kube-env"))
            .count(),
        1,
        "only the host's kube-env request: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|r| r["path"].as_str().unwrap().ends_with("/identity"))
    );

    // Observability: k8s-metadata-proxy's counter, the GKE histograms, /readyz.
    let (_, text) = admin_get(node, "/metrics");
    assert!(
        metric_opt(
            &text,
            "request_count{filter_result=\"filter_result_blocked\",code=\"403\"}"
        )
        .unwrap_or(0.0)
            >= 5.0,
        "{text}"
    );
    assert!(
        metric_opt(
            &text,
            "request_count{filter_result=\"filter_result_proxied\",code=\"200\"}"
        )
        .unwrap_or(0.0)
            >= 2.0,
        "{text}"
    );
    assert!(
        metric_opt(&text, "metadata_server_request_durations_count").unwrap_or(0.0) >= 7.0,
        "{text}"
    );
    assert!(
        metric_opt(&text, "outgoing_request_latency_count").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(
        metric_opt(
            &text,
            "tollgate_metadata_policy_denials_total{reason=\"policy\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    let (code, body) = admin_get(node, "/readyz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("gce /computeMetadata/v1/ → 200"), "{body}");
    drop(md);
    let _ = IDENTITY;
}

#[test]
fn other_ports_udp_and_raw_bypasses() {
    let c = cluster();
    let node = c.node("node1");
    let _md = double(&c, &[]);
    // A UDP echo and a TCP server on other ports of the metadata address.
    let mut echo = Command::new(testbed_bin());
    echo.args(["udp-echo", "--listen", &format!("{METADATA_V4}:53")]);
    let mut echo = c.spawn_cloud("udp-echo", echo);
    echo.wait_for_log("listening", Duration::from_secs(5));
    let mut serve = Command::new(testbed_bin());
    serve.args([
        "serve",
        "--name",
        "cloud",
        "--tcp",
        &format!("{METADATA_V4}:8081"),
    ]);
    let mut serve = c.spawn_cloud("serve", serve);
    serve.wait_for_log("serving", Duration::from_secs(5));
    let source = c.write_manifest(&[]);
    // Pods' service traffic left to the per-packet path: their metadata connections are
    // redirected all the same (checked at the end).
    let agent = start_agent(
        node,
        &source,
        &[
            "--metadata",
            "gce",
            "--socket-lb-host-namespace-only",
            "true",
        ],
    );
    let pod = c.pod("n1p1");
    // The pod interfaces that exist are covered before the agent says it is ready.
    let logs = agent.logs();
    let ready_at = logs.find("tollgate ready").expect("ready logged");
    let attached_at = logs
        .find("\"tg_tc_from_pod\"")
        .expect("pod interface attached");
    assert!(attached_at < ready_at, "{logs}");

    let mut ping = Command::new(testbed_bin());
    ping.args([
        "udp-ping",
        "--to",
        &format!("{METADATA_V4}:53"),
        "--count",
        "5",
    ]);
    let out = pod.placement().output(ping);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["received"], 5,
        "UDP to the metadata address is untouched: {r}"
    );

    let mut conn = Command::new(testbed_bin());
    conn.args([
        "connect",
        "--to",
        &format!("{METADATA_V4}:8081"),
        "--count",
        "3",
    ]);
    let out = pod.placement().output(conn);
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["ok"], 3, "{t}");
    assert!(
        t["seen_as"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.as_str().unwrap().starts_with(&format!("{}:", pod.ip))),
        "another port reaches the server directly, from the pod's address: {t}"
    );

    // A process in the pod's network namespace but outside the socket hooks' cgroup (as a raw
    // socket would be): its packets to port 80 are dropped on the pod's interface.
    let outside_cgroup = Placement::new(&pod.ns, None);
    let (exit, code, _) = curl(
        outside_cgroup,
        &url("/computeMetadata/v1/instance/attributes/kube-env"),
        G,
        &["-m", "2"],
    );
    assert_eq!((exit, code), (28, 0), "timed out, never answered");
    // Redirected pod traffic still works (by the socket hook, whatever
    // --socket-lb-host-namespace-only says).
    let (_, code, _) = curl(
        pod.placement(),
        &url("/computeMetadata/v1/project/project-id"),
        G,
        &[],
    );
    assert_eq!(code, 200);
}

#[test]
fn pods_are_refused_until_the_agent_is_ready() {
    let c = cluster();
    let node = c.node("node1");
    let _md = double(&c, &[]);
    // The source file does not exist yet: the agent has attached its programs and listens, but
    // has no complete state.
    let manifest = c.workdir().join("later.yaml");
    let source = format!("file:{}", manifest.display());
    let _agent = start_agent_until(
        node,
        &source,
        &["--metadata", "gce"],
        "metadata proxy listening",
    );
    let pod = c.pod("n1p1").placement();
    let project = url("/computeMetadata/v1/project/project-id");
    let (exit, code, _) = curl(pod, &project, G, &[]);
    assert_eq!((exit, code), (7, 0), "connection refused at once");
    let (_, code, _) = curl(node.host(), &project, G, &[]);
    assert_eq!(code, 200, "the host is never redirected");
    let (code, body) = admin_get(node, "/readyz");
    assert_eq!(code, 503, "{body}");

    // The state arrives: pods are served.
    let objs: Vec<String> = c.base_objects().iter().map(|o| o.to_string()).collect();
    std::fs::write(&manifest, objs.join("\n---\n")).unwrap();
    tollgate_tests::wait_for("pods to be served", Duration::from_secs(10), || {
        let (_, code, body) = curl(pod, &project, G, &[]);
        (code == 200 && body == PROJECT_ID).then_some(())
    });
    assert_eq!(admin_get(node, "/readyz").0, 200);
}

#[test]
fn aws_imdsv2_and_revealed_credentials() {
    let c = cluster();
    let node = c.node("node1");
    let _md = double(&c, &["--aws-require-token"]);
    let policy = c.workdir().join("policy.yaml");
    std::fs::write(
        &policy,
        "rules:\n  - namespace: ci\n    serviceAccount: deployer\n    reveal: [\"/latest/meta-data/iam/**\"]\n",
    )
    .unwrap();
    let source = c.write_objects(&objects(&c));
    let _agent = start_agent(
        node,
        &source,
        &[
            "--metadata",
            "aws",
            "--metadata-aws-require-token",
            "--metadata-policy",
            policy.to_str().unwrap(),
        ],
    );
    let web = c.pod("n1p1").placement();
    let ci = c.pod("n1p2").placement();
    // IMDSv2: the token PUT (with its TTL header) goes through.
    let (_, code, token) = curl(
        web,
        &url("/latest/api/token"),
        &["X-aws-ec2-metadata-token-ttl-seconds: 21600"],
        &["-X", "PUT"],
    );
    assert_eq!(code, 200);
    assert_eq!(token, "AQAEAtoken-ttl-21600");
    let auth = format!("X-aws-ec2-metadata-token: {token}");
    let (_, code, _) = curl(web, &url("/latest/meta-data/instance-id"), &[], &[]);
    assert_eq!(code, 401, "reads need the token");
    let (_, code, body) = curl(web, &url("/latest/meta-data/instance-id"), &[&auth], &[]);
    assert_eq!((code, body.as_str()), (200, "i-0123456789abcdef0"));
    // Concealed unless revealed: user-data for everyone, IAM credentials except for ci/deployer.
    let creds = url("/latest/meta-data/iam/security-credentials/node-instance-role");
    let (_, code, body) = curl(web, &creds, &[&auth], &[]);
    assert_eq!(code, 403, "{body}");
    let (_, code, body) = curl(ci, &creds, &[&auth], &[]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains(AWS_SECRET));
    let (_, code, body) = curl(ci, &url("/latest/user-data"), &[&auth], &[]);
    assert_eq!(code, 403, "{body}");
    assert!(!body.contains(USER_DATA));
}
