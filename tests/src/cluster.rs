//! A Kubernetes cluster emulated in network namespaces.
//!
//! ```text
//!                       outside (br0 192.168.77.100, fd00:77::100)          cloud
//!                 ┌───────────┴─────────────┬───────────────────────┐    192.168.77.254
//!        node1 eth0 .11                node2 eth0 .12                └──  169.254.169.254
//!        pod CIDR 10.244.1.0/24        pod CIDR 10.244.2.0/24
//!        veth1 ── pod n1p1 10.244.1.11 veth1 ── pod n2p1 10.244.2.11
//!        veth2 ── pod n1p2 10.244.1.12 …
//! ```
//!
//! Routing is "host-gw": each node routes the other nodes' pod CIDRs via their uplink address,
//! and every node-side pod veth carries the pod gateway address (10.244.<n>.1 / fd00:244:<n>::1).
//! Each node has a cgroup (for the socket hooks) with a `host` child and one child per pod, and
//! a bpffs directory for its agent. Everything is removed on drop.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::{BgProcess, BpffsDir, Cgroup, Netns, Prefix, process::Placement};

/// LAN shared by the nodes' uplinks, the outside client and the cloud.
pub const LAN_V4_PREFIX: &str = "192.168.77";
pub const LAN_V6_PREFIX: &str = "fd00:77::";
pub const OUTSIDE_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 100);
pub const CLOUD_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 254);
pub const METADATA_V4: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Pods per node; its length is the number of nodes.
    pub pods_per_node: Vec<usize>,
    /// Create the "cloud" namespace owning 169.254.169.254.
    pub cloud: bool,
    /// Full checksums in every packet, as on a wire (transmit checksum offload off on the test
    /// bed's interfaces). Needed where native XDP retransmits frames between veths.
    pub wire_checksums: bool,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            pods_per_node: vec![2, 2],
            cloud: true,
            wire_checksums: false,
        }
    }
}

#[derive(Debug)]
pub struct Pod {
    /// Kubernetes-style name, e.g. `n1p2`.
    pub name: String,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    /// The node-side end of the pod's veth (in the node namespace).
    pub host_iface: String,
    /// The pod's cgroup (a child of its node's cgroup).
    pub cgroup: PathBuf,
}

#[derive(Debug)]
pub struct Node {
    /// Kubernetes node name, e.g. `node1`.
    pub name: String,
    pub index: u8,
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub pod_gateway: Ipv4Addr,
    pub pod_gateway6: Ipv6Addr,
    /// cgroup the node's socket hooks attach to (pods and host processes live below it).
    pub cgroup: PathBuf,
    /// cgroup for host (hostNetwork) processes of this node.
    pub host_cgroup: PathBuf,
    /// Pin directory for this node's agent (not created; the agent creates it).
    pub bpffs: PathBuf,
    pub pods: Vec<Pod>,
}

/// The whole emulated cluster. Field order is drop order: processes in the cgroups are killed
/// first, then pins are removed, then namespaces, then the owner record.
#[derive(Debug)]
pub struct Cluster {
    cgroup: Cgroup,
    bpffs: BpffsDir,
    pub nodes: Vec<Node>,
    pub outside: Netns,
    pub cloud: Option<Netns>,
    outside_cgroup: PathBuf,
    cloud_cgroup: PathBuf,
    workdir: WorkDir,
    pub prefix: Prefix,
}

/// A scratch directory (manifests, kubeconfigs) removed on drop.
#[derive(Debug)]
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Cluster {
    pub fn new(spec: &ClusterSpec) -> Self {
        crate::require_root();
        let prefix = Prefix::new();
        let mut cgroup = Cgroup::new_top(prefix.as_str());
        let bpffs = BpffsDir::new(prefix.as_str());
        let outside = Netns::new(&prefix.child("outside"));
        outside.ip(&["link", "add", "br0", "type", "bridge"]);
        outside.ip(&["addr", "add", &format!("{OUTSIDE_V4}/24"), "dev", "br0"]);
        outside.ip(&[
            "addr",
            "add",
            &format!("{LAN_V6_PREFIX}100/64"),
            "dev",
            "br0",
            "nodad",
        ]);
        outside.ip(&["link", "set", "br0", "up"]);

        let node_count = spec.pods_per_node.len();
        assert!((1..=50).contains(&node_count), "1..=50 nodes");
        let mut nodes = Vec::with_capacity(node_count);
        for (i, pods) in spec.pods_per_node.iter().enumerate() {
            let index = u8::try_from(i + 1).unwrap_or(u8::MAX);
            nodes.push(Self::make_node(
                &prefix,
                &mut cgroup,
                &bpffs,
                &outside,
                index,
                *pods,
            ));
        }
        // host-gw routes between nodes.
        for node in &nodes {
            for other in nodes.iter().filter(|o| o.index != node.index) {
                node.ns.ip(&[
                    "route",
                    "add",
                    &format!("10.244.{}.0/24", other.index),
                    "via",
                    &other.ip.to_string(),
                ]);
                node.ns.ip(&[
                    "-6",
                    "route",
                    "add",
                    &format!("fd00:244:{}::/64", other.index),
                    "via",
                    &other.ip6.to_string(),
                ]);
            }
        }

        // Like any real node, each has a default route (to the LAN's router, the outside
        // namespace, which does not forward): traffic to unknown destinations leaves the uplink.
        for node in &nodes {
            node.ns
                .ip(&["route", "add", "default", "via", &OUTSIDE_V4.to_string()]);
        }
        let cloud = spec.cloud.then(|| {
            let cloud = Netns::new(&prefix.child("cloud"));
            cloud.add_veth("eth0", "cloud", &outside);
            outside.ip(&["link", "set", "cloud", "master", "br0", "up"]);
            cloud.ip(&["addr", "add", &format!("{CLOUD_V4}/24"), "dev", "eth0"]);
            cloud.ip(&["addr", "add", &format!("{METADATA_V4}/32"), "dev", "lo"]);
            cloud.ip(&["link", "set", "eth0", "up"]);
            for node in &nodes {
                node.ns.ip(&[
                    "route",
                    "add",
                    &format!("{METADATA_V4}/32"),
                    "via",
                    &CLOUD_V4.to_string(),
                ]);
            }
            // Replies to pods come back through their node.
            for node in &nodes {
                cloud.ip(&[
                    "route",
                    "add",
                    &format!("10.244.{}.0/24", node.index),
                    "via",
                    &node.ip.to_string(),
                ]);
            }
            cloud
        });

        if spec.wire_checksums {
            let off = |ns: &Netns, iface: &str| {
                let mut c = Command::new("ethtool");
                c.args(["-K", iface, "tx", "off"]);
                let out = Placement::new(ns, None).output(c);
                assert!(
                    out.status.success(),
                    "ethtool -K {iface} tx off: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            off(&outside, "br0");
            for node in &nodes {
                off(&node.ns, "eth0");
                for pod in &node.pods {
                    off(&pod.ns, "eth0");
                }
            }
        }
        let outside_cgroup = cgroup.child("outside");
        let cloud_cgroup = cgroup.child("cloud");
        let workdir = std::env::temp_dir().join(prefix.as_str());
        std::fs::create_dir_all(&workdir)
            .unwrap_or_else(|e| panic!("creating {}: {e}", workdir.display()));
        let workdir = WorkDir(workdir);
        Self {
            cgroup,
            bpffs,
            nodes,
            outside,
            cloud,
            outside_cgroup,
            cloud_cgroup,
            workdir,
            prefix,
        }
    }

    fn make_node(
        prefix: &Prefix,
        cgroup: &mut Cgroup,
        bpffs: &BpffsDir,
        outside: &Netns,
        index: u8,
        pods: usize,
    ) -> Node {
        let name = format!("node{index}");
        let ns = Netns::new(&prefix.child(&name));
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.default.accept_dad", "0"),
        ] {
            ns.sysctl(key, value);
        }
        let peer = format!("n{index}");
        ns.add_veth("eth0", &peer, outside);
        outside.ip(&["link", "set", &peer, "master", "br0", "up"]);
        // A veth only takes frames an XDP program transmits (XDP_TX) when its peer runs NAPI;
        // GRO turns that on (physical NICs need nothing of the kind).
        let mut gro = Command::new("ethtool");
        gro.args(["-K", &peer, "gro", "on"]);
        let out = Placement::new(outside, None).output(gro);
        assert!(
            out.status.success(),
            "ethtool -K {peer} gro on: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ip = Ipv4Addr::new(192, 168, 77, 10 + index);
        let ip6: Ipv6Addr = format!("{LAN_V6_PREFIX}{}", 10 + u16::from(index))
            .parse()
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        ns.ip(&["addr", "add", &format!("{ip6}/64"), "dev", "eth0", "nodad"]);
        ns.ip(&["link", "set", "eth0", "up"]);

        let node_cgroup = cgroup.child(&name);
        let host_cgroup = cgroup.child(&format!("{name}/host"));
        let pod_gateway = Ipv4Addr::new(10, 244, index, 1);
        let pod_gateway6: Ipv6Addr = format!("fd00:244:{index}::1")
            .parse()
            .unwrap_or(Ipv6Addr::UNSPECIFIED);
        let mut node_pods = Vec::with_capacity(pods);
        for j in 1..=pods {
            let j8 = u8::try_from(j).unwrap_or(u8::MAX);
            let pod_name = format!("n{index}p{j}");
            let pod_ns = Netns::new(&prefix.child(&pod_name));
            pod_ns.sysctl("net.ipv6.conf.default.accept_dad", "0");
            let host_iface = format!("veth{j}");
            pod_ns.add_veth("eth0", &host_iface, &ns);
            let pod_ip = Ipv4Addr::new(10, 244, index, 10 + j8);
            let pod_ip6: Ipv6Addr = format!("fd00:244:{index}::{}", 10 + j)
                .parse()
                .unwrap_or(Ipv6Addr::UNSPECIFIED);
            pod_ns.ip(&["addr", "add", &format!("{pod_ip}/32"), "dev", "eth0"]);
            pod_ns.ip(&[
                "addr",
                "add",
                &format!("{pod_ip6}/128"),
                "dev",
                "eth0",
                "nodad",
            ]);
            pod_ns.ip(&["link", "set", "eth0", "up"]);
            ns.ip(&[
                "addr",
                "add",
                &format!("{pod_gateway}/32"),
                "dev",
                &host_iface,
            ]);
            ns.ip(&[
                "addr",
                "add",
                &format!("{pod_gateway6}/128"),
                "dev",
                &host_iface,
                "nodad",
            ]);
            ns.ip(&["link", "set", &host_iface, "up"]);
            ns.ip(&["route", "add", &format!("{pod_ip}/32"), "dev", &host_iface]);
            ns.ip(&[
                "-6",
                "route",
                "add",
                &format!("{pod_ip6}/128"),
                "dev",
                &host_iface,
            ]);
            pod_ns.ip(&["route", "add", &pod_gateway.to_string(), "dev", "eth0"]);
            pod_ns.ip(&["route", "add", "default", "via", &pod_gateway.to_string()]);
            pod_ns.ip(&[
                "-6",
                "route",
                "add",
                &pod_gateway6.to_string(),
                "dev",
                "eth0",
            ]);
            pod_ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                &pod_gateway6.to_string(),
            ]);
            let pod_cgroup = cgroup.child(&format!("{name}/{pod_name}"));
            node_pods.push(Pod {
                name: pod_name,
                ns: pod_ns,
                ip: pod_ip,
                ip6: pod_ip6,
                host_iface,
                cgroup: pod_cgroup,
            });
        }
        Node {
            bpffs: bpffs.join(&name),
            name,
            index,
            ns,
            ip,
            ip6,
            pod_gateway,
            pod_gateway6,
            cgroup: node_cgroup,
            host_cgroup,
            pods: node_pods,
        }
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.nodes
            .iter()
            .flat_map(|n| &n.pods)
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The bpffs directory holding every node's pin directory.
    pub fn bpffs_root(&self) -> &Path {
        self.bpffs.path()
    }

    /// The cgroup all test-bed processes of this cluster live under.
    pub fn cgroup_root(&self) -> &Path {
        self.cgroup.path()
    }

    pub fn cloud(&self) -> &Netns {
        self.cloud
            .as_ref()
            .unwrap_or_else(|| panic!("this cluster was built without the cloud namespace"))
    }

    /// A scratch directory owned by the cluster (removed with it).
    pub fn workdir(&self) -> &Path {
        &self.workdir.0
    }

    /// Node and Pod objects describing the test bed itself (pods in namespace `default`,
    /// service account `default`).
    pub fn base_objects(&self) -> Vec<serde_json::Value> {
        let mut objs = Vec::new();
        for node in &self.nodes {
            let zone = format!("zone-{}", node.index);
            let mut n = crate::k8s::node(&node.name, &node.ip.to_string(), Some(&zone));
            if let Some(addrs) = n
                .pointer_mut("/status/addresses")
                .and_then(|a| a.as_array_mut())
            {
                addrs.push(
                    serde_json::json!({"type": "InternalIP", "address": node.ip6.to_string()}),
                );
            }
            objs.push(n);
            for pod in &node.pods {
                let mut p = crate::k8s::pod(
                    "default",
                    &pod.name,
                    &node.name,
                    &pod.ip.to_string(),
                    "default",
                );
                p["status"]["podIPs"] =
                    serde_json::json!([{"ip": pod.ip.to_string()}, {"ip": pod.ip6.to_string()}]);
                objs.push(p);
            }
        }
        objs
    }

    /// Writes the test bed's own objects plus `extra` as a manifest (atomically replacing an
    /// earlier one, as a file source expects) and returns `file:<path>` for `--source`.
    pub fn write_manifest(&self, extra: &[serde_json::Value]) -> String {
        let path = self.workdir().join("cluster.yaml");
        let text = self
            .base_objects()
            .iter()
            .chain(extra)
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("\n---\n");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("replacing {}: {e}", path.display()));
        format!("file:{}", path.display())
    }

    /// Writes exactly `objects` (the caller includes the test bed's own, e.g. edited copies of
    /// [`Cluster::base_objects`]) and returns `file:<path>`.
    pub fn write_objects(&self, objects: &[serde_json::Value]) -> String {
        let path = self.workdir().join("cluster.yaml");
        let text = objects
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("\n---\n");
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("replacing {}: {e}", path.display()));
        format!("file:{}", path.display())
    }

    /// Like [`Cluster::write_manifest`], with `extra` given as manifest text (YAML or JSON
    /// documents) appended as it is.
    pub fn write_manifest_text(&self, extra: &str) -> String {
        let path = self.workdir().join("cluster.yaml");
        let mut text = self
            .base_objects()
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join("\n---\n");
        text.push_str("\n---\n");
        text.push_str(extra);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("writing {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("replacing {}: {e}", path.display()));
        format!("file:{}", path.display())
    }

    /// Where the outside client runs (the LAN, not a node).
    pub fn outside(&self) -> Placement<'_> {
        Placement::new(&self.outside, Some(&self.outside_cgroup))
    }

    /// Where cloud services (the metadata-server double) run.
    pub fn cloud_placement(&self) -> Placement<'_> {
        Placement::new(self.cloud(), Some(&self.cloud_cgroup))
    }

    /// Starts a process in the outside namespace.
    pub fn spawn_outside(&self, name: &str, cmd: Command) -> BgProcess {
        BgProcess::spawn(
            &format!("{}-{name}", self.outside.name()),
            self.outside(),
            cmd,
        )
    }

    /// Starts a process in the cloud namespace.
    pub fn spawn_cloud(&self, name: &str, cmd: Command) -> BgProcess {
        BgProcess::spawn(
            &format!("{}-{name}", self.cloud().name()),
            self.cloud_placement(),
            cmd,
        )
    }
}

impl Node {
    /// Where host (hostNetwork) processes of this node run.
    pub fn host(&self) -> Placement<'_> {
        Placement::new(&self.ns, Some(&self.host_cgroup))
    }

    /// Starts a host process on this node.
    pub fn spawn(&self, name: &str, cmd: Command) -> BgProcess {
        BgProcess::spawn(&format!("{}-{name}", self.ns.name()), self.host(), cmd)
    }

    /// Runs a host process on this node to completion.
    pub fn output(&self, cmd: Command) -> Output {
        self.host().output(cmd)
    }
}

impl Pod {
    pub fn placement(&self) -> Placement<'_> {
        Placement::new(&self.ns, Some(&self.cgroup))
    }

    pub fn spawn(&self, name: &str, cmd: Command) -> BgProcess {
        BgProcess::spawn(&format!("{}-{name}", self.ns.name()), self.placement(), cmd)
    }

    pub fn output(&self, cmd: Command) -> Output {
        self.placement().output(cmd)
    }
}
