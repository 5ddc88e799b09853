//! The standard service scenario: a two-node emulated cluster, a server in every pod, a manifest
//! with a Service for every behaviour under test, and the agent on every node.
//!
//! Pods: n1p1, n1p2 on node1; n2p1, n2p2 on node2. Every pod serves TCP 8080 and 8081 and UDP
//! 5353, answering `<pod> <client address as the pod sees it>`.

use std::{
    net::{IpAddr, SocketAddr},
    process::Command,
    time::Duration,
};

use serde_json::{Value, json};

use crate::{
    BgProcess, Cluster, ClusterSpec, Node, Pod,
    process::Placement,
    tools::{testbed_bin, tollgate_bin},
    traffic::{Mode, Tally},
};

/// The ServiceCIDRs of [`objects`] (every ClusterIP below is inside them).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
pub const SERVICE_CIDR6: &str = "fd00:96::/112";
pub const WEB: &str = "10.96.0.10";
pub const MULTI: &str = "10.96.0.11";
pub const DNS: &str = "10.96.0.53";
pub const EXT_SVC: &str = "10.96.0.12";
pub const LB_SVC: &str = "10.96.0.13";
pub const ITP_LOCAL: &str = "10.96.0.14";
pub const AFFINITY: &str = "10.96.0.15";
pub const EMPTY: &str = "10.96.0.99";
pub const SPREAD: &str = "10.96.0.20";
pub const WEB6: &str = "fd00:96::10";
pub const EXTERNAL_IP: &str = "203.0.113.10";
pub const LB_IP: &str = "203.0.113.20";
pub const LB_DENY_IP: &str = "203.0.113.21";
pub const NODEPORT: u16 = 30080;
pub const NODEPORT_LOCAL: u16 = 30081;
pub const NODEPORT_EMPTY: u16 = 30099;
pub const NODEPORT_UDP: u16 = 30053;
pub const NODEPORT6: u16 = 30085;
pub const NODEPORT6_UDP: u16 = 30055;

/// An endpoint of `pod` (its node, ready unless told otherwise).
pub fn endpoint(pod: &Pod, conditions: Value) -> Value {
    endpoint_at(pod, &pod.ip.to_string(), conditions)
}

/// An endpoint of `pod` at its IPv6 address.
pub fn endpoint6(pod: &Pod, conditions: Value) -> Value {
    endpoint_at(pod, &pod.ip6.to_string(), conditions)
}

fn endpoint_at(pod: &Pod, address: &str, conditions: Value) -> Value {
    let node = format!("node{}", &pod.name[1..2]);
    json!({"addresses": [address], "nodeName": node, "conditions": conditions})
}

pub fn ready() -> Value {
    json!({"ready": true, "serving": true, "terminating": false})
}

pub fn terminating() -> Value {
    json!({"ready": false, "serving": true, "terminating": true})
}

pub fn slice(
    name: &str,
    service: &str,
    family: &str,
    ports: Value,
    endpoints: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": "default", "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": family, "ports": ports, "endpoints": endpoints,
    })
}

pub fn service(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": name}, "spec": spec})
}

/// The scenario's Services and EndpointSlices. `overrides` replaces objects by kind and name.
pub fn objects(cluster: &Cluster) -> Vec<Value> {
    let p = |n: &str| cluster.pod(n);
    let http = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
    let all = ["n1p1", "n1p2", "n2p1", "n2p2"];
    let eps = |pods: &[&str]| {
        pods.iter()
            .map(|n| endpoint(p(n), ready()))
            .collect::<Vec<_>>()
    };
    vec![
        service(
            "web",
            json!({"clusterIP": WEB, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        ),
        slice("web-1", "web", "IPv4", http.clone(), eps(&["n1p1", "n2p1"])),
        service(
            "multi",
            json!({"clusterIP": MULTI, "ports": [
            {"name": "a", "port": 80, "targetPort": "a"}, {"name": "b", "port": 81, "targetPort": "b"}]}),
        ),
        slice(
            "multi-1",
            "multi",
            "IPv4",
            json!([{"name": "a", "port": 8080}, {"name": "b", "port": 8081}]),
            eps(&all),
        ),
        service(
            "dns",
            json!({"clusterIP": DNS, "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]}),
        ),
        slice(
            "dns-1",
            "dns",
            "IPv4",
            json!([{"name": "dns", "port": 5353, "protocol": "UDP"}]),
            eps(&["n1p2", "n2p2"]),
        ),
        service(
            "np",
            json!({"type": "NodePort", "clusterIP": "10.96.0.30", "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "nodePort": NODEPORT},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": NODEPORT_UDP}]}),
        ),
        slice(
            "np-1",
            "np",
            "IPv4",
            json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            eps(&["n1p1", "n2p1"]),
        ),
        service(
            "np-local",
            json!({"type": "NodePort", "clusterIP": "10.96.0.31", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": NODEPORT_LOCAL}]}),
        ),
        slice(
            "np-local-1",
            "np-local",
            "IPv4",
            http.clone(),
            eps(&["n2p2"]),
        ),
        service(
            "np-empty",
            json!({"type": "NodePort", "clusterIP": "10.96.0.32",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": NODEPORT_EMPTY}]}),
        ),
        service(
            "ext",
            json!({"clusterIP": EXT_SVC, "externalIPs": [EXTERNAL_IP],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        ),
        slice("ext-1", "ext", "IPv4", http.clone(), eps(&["n1p2"])),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIP": LB_SVC, "allocateLoadBalancerNodePorts": false,
                "loadBalancerSourceRanges": [format!("{}/32", crate::cluster::OUTSIDE_V4)],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": LB_IP}]}}}),
        slice("lb-1", "lb", "IPv4", http.clone(), eps(&["n2p2"])),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": "default", "name": "lb-deny"},
            "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.16", "allocateLoadBalancerNodePorts": false,
                "loadBalancerSourceRanges": ["10.0.0.0/8"],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            "status": {"loadBalancer": {"ingress": [{"ip": LB_DENY_IP}]}}}),
        slice("lb-deny-1", "lb-deny", "IPv4", http.clone(), eps(&["n2p2"])),
        service(
            "itp-local",
            json!({"clusterIP": ITP_LOCAL, "internalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        ),
        slice(
            "itp-local-1",
            "itp-local",
            "IPv4",
            http.clone(),
            eps(&["n2p1"]),
        ),
        service(
            "affinity",
            json!({"clusterIP": AFFINITY, "sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 2}},
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        ),
        slice("affinity-1", "affinity", "IPv4", http.clone(), eps(&all)),
        service(
            "empty",
            json!({"clusterIP": EMPTY, "ports": [
            {"name": "http", "port": 80, "targetPort": 8080},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353}]}),
        ),
        service(
            "spread",
            json!({"clusterIP": SPREAD, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        ),
        slice("spread-1", "spread", "IPv4", http.clone(), eps(&all)),
        service(
            "web6",
            json!({"clusterIP": WEB6, "clusterIPs": [WEB6], "ipFamilies": ["IPv6"],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}),
        ),
        slice(
            "web6-1",
            "web6",
            "IPv6",
            http,
            ["n1p1", "n2p1"]
                .iter()
                .map(|n| endpoint6(p(n), ready()))
                .collect(),
        ),
        crate::k8s::service_cidr("kubernetes", &[SERVICE_CIDR, SERVICE_CIDR6]),
    ]
}

/// An IPv6 NodePort Service (Cluster policy; TCP [`NODEPORT6`] and UDP [`NODEPORT6_UDP`]) with
/// the IPv6 addresses of n1p1 and n2p1 as endpoints, to add to [`objects`].
pub fn nodeport6(cluster: &Cluster) -> Vec<Value> {
    let endpoints = ["n1p1", "n2p1"]
        .iter()
        .map(|n| endpoint6(cluster.pod(n), ready()))
        .collect();
    vec![
        service(
            "np6",
            json!({"type": "NodePort", "clusterIP": "fd00:96::30", "clusterIPs": ["fd00:96::30"],
            "ipFamilies": ["IPv6"], "ports": [
            {"name": "http", "port": 80, "targetPort": 8080, "nodePort": NODEPORT6},
            {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 5353, "nodePort": NODEPORT6_UDP}]}),
        ),
        slice(
            "np6-1",
            "np6",
            "IPv6",
            json!([{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            endpoints,
        ),
    ]
}

/// Replaces the object of the same kind and name (or adds it).
pub fn replace(objects: &mut Vec<Value>, new: Value) {
    let same =
        |o: &Value| o["kind"] == new["kind"] && o["metadata"]["name"] == new["metadata"]["name"];
    match objects.iter().position(same) {
        Some(i) => objects[i] = new,
        None => objects.push(new),
    }
}

pub struct Scenario {
    pub agents: Vec<BgProcess>,
    pub servers: Vec<BgProcess>,
    pub objects: std::cell::RefCell<Vec<Value>>,
    pub source: String,
    pub cluster: Cluster,
}

impl Scenario {
    pub fn new() -> Self {
        Self::with(ClusterSpec::default(), &[])
    }

    pub fn with(spec: ClusterSpec, agent_args: &[&str]) -> Self {
        Self::with_objects(spec, agent_args, objects)
    }

    /// A scenario whose manifest holds `objects(cluster)` instead of the standard services.
    pub fn with_objects(
        spec: ClusterSpec,
        agent_args: &[&str],
        objects: impl FnOnce(&Cluster) -> Vec<Value>,
    ) -> Self {
        let cluster = Cluster::new(&spec);
        // externalIPs and LB IPs are routed to node1 by "the network".
        let node1 = cluster.node("node1").ip.to_string();
        for ip in [EXTERNAL_IP, LB_IP, LB_DENY_IP] {
            cluster
                .outside
                .ip(&["route", "add", &format!("{ip}/32"), "via", &node1]);
        }
        let mut servers = Vec::new();
        for node in &cluster.nodes {
            for pod in &node.pods {
                servers.push(serve(pod, "[::]:8080,[::]:8081", "[::]:5353"));
            }
        }
        let objects = objects(&cluster);
        let source = cluster.write_manifest(&objects);
        let agents = cluster
            .nodes
            .iter()
            .map(|n| crate::agent::start_agent(n, &source, agent_args))
            .collect();
        Self {
            agents,
            servers,
            objects: std::cell::RefCell::new(objects),
            source,
            cluster,
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.cluster.node(name)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.cluster.pod(name)
    }

    /// Writes the manifest with `changed` objects replaced (agents reload it; use
    /// [`Scenario::wait_backends`] to wait until they programmed it).
    pub fn update(&self, changed: Vec<Value>) {
        let mut objects = self.objects.borrow_mut();
        for o in changed {
            replace(&mut objects, o);
        }
        self.cluster.write_manifest(&objects);
    }

    pub fn remove(&self, kind: &str, name: &str) {
        let mut objects = self.objects.borrow_mut();
        objects.retain(|o| !(o["kind"] == kind && o["metadata"]["name"] == name));
        self.cluster.write_manifest(&objects);
    }

    /// The current manifest object of `kind` named `name`.
    pub fn object(&self, kind: &str, name: &str) -> Value {
        self.objects
            .borrow()
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {name} in the scenario"))
    }

    /// Runs a client process in `at` and returns its tally (see [`run_client`]).
    pub fn client(
        &self,
        at: Placement<'_>,
        to: &str,
        count: u64,
        mode: Mode,
        timeout: Duration,
    ) -> Tally {
        run_client(at, to, count, mode, timeout)
    }

    /// Starts a paced client in the background (`interval` between exchanges); read its tally
    /// with [`Scenario::finish`].
    pub fn spawn_client(
        &self,
        at: Placement<'_>,
        to: &str,
        count: u64,
        mode: Mode,
        interval: Duration,
    ) -> BgProcess {
        let mut cmd = connect_cmd(to, count, mode);
        cmd.args([
            "--interval-ms",
            &interval.as_millis().to_string(),
            "--timeout-ms",
            "1000",
        ]);
        BgProcess::spawn(&format!("{}-client-{}", at.netns.name(), count), at, cmd)
    }

    /// Starts one long TCP connection exchanging `lines` lines `interval` apart.
    pub fn spawn_session(
        &self,
        at: Placement<'_>,
        to: &str,
        lines: u64,
        interval: Duration,
    ) -> BgProcess {
        let mut cmd = Command::new(testbed_bin());
        cmd.args(["session", "--to", to, "--lines", &lines.to_string()])
            .args([
                "--interval-ms",
                &interval.as_millis().to_string(),
                "--timeout-ms",
                "2000",
            ]);
        let mut p = BgProcess::spawn(&format!("{}-session-{lines}", at.netns.name()), at, cmd);
        p.wait_for_log("connected", Duration::from_secs(5));
        p
    }

    /// Waits for a background client to exit and parses its tally.
    pub fn finish(p: &mut BgProcess, within: Duration) -> Tally {
        crate::wait_for("the client to finish", within, || {
            (!p.alive()).then_some(())
        });
        let logs = p.logs();
        let line = logs
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .unwrap_or("");
        serde_json::from_str(line).unwrap_or_else(|e| panic!("client output {logs:?}: {e}"))
    }

    /// `tollgate maps --json` on a node.
    pub fn maps(&self, node: &Node) -> Value {
        let mut cmd = Command::new(tollgate_bin());
        cmd.args(["maps", "--json", "--bpffs"]).arg(&node.bpffs);
        let out = node.output(cmd);
        assert!(
            out.status.success(),
            "tollgate maps: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("maps json: {e}"))
    }

    /// Backends of the frontend `addr` (as `ip:port`) in the node's maps.
    pub fn backends(&self, node: &Node, frontend: &str, scope: &str) -> Option<Vec<String>> {
        let maps = self.maps(node);
        maps["services"]
            .as_array()?
            .iter()
            .flat_map(|s| s["frontends"].as_array().into_iter().flatten())
            .find(|f| f["address"] == frontend && f["scope"] == scope)
            .map(|f| {
                let mut v: Vec<String> = f["backends"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["address"].as_str().map(String::from))
                    .collect();
                v.sort();
                v
            })
    }

    /// Waits until `node`'s maps show exactly `backends` for `frontend`.
    pub fn wait_backends_on(&self, node: &Node, frontend: &str, scope: &str, backends: &[&str]) {
        let mut want: Vec<String> = backends.iter().map(|s| s.to_string()).collect();
        want.sort();
        crate::wait_for(
            &format!("{frontend} → {want:?} on {}", node.name),
            Duration::from_secs(10),
            || (self.backends(node, frontend, scope).as_ref() == Some(&want)).then_some(()),
        );
    }

    /// Waits until every node whose maps have `frontend` (NodePorts exist only on their own
    /// node) shows exactly `backends` for it; at least one node must have it.
    pub fn wait_backends(&self, frontend: &str, scope: &str, backends: &[&str]) {
        let mut want: Vec<String> = backends.iter().map(|s| s.to_string()).collect();
        want.sort();
        crate::wait_for(
            &format!("{frontend} → {want:?}"),
            Duration::from_secs(10),
            || {
                let seen: Vec<Option<Vec<String>>> = self
                    .cluster
                    .nodes
                    .iter()
                    .map(|n| self.backends(n, frontend, scope))
                    .collect();
                let present: Vec<&Vec<String>> = seen.iter().flatten().collect();
                (!present.is_empty() && present.iter().all(|b| **b == want)).then_some(())
            },
        );
    }
}

impl Default for Scenario {
    fn default() -> Self {
        Self::new()
    }
}

/// Starts the test-bed server in `pod` (TCP on `tcp`, UDP on `udp`, comma-separated
/// addresses; it answers with the pod's name) and waits until it serves.
pub fn serve(pod: &Pod, tcp: &str, udp: &str) -> BgProcess {
    let mut cmd = Command::new(testbed_bin());
    cmd.args(["serve", "--name", &pod.name, "--tcp", tcp, "--udp", udp]);
    let mut server = pod.spawn("serve", cmd);
    server.wait_for_log("serving", Duration::from_secs(5));
    server
}

/// `ip:port` of a pod's TCP server (8080).
pub fn pod_addr(pod: &Pod, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(pod.ip), port)
}

/// The test bed's `connect` client: `count` exchanges with `to` in `mode`.
fn connect_cmd(to: &str, count: u64, mode: Mode) -> Command {
    let mut cmd = Command::new(testbed_bin());
    cmd.args(["connect", "--to", to, "--count", &count.to_string()])
        .args(["--mode", &mode.arg()]);
    cmd
}

/// Runs the test bed's `connect` client in `at` (any cluster, with or without a scenario) and
/// returns its tally.
pub fn run_client(at: Placement<'_>, to: &str, count: u64, mode: Mode, timeout: Duration) -> Tally {
    let mut cmd = connect_cmd(to, count, mode);
    cmd.args(["--timeout-ms", &timeout.as_millis().to_string()]);
    let out = at.output(cmd);
    assert!(
        out.status.success(),
        "client to {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "client output {:?}: {e}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}
