//! Ingestion rules (R1–R11), revision behaviour and re-list handling of the ENLS engine.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::{ingest::Kind, model::*, *};

const NODE: &str = "node-a";

fn obj<T: serde::de::DeserializeOwned>(v: Value) -> Box<T> {
    Box::new(serde_json::from_value(v).unwrap())
}

fn service(name: &str, spec: Value) -> Object {
    Object::Service(obj(
        json!({"metadata": {"namespace": "ns", "name": name}, "spec": spec}),
    ))
}

fn service_full(v: Value) -> Object {
    Object::Service(obj(v))
}

fn slice_with(name: &str, svc: &str, family: &str, ports: Value, endpoints: Value) -> Object {
    Object::EndpointSlice(obj(json!({
        "metadata": {"namespace": "ns", "name": name, "labels": {"kubernetes.io/service-name": svc}},
        "addressType": family, "ports": ports, "endpoints": endpoints,
    })))
}

/// A slice with one port named "" (the unnamed service port) numbered `port`.
fn slice(name: &str, svc: &str, port: u16, endpoints: Value) -> Object {
    slice_with(
        name,
        svc,
        "IPv4",
        json!([{"name": "", "port": port, "protocol": "TCP"}]),
        endpoints,
    )
}

fn ep(ip: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": "other"})
}

fn local_ep(ip: &str) -> Value {
    json!({"addresses": [ip], "conditions": {"ready": true}, "nodeName": NODE})
}

fn node(labels: Value, addresses: Value) -> Object {
    Object::Node(obj(json!({
        "metadata": {"name": NODE, "labels": labels},
        "status": {"addresses": addresses},
    })))
}

fn pod(name: &str, node_name: &str, ip: &str, phase: &str) -> Object {
    Object::Pod(obj(json!({
        "metadata": {"namespace": "ns", "name": name, "uid": format!("uid-{name}")},
        "spec": {"nodeName": node_name, "serviceAccountName": "sa", "containers": []},
        "status": {"podIP": ip, "podIPs": [{"ip": ip}], "phase": phase},
    })))
}

struct Harness {
    enls: Enls,
    registry: Registry,
}

impl Harness {
    fn new() -> Self {
        Self::with(EnlsConfig::new(NODE))
    }

    fn with(cfg: EnlsConfig) -> Self {
        let mut registry = Registry::default();
        let metrics = metrics::EnlsMetrics::register(&mut registry);
        Self {
            enls: Enls::new(cfg, metrics),
            registry,
        }
    }

    /// Lists `objects` as the initial state of every kind and returns the initial update.
    fn initial(&mut self, objects: Vec<Object>) -> Update {
        for k in Kind::ALL {
            self.enls.handle(SourceEvent::ListBegin(k));
        }
        for o in objects {
            self.enls.handle(SourceEvent::Apply(o));
        }
        for k in Kind::ALL {
            self.enls.handle(SourceEvent::ListDone(k));
        }
        self.enls.sync().expect("initial update")
    }

    fn apply(&mut self, o: Object) -> Option<Update> {
        self.enls.handle(SourceEvent::Apply(o));
        self.enls.sync()
    }

    fn delete(&mut self, o: Object) -> Option<Update> {
        self.enls.handle(SourceEvent::Delete(o));
        self.enls.sync()
    }

    fn relist(&mut self, kind: Kind, objects: Vec<Object>) -> Option<Update> {
        self.enls.handle(SourceEvent::ListBegin(kind));
        for o in objects {
            self.enls.handle(SourceEvent::Apply(o));
        }
        self.enls.handle(SourceEvent::ListDone(kind));
        self.enls.sync()
    }

    fn state(&self, name: &str) -> Option<Arc<ServiceState>> {
        self.enls.state.get(&ObjKey::new("ns", name)).cloned()
    }

    fn port(&self, name: &str) -> ServicePortState {
        let s = self
            .state(name)
            .unwrap_or_else(|| panic!("no service {name}"));
        assert_eq!(s.ports.len(), 1, "{name} has {} ports", s.ports.len());
        s.ports[0].clone()
    }

    fn metrics_text(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }
}

fn addrs(set: &[EndpointAddr]) -> Vec<String> {
    set.iter().map(|a| a.to_string()).collect()
}

fn cluster_ip(name: &str, ip: &str) -> Object {
    service(
        name,
        json!({"clusterIP": ip, "ports": [{"port": 80, "protocol": "TCP"}]}),
    )
}

#[test]
fn nothing_is_emitted_before_every_kind_has_listed() {
    let mut h = Harness::new();
    for k in [
        Kind::Service,
        Kind::EndpointSlice,
        Kind::Node,
        Kind::ServiceCidr,
    ] {
        h.enls.handle(SourceEvent::ListBegin(k));
        h.enls.handle(SourceEvent::ListDone(k));
    }
    h.enls
        .handle(SourceEvent::Apply(cluster_ip("a", "10.96.0.1")));
    assert!(h.enls.sync().is_none(), "pods have not listed yet");
    h.enls.handle(SourceEvent::ListBegin(Kind::Pod));
    h.enls.handle(SourceEvent::ListDone(Kind::Pod));
    let u = h.enls.sync().unwrap();
    assert!(u.initial);
    assert_eq!(u.revision, 1);
    assert_eq!(u.services.len(), 1);
    assert!(u.node.is_some(), "the initial update carries the node info");
    assert_eq!(
        u.service_cidrs,
        Some(vec![]),
        "and the ServiceCIDRs, none here"
    );
}

#[test]
fn cluster_ip_service_with_endpoints() {
    let mut h = Harness::new();
    h.initial(vec![
        cluster_ip("web", "10.96.0.10"),
        slice(
            "web-1",
            "web",
            8080,
            json!([ep("10.1.0.2"), ep("10.1.0.1"), local_ep("10.2.0.1")]),
        ),
    ]);
    let p = h.port("web");
    assert_eq!(
        p.frontends,
        vec![Frontend {
            kind: FrontendKind::ClusterIP,
            ip: "10.96.0.10".parse().unwrap(),
            port: 80
        }]
    );
    // Sorted, deterministic.
    assert_eq!(
        addrs(&p.internal_endpoints),
        ["10.1.0.1:8080", "10.1.0.2:8080", "10.2.0.1:8080"]
    );
    assert!(p.external_endpoints.is_none(), "no external frontend");
    assert!(p.has_endpoints);
    assert_eq!(p.ip_family, IpFamily::IPv4);
    assert_eq!(h.state("web").unwrap().local_ready_endpoints, 1);
    // Equal sets share one allocation.
    assert!(Arc::ptr_eq(
        &p.internal_endpoints,
        p.cluster_endpoints.as_ref().unwrap()
    ));
}

#[test]
fn json_shape_of_the_enls_command() {
    let mut h = Harness::new();
    h.initial(vec![
        service(
            "np",
            json!({"type": "NodePort", "clusterIP": "10.96.0.5",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
        ),
        slice_with(
            "np-1",
            "np",
            "IPv4",
            json!([{"name": "http", "port": 8080}]),
            json!([ep("10.1.0.1")]),
        ),
        node(
            json!({}),
            json!([{"type": "InternalIP", "address": "192.168.1.10"}]),
        ),
    ]);
    let v = serde_json::to_value(&*h.state("np").unwrap()).unwrap();
    let port = &v["ports"][0];
    assert_eq!(v["namespace"], "ns");
    assert_eq!(v["type"], "NodePort");
    assert_eq!(port["name"], "http");
    assert_eq!(port["protocol"], "TCP");
    assert_eq!(port["port"], 80);
    assert_eq!(port["internal_endpoints"], json!(["10.1.0.1:8080"]));
    assert_eq!(port["external_endpoints"], json!(["10.1.0.1:8080"]));
    assert_eq!(port["has_endpoints"], true);
    assert_eq!(
        port["frontends"],
        json!([
            {"kind": "ClusterIP", "ip": "10.96.0.5", "port": 80},
            {"kind": "NodePort", "ip": "192.168.1.10", "port": 30080},
        ])
    );
}

#[test]
fn r1_service_proxy_name_and_headless_labels() {
    let labelled = |name: &str, owner: &str| {
        service_full(json!({
            "metadata": {"namespace": "ns", "name": name,
                "labels": {"service.kubernetes.io/service-proxy-name": owner}},
            "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80}]},
        }))
    };
    let mut h = Harness::new();
    h.initial(vec![
        labelled("theirs", "other-proxy"),
        cluster_ip("plain", "10.96.0.8"),
    ]);
    assert!(h.state("theirs").is_none(), "claimed by another proxy");
    assert!(h.state("plain").is_some(), "unlabelled services are served");

    let mut cfg = EnlsConfig::new(NODE);
    cfg.service_proxy_name = Some("tollgate".into());
    let mut h = Harness::with(cfg);
    h.initial(vec![
        labelled("ours", "tollgate"),
        labelled("theirs", "other-proxy"),
    ]);
    assert!(h.state("ours").is_some());
    assert!(h.state("theirs").is_none());

    let mut h = Harness::new();
    h.initial(vec![
        cluster_ip("svc", "10.96.0.7"),
        Object::EndpointSlice(obj(json!({
            "metadata": {"namespace": "ns", "name": "svc-h", "labels": {
                "kubernetes.io/service-name": "svc", "service.kubernetes.io/headless": ""}},
            "addressType": "IPv4", "ports": [{"name": "", "port": 80}],
            "endpoints": [ep("10.1.0.1")],
        }))),
    ]);
    assert!(
        h.port("svc").internal_endpoints.is_empty(),
        "headless-labelled slices are ignored"
    );
}

#[test]
fn r2_skipped_services() {
    let mut h = Harness::new();
    h.initial(vec![
        service(
            "headless",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ),
        service("empty", json!({"clusterIP": "", "ports": [{"port": 80}]})),
        service(
            "ext",
            json!({"type": "ExternalName", "externalName": "example.com"}),
        ),
        service(
            "v6only",
            json!({"clusterIP": "fd00::10", "clusterIPs": ["fd00::10"], "ports": [{"port": 80}]}),
        ),
    ]);
    assert!(h.state("headless").is_none());
    assert!(h.state("empty").is_none());
    assert!(h.state("ext").is_none());
    let p = h.port("v6only");
    assert_eq!(
        p.ip_family,
        IpFamily::IPv6,
        "only the family with a ClusterIP is programmed"
    );
    // A service that becomes headless is removed.
    let u = h
        .apply(service(
            "v6only",
            json!({"clusterIP": "None", "ports": [{"port": 80}]}),
        ))
        .unwrap();
    assert!(u.services[0].new.is_none());
}

#[test]
fn r3_r4_ports_frontends_and_per_family_filtering() {
    let mut h = Harness::new();
    h.initial(vec![
        service_full(json!({
            "metadata": {"namespace": "ns", "name": "lb"},
            "spec": {
                "type": "LoadBalancer", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"],
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                          {"name": "dns-tcp", "port": 53, "protocol": "TCP", "nodePort": 30054}],
                "externalIPs": ["203.0.113.7", "2001:db8::7", "not-an-ip"],
                "loadBalancerSourceRanges": [" 198.51.100.0/24 ", "2001:db8:1::/48", "bogus"],
                "externalTrafficPolicy": "Local", "healthCheckNodePort": 31999,
                "sessionAffinity": "ClientIP",
            },
            "status": {"loadBalancer": {"ingress": [
                {"ip": "192.0.2.10"}, {"ip": "192.0.2.11", "ipMode": "Proxy"}, {"hostname": "lb.example"},
            ]}},
        })),
        node(json!({}), json!([{"type": "InternalIP", "address": "192.168.1.10"},
                               {"type": "InternalIP", "address": "fd00:77::10"},
                               {"type": "Hostname", "address": "node-a"}])),
    ]);
    let s = h.state("lb").unwrap();
    assert_eq!(s.ports.len(), 4, "two ports × two families");
    let v4_udp = s
        .ports
        .iter()
        .find(|p| p.ip_family == IpFamily::IPv4 && p.protocol == Protocol::Udp)
        .unwrap();
    let kinds: Vec<(FrontendKind, String, u16)> = v4_udp
        .frontends
        .iter()
        .map(|f| (f.kind, f.ip.to_string(), f.port))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (FrontendKind::ClusterIP, "10.96.0.1".into(), 53),
            (FrontendKind::NodePort, "192.168.1.10".into(), 30053),
            (FrontendKind::ExternalIP, "203.0.113.7".into(), 53),
            (FrontendKind::LoadBalancer, "192.0.2.10".into(), 53),
        ],
        "Proxy-mode and hostname ingress entries are not VIPs"
    );
    assert_eq!(
        v4_udp
            .source_ranges
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["198.51.100.0/24"]
    );
    assert_eq!(v4_udp.health_check_node_port, Some(31999));
    assert_eq!(
        v4_udp.session_affinity_timeout_seconds,
        Some(10800),
        "ClientIP default timeout"
    );
    assert!(v4_udp.external_traffic_policy_local);
    let v6 = s
        .ports
        .iter()
        .find(|p| p.ip_family == IpFamily::IPv6 && p.protocol == Protocol::Udp)
        .unwrap();
    assert!(v6.frontends.iter().all(|f| f.ip.is_ipv6()));
    assert_eq!(
        v6.source_ranges
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>(),
        ["2001:db8:1::/48"]
    );
    let text = h.metrics_text();
    assert!(
        text.contains(
            r#"tollgate_enls_rejected_objects_total{kind="Service",reason="invalid_ip"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"reason="invalid_source_range"} 1"#),
        "{text}"
    );
}

#[test]
fn r4_health_check_only_for_lb_with_local_policy_and_custom_affinity() {
    let mut h = Harness::new();
    h.initial(vec![service("np", json!({
        "type": "NodePort", "clusterIP": "10.96.0.2", "ports": [{"port": 80, "nodePort": 30080}],
        "externalTrafficPolicy": "Local", "healthCheckNodePort": 31000,
        "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}},
    }))]);
    let p = h.port("np");
    assert_eq!(p.health_check_node_port, None);
    assert_eq!(p.session_affinity_timeout_seconds, Some(60));
}

#[test]
fn r5_slice_acceptance() {
    let mut h = Harness::new();
    h.initial(vec![
        cluster_ip("svc", "10.96.0.3"),
        slice_with("fqdn", "svc", "FQDN", json!([{"name": "", "port": 80}]), json!([{"addresses": ["a.example"]}])),
        Object::EndpointSlice(obj(json!({
            "metadata": {"namespace": "ns", "name": "orphan"},
            "addressType": "IPv4", "ports": [{"name": "", "port": 80}], "endpoints": [ep("10.1.0.9")],
        }))),
        slice("good", "svc", 80, json!([ep("10.1.0.1")])),
    ]);
    assert_eq!(addrs(&h.port("svc").internal_endpoints), ["10.1.0.1:80"]);
    let text = h.metrics_text();
    assert!(
        text.contains(r#"kind="EndpointSlice",reason="missing_service_name_label"} 1"#),
        "{text}"
    );
}

#[test]
fn r6_slice_ports() {
    let mut h = Harness::new();
    h.initial(vec![
        service(
            "svc",
            json!({"clusterIP": "10.96.0.4", "ports": [
            {"name": "http", "port": 80}, {"name": "", "port": 81}]}),
        ),
        // Named targetPorts: pods expose "http" on different numbers, in different slices.
        slice_with(
            "a",
            "svc",
            "IPv4",
            json!([{"name": "http", "port": 80}]),
            json!([ep("10.0.1.1")]),
        ),
        slice_with(
            "b",
            "svc",
            "IPv4",
            json!([{"name": "http", "port": 8080}]),
            json!([ep("10.0.1.1")]),
        ),
        // Nil name ignored; port 0 ignored.
        slice_with(
            "c",
            "svc",
            "IPv4",
            json!([{"port": 9999}, {"name": "http", "port": 0}]),
            json!([ep("10.0.1.2")]),
        ),
        // "" matches the unnamed service port.
        slice_with(
            "d",
            "svc",
            "IPv4",
            json!([{"name": "", "port": 8181}]),
            json!([ep("10.0.1.3")]),
        ),
    ]);
    let s = h.state("svc").unwrap();
    let http = s.ports.iter().find(|p| &*p.name == "http").unwrap();
    assert_eq!(
        addrs(&http.internal_endpoints),
        ["10.0.1.1:80", "10.0.1.1:8080"]
    );
    let unnamed = s.ports.iter().find(|p| p.name.is_empty()).unwrap();
    assert_eq!(addrs(&unnamed.internal_endpoints), ["10.0.1.3:8181"]);
    assert!(h.metrics_text().contains(r#"reason="invalid_port"} 1"#));
}

#[test]
fn r7_endpoint_fields() {
    let mut h = Harness::new();
    h.initial(vec![
        cluster_ip("svc", "10.96.0.5"),
        slice("s", "svc", 80, json!([
            {"addresses": ["10.0.0.1", "10.0.0.99"]},                       // nil conditions: ready
            {"addresses": ["10.0.0.2"], "conditions": {"ready": false, "serving": false}}, // unready
            {"addresses": ["10.0.0.3"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["010.000.000.004"], "nodeName": NODE},            // sloppy IPv4, local
            {"addresses": ["not-an-ip"]},
            {"addresses": ["fd00::1"]},                                     // wrong family
        ])),
    ]);
    let p = h.port("svc");
    assert_eq!(
        addrs(&p.internal_endpoints),
        ["10.0.0.1:80", "10.0.0.4:80"],
        "only the first address; sloppy IPv4 accepted"
    );
    assert_eq!(
        addrs(&p.serving_endpoints),
        ["10.0.0.1:80", "10.0.0.3:80", "10.0.0.4:80"]
    );
    assert_eq!(h.state("svc").unwrap().local_ready_endpoints, 1);
    assert!(
        h.metrics_text()
            .contains(r#"kind="EndpointSlice",reason="invalid_ip"} 2"#)
    );
}

#[test]
fn r8_duplicates_across_slices_prefer_the_running_copy() {
    let term = |ip: &str| json!({"addresses": [ip], "conditions": {"ready": false, "serving": true, "terminating": true}});
    for (first, second) in [
        (term("10.0.0.1"), ep("10.0.0.1")),
        (ep("10.0.0.1"), term("10.0.0.1")),
    ] {
        let mut h = Harness::new();
        h.initial(vec![
            cluster_ip("svc", "10.96.0.6"),
            slice("a", "svc", 80, json!([first])),
            slice("b", "svc", 80, json!([second])),
        ]);
        let p = h.port("svc");
        assert_eq!(
            addrs(&p.internal_endpoints),
            ["10.0.0.1:80"],
            "the running copy wins whatever the order"
        );
    }
}

#[test]
fn r9_irrelevant_changes_make_no_revision() {
    let mut h = Harness::new();
    h.initial(vec![
        cluster_ip("svc", "10.96.0.7"),
        slice("s", "svc", 80, json!([ep("10.0.0.1")])),
        pod("p", NODE, "10.2.0.5", "Running"),
    ]);
    let rev = h.enls.revision();
    // Same object again, an annotation, a label, a status condition: nothing to program.
    assert!(h.apply(cluster_ip("svc", "10.96.0.7")).is_none());
    assert!(
        h.apply(service_full(
            json!({"metadata": {"namespace": "ns", "name": "svc",
        "annotations": {"a": "b"}, "labels": {"x": "y"}},
        "spec": {"clusterIP": "10.96.0.7", "ports": [{"port": 80, "protocol": "TCP"}]}})
        ))
        .is_none()
    );
    let mut p = pod("p", NODE, "10.2.0.5", "Running");
    if let Object::Pod(p) = &mut p {
        p.metadata.labels = Some([("new".to_string(), "label".to_string())].into());
    }
    assert!(h.apply(p).is_none());
    // A pod of another node is not ours.
    assert!(h.apply(pod("q", "node-b", "10.3.0.5", "Running")).is_none());
    // Deleting something unknown is a no-op.
    assert!(h.delete(cluster_ip("unknown", "10.96.0.99")).is_none());
    assert_eq!(h.enls.revision(), rev);
    // A real change is one revision.
    let u = h
        .apply(slice(
            "s",
            "svc",
            80,
            json!([ep("10.0.0.1"), ep("10.0.0.2")]),
        ))
        .unwrap();
    assert_eq!(u.revision, rev + 1);
    assert_eq!(u.services.len(), 1);
    assert!(u.services[0].old.is_some() && u.services[0].new.is_some());
}

#[test]
fn relist_emits_only_real_differences() {
    let mut h = Harness::new();
    h.initial(vec![
        cluster_ip("a", "10.96.1.1"),
        cluster_ip("b", "10.96.1.2"),
        slice("a-1", "a", 80, json!([ep("10.0.0.1")])),
    ]);
    let rev = h.enls.revision();
    // A watch restart re-lists the same objects: nothing changes, no spurious deletions.
    assert!(
        h.relist(
            Kind::Service,
            vec![cluster_ip("a", "10.96.1.1"), cluster_ip("b", "10.96.1.2")]
        )
        .is_none()
    );
    assert!(
        h.relist(
            Kind::EndpointSlice,
            vec![slice("a-1", "a", 80, json!([ep("10.0.0.1")]))]
        )
        .is_none()
    );
    assert_eq!(h.enls.revision(), rev);
    // "b" was deleted while the watch was down: the re-list removes it, and only it.
    let u = h
        .relist(Kind::Service, vec![cluster_ip("a", "10.96.1.1")])
        .unwrap();
    assert_eq!(u.services.len(), 1);
    assert_eq!(&*u.services[0].key.name, "b");
    assert!(u.services[0].new.is_none());
    // The slice disappeared too: a's endpoints go, a stays.
    let u = h.relist(Kind::EndpointSlice, vec![]).unwrap();
    assert_eq!(&*u.services[0].key.name, "a");
    assert!(
        u.services[0].new.as_ref().unwrap().ports[0]
            .internal_endpoints
            .is_empty()
    );
}

#[test]
fn malformed_objects_keep_the_last_good_version() {
    let mut h = Harness::new();
    h.initial(vec![
        cluster_ip("svc", "10.96.0.8"),
        slice("s", "svc", 80, json!([ep("10.0.0.1")])),
    ]);
    let rev = h.enls.revision();
    assert!(
        h.apply(service(
            "svc",
            json!({"type": "Bogus", "clusterIP": "10.96.0.8", "ports": [{"port": 80}]})
        ))
        .is_none()
    );
    assert!(
        h.apply(service(
            "svc",
            json!({"clusterIP": "10.96.0.300", "ports": [{"port": 80}]})
        ))
        .is_none()
    );
    assert!(
        h.apply(service(
            "svc",
            json!({"clusterIP": "10.96.0.8", "ports": [{"port": 0}]})
        ))
        .is_none()
    );
    let huge: Vec<Value> = (0..10_000)
        .map(|i| ep(&format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256)))
        .collect();
    assert!(h.apply(slice("s", "svc", 80, Value::Array(huge))).is_none());
    assert_eq!(h.enls.revision(), rev, "nothing changed");
    assert_eq!(addrs(&h.port("svc").internal_endpoints), ["10.0.0.1:80"]);
    // A re-list that still contains the malformed object does not delete the good version.
    assert!(
        h.relist(
            Kind::Service,
            vec![service(
                "svc",
                json!({"type": "Bogus", "clusterIP": "10.96.0.8"})
            )]
        )
        .is_none()
    );
    assert!(h.state("svc").is_some());
    let text = h.metrics_text();
    for reason in [
        "unknown_service_type",
        "invalid_cluster_ip",
        "invalid_port",
        "too_many_endpoints",
    ] {
        assert!(
            text.contains(&format!("reason=\"{reason}\"")),
            "{reason} not counted:\n{text}"
        );
    }
    // Other services still change normally.
    assert!(h.apply(cluster_ip("other", "10.96.0.9")).is_some());
}

#[test]
fn traffic_policies_on_services() {
    let mut h = Harness::new();
    h.initial(vec![
        // k8s-25: eTP=Local on a ClusterIP-only service is ignored.
        service("etp", json!({"clusterIP": "10.96.2.1", "ports": [{"port": 80}], "externalTrafficPolicy": "Local"})),
        slice("etp-1", "etp", 80, json!([ep("10.0.0.1"), local_ep("10.0.0.2")])),
        // k8s-26: iTP=Local internal-only service: no cluster set; remote-only → DROP.
        service("itp", json!({"clusterIP": "10.96.2.2", "ports": [{"port": 80}], "internalTrafficPolicy": "Local"})),
        slice("itp-1", "itp", 80, json!([ep("10.0.0.3")])),
        // eTP=Local NodePort: outside traffic uses local endpoints, inside traffic cluster ones.
        service("np", json!({"type": "NodePort", "clusterIP": "10.96.2.3",
            "ports": [{"port": 80, "nodePort": 30000}], "externalTrafficPolicy": "Local"})),
        slice("np-1", "np", 80, json!([ep("10.0.0.4"), local_ep("10.0.0.5")])),
        // No endpoints at all: REJECT.
        cluster_ip("none", "10.96.2.4"),
    ]);
    let etp = h.port("etp");
    assert!(!etp.external_traffic_policy_local);
    assert!(etp.external_endpoints.is_none());
    assert_eq!(
        addrs(&etp.internal_endpoints),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );

    let itp = h.port("itp");
    assert!(
        itp.cluster_endpoints.is_none(),
        "an iTP=Local internal-only port uses no cluster set"
    );
    assert!(itp.internal_endpoints.is_empty());
    assert!(
        itp.has_endpoints,
        "endpoints exist elsewhere: DROP, not REJECT"
    );

    let np = h.port("np");
    assert_eq!(
        addrs(np.external_endpoints.as_ref().unwrap()),
        ["10.0.0.5:80"]
    );
    assert_eq!(
        addrs(np.cluster_endpoints.as_ref().unwrap()),
        ["10.0.0.4:80", "10.0.0.5:80"]
    );
    assert_eq!(
        addrs(&np.internal_endpoints),
        ["10.0.0.4:80", "10.0.0.5:80"]
    );
    assert_eq!(
        addrs(np.endpoints_from_inside(FrontendKind::NodePort)),
        ["10.0.0.4:80", "10.0.0.5:80"]
    );
    assert_eq!(
        addrs(np.endpoints_from_outside(FrontendKind::NodePort)),
        ["10.0.0.5:80"]
    );

    let none = h.port("none");
    assert!(
        !none.has_endpoints && none.internal_endpoints.is_empty(),
        "REJECT"
    );

    let text = h.metrics_text();
    assert!(text.contains(r#"kubeproxy_sync_proxy_rules_no_local_endpoints{traffic_policy="internal",ip_family="IPv4"} 1"#), "{text}");
}

#[test]
fn node_changes_recompute_topology_and_nodeports() {
    let zoned = |ip: &str, zone: &str| json!({"addresses": [ip], "conditions": {"ready": true}, "hints": {"forZones": [{"name": zone}]}});
    let mut cfg = EnlsConfig::new(NODE);
    cfg.nodeport_addresses = vec![IpNet::parse("192.168.0.0/16").unwrap()];
    let mut h = Harness::with(cfg);
    h.initial(vec![
        service("np", json!({"type": "NodePort", "clusterIP": "10.96.3.1", "ports": [{"port": 80, "nodePort": 30001}]})),
        slice("np-1", "np", 80, json!([zoned("10.0.0.1", "zone-a"), zoned("10.0.0.2", "zone-b")])),
        node(json!({"topology.kubernetes.io/zone": "zone-a"}), json!([
            {"type": "InternalIP", "address": "192.168.1.10"}, {"type": "ExternalIP", "address": "203.0.113.5"}])),
    ]);
    let p = h.port("np");
    assert_eq!(addrs(&p.internal_endpoints), ["10.0.0.1:80"]);
    assert_eq!(
        p.frontends
            .iter()
            .filter(|f| f.kind == FrontendKind::NodePort)
            .count(),
        1,
        "--nodeport-addresses filters 203.0.113.5"
    );
    let u = h
        .apply(node(
            json!({"topology.kubernetes.io/zone": "zone-b"}),
            json!([
        {"type": "InternalIP", "address": "192.168.1.10"}]),
        ))
        .unwrap();
    assert!(u.node.is_some());
    assert_eq!(addrs(&h.port("np").internal_endpoints), ["10.0.0.2:80"]);
    // The node object disappears: NodePort frontends go, topology is off.
    h.delete(node(json!({}), json!([]))).unwrap();
    let p = h.port("np");
    assert!(p.frontends.iter().all(|f| f.kind != FrontendKind::NodePort));
    assert_eq!(addrs(&p.internal_endpoints), ["10.0.0.1:80", "10.0.0.2:80"]);
}

#[test]
fn nodeport_addresses_primary_keeps_the_first_internal_ip_of_each_family() {
    let mut cfg = EnlsConfig::new(NODE);
    cfg.nodeport_primary = true;
    let mut h = Harness::with(cfg);
    let nodeport_ips = |h: &Harness| -> Vec<String> {
        h.port("np")
            .frontends
            .iter()
            .filter(|f| f.kind == FrontendKind::NodePort)
            .map(|f| f.ip.to_string())
            .collect()
    };
    h.initial(vec![
        service("np", json!({"type": "NodePort", "clusterIP": "10.96.3.1", "ports": [{"port": 80, "nodePort": 30001}]})),
        node(json!({}), json!([
            {"type": "ExternalIP", "address": "203.0.113.5"},
            {"type": "Hostname", "address": "node-a"},
            {"type": "InternalIP", "address": "192.168.1.10"},
            {"type": "InternalIP", "address": "192.168.1.11"},
            {"type": "ExternalIP", "address": "2001:db8::5"}])),
    ]);
    assert_eq!(nodeport_ips(&h), ["192.168.1.10"]);
    let n = h.enls.node.as_ref().unwrap();
    assert_eq!(
        n.primary,
        [
            "192.168.1.10".parse::<std::net::IpAddr>().unwrap(),
            "2001:db8::5".parse().unwrap()
        ],
        "an ExternalIP when the family has no InternalIP"
    );
    // Without an InternalIP, the first ExternalIP.
    h.apply(node(
        json!({}),
        json!([
        {"type": "ExternalIP", "address": "203.0.113.5"},
        {"type": "ExternalIP", "address": "203.0.113.6"}]),
    ))
    .unwrap();
    assert_eq!(nodeport_ips(&h), ["203.0.113.5"]);
}

#[test]
fn slice_moving_between_services_updates_both() {
    let mut h = Harness::new();
    h.initial(vec![
        cluster_ip("a", "10.96.4.1"),
        cluster_ip("b", "10.96.4.2"),
        slice("s", "a", 80, json!([ep("10.0.0.1")])),
    ]);
    let u = h
        .apply(slice("s", "b", 80, json!([ep("10.0.0.1")])))
        .unwrap();
    let mut names: Vec<&str> = u.services.iter().map(|c| &*c.key.name).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    assert!(h.port("a").internal_endpoints.is_empty());
    assert_eq!(addrs(&h.port("b").internal_endpoints), ["10.0.0.1:80"]);
}

#[test]
fn pod_index_tracks_this_nodes_pods() {
    let mut h = Harness::new();
    let u = h.initial(vec![
        pod("p1", NODE, "10.2.0.5", "Running"),
        pod("p2", "node-b", "10.3.0.5", "Running"),
    ]);
    assert_eq!(u.pods.len(), 1);
    let p1 = u.pods[0].new.clone().unwrap();
    assert_eq!(&*p1.service_account, "sa");
    assert!(p1.holds_ips());
    let u = h.apply(pod("p1", NODE, "10.2.0.5", "Succeeded")).unwrap();
    assert!(
        !u.pods[0].new.as_ref().unwrap().holds_ips(),
        "finished pods give their IP back"
    );
    let u = h.delete(pod("p1", NODE, "10.2.0.5", "Succeeded")).unwrap();
    assert!(u.pods[0].new.is_none());
}

#[test]
fn trigger_times_before_start_are_ignored() {
    let mut h = Harness::new();
    h.initial(vec![cluster_ip("svc", "10.96.5.1")]);
    let with_trigger = |t: &str, ip: &str| {
        Object::EndpointSlice(obj(json!({
            "metadata": {"namespace": "ns", "name": "s", "labels": {"kubernetes.io/service-name": "svc"},
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": t}},
            "addressType": "IPv4", "ports": [{"name": "", "port": 80}], "endpoints": [ep(ip)],
        })))
    };
    let u = h
        .apply(with_trigger("2001-01-01T00:00:00Z", "10.0.0.1"))
        .unwrap();
    assert!(u.trigger_times.is_empty(), "older than the tracker");
    let future = crate::telemetry::format_utc(
        std::time::SystemTime::now() + std::time::Duration::from_secs(5),
    );
    let u = h.apply(with_trigger(&future, "10.0.0.3")).unwrap();
    assert_eq!(u.trigger_times.len(), 1);
}

#[test]
fn rfc3339_parsing() {
    use super::ingest::parse_rfc3339;
    let t = parse_rfc3339("2026-11-24T03:42:53Z").unwrap();
    assert_eq!(crate::telemetry::format_utc(t), "2026-11-24T03:42:53Z");
    let t = parse_rfc3339("2026-11-24T05:42:53.5+02:00").unwrap();
    assert_eq!(crate::telemetry::format_utc(t), "2026-11-24T03:42:53Z");
    assert!(parse_rfc3339("2026-13-24T03:42:53Z").is_none());
    assert!(parse_rfc3339("yesterday").is_none());
}

fn service_cidr(name: &str, cidrs: Value) -> Object {
    Object::ServiceCidr(obj(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": name}, "spec": {"cidrs": cidrs},
    })))
}

fn cidrs(u: &Update) -> Option<Vec<String>> {
    u.service_cidrs
        .as_ref()
        .map(|c| c.iter().map(ToString::to_string).collect())
}

#[test]
fn service_cidrs_are_merged_sorted_and_reported_when_they_change() {
    let mut h = Harness::new();
    // Always on the initial update (empty when the cluster has none).
    assert_eq!(cidrs(&h.initial(vec![])), Some(vec![]));
    let u = h
        .apply(service_cidr(
            "kubernetes",
            json!(["10.96.0.0/16", "fd00:96::/112"]),
        ))
        .expect("a new ServiceCIDR is an update");
    assert_eq!(
        cidrs(&u),
        Some(vec!["10.96.0.0/16".into(), "fd00:96::/112".into()])
    );
    assert!(u.services.is_empty());
    // A second object adds its prefixes; one both have is listed once. A prefix that does not
    // parse is skipped (counted as malformed), the rest of the object kept; host bits are
    // masked off.
    let u = h
        .apply(service_cidr(
            "extra",
            json!(["10.100.0.1/24", "10.96.0.0/16", "nonsense"]),
        ))
        .unwrap();
    assert_eq!(
        cidrs(&u),
        Some(vec![
            "10.96.0.0/16".into(),
            "10.100.0.0/24".into(),
            "fd00:96::/112".into()
        ])
    );
    assert!(
        h.metrics_text()
            .contains(r#"kind="ServiceCIDR",reason="invalid_ip""#),
        "{}",
        h.metrics_text()
    );
    assert_eq!(
        h.enls.snapshot().service_cidrs.len(),
        3,
        "`tollgate enls` shows them"
    );
    // The same prefixes again: no revision.
    assert!(
        h.apply(service_cidr(
            "extra",
            json!(["10.96.0.0/16", "10.100.0.0/24"])
        ))
        .is_none()
    );
    // Deleted, and gone from a re-list.
    let u = h.delete(service_cidr("extra", json!([]))).unwrap();
    assert_eq!(
        cidrs(&u),
        Some(vec!["10.96.0.0/16".into(), "fd00:96::/112".into()])
    );
    let u = h.relist(Kind::ServiceCidr, vec![]).unwrap();
    assert_eq!(cidrs(&u), Some(vec![]));
}
