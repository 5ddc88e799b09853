//! Builders for the Kubernetes objects tests, the demo and the benchmarks feed to Tollgate.

use serde_json::{Value, json};

/// A ClusterIP service with one TCP port per `(name, port)`.
pub fn service(ns: &str, name: &str, cluster_ip: &str, ports: &[(&str, u16)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": ns, "name": name},
        "spec": {"type": "ClusterIP", "clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "ports": ports},
    })
}

/// An endpoint: ready, on `node`.
pub fn endpoint(ip: &str, node: &str) -> Value {
    json!({"addresses": [ip], "nodeName": node, "conditions": {"ready": true, "serving": true, "terminating": false}})
}

/// An EndpointSlice of `service` with one port `(name, port)` per entry.
pub fn slice(
    ns: &str,
    name: &str,
    service: &str,
    ports: &[(&str, u16)],
    endpoints: Vec<Value>,
) -> Value {
    let family = endpoints
        .first()
        .and_then(|e| e.pointer("/addresses/0"))
        .and_then(Value::as_str)
        .map(|ip| if ip.contains(':') { "IPv6" } else { "IPv4" })
        .unwrap_or("IPv4");
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "port": p, "protocol": "TCP"}))
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"namespace": ns, "name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": family, "ports": ports, "endpoints": endpoints,
    })
}

/// A ServiceCIDR object (`networking.k8s.io/v1`, cluster-scoped) with these prefixes.
pub fn service_cidr(name: &str, cidrs: &[&str]) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR",
        "metadata": {"name": name}, "spec": {"cidrs": cidrs}})
}

pub fn node(name: &str, internal_ip: &str, zone: Option<&str>) -> Value {
    let labels = match zone {
        Some(z) => json!({"topology.kubernetes.io/zone": z, "kubernetes.io/hostname": name}),
        None => json!({"kubernetes.io/hostname": name}),
    };
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "status": {"addresses": [{"type": "InternalIP", "address": internal_ip}, {"type": "Hostname", "address": name}]},
    })
}

pub fn pod(ns: &str, name: &str, node: &str, ip: &str, service_account: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": ns, "name": name, "uid": format!("uid-{ns}-{name}")},
        "spec": {"nodeName": node, "serviceAccountName": service_account, "containers": [{"name": "c", "image": "x"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    })
}

/// Sets a label on an object.
pub fn with_label(mut obj: Value, key: &str, value: &str) -> Value {
    let meta = &mut obj["metadata"];
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][key] = value.into();
    obj
}

/// Sets an annotation on an object.
pub fn with_annotation(mut obj: Value, key: &str, value: &str) -> Value {
    let meta = &mut obj["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][key] = value.into();
    obj
}
