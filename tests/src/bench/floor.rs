//! The dataplane benchmark's floor: Tollgate's hooks on a node with programs that return at
//! once (`tollgate-floor`), attached as the agent attaches its own (cgroup links on the node's
//! cgroup, TCX on the pod interfaces and the uplink; no XDP, which the agent leaves off virtual
//! interfaces). Traffic through it pays the kernel's hooks and nothing else.

use std::fs::File;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, LinkOrder, Program, SchedClassifier, TcAttachType, tc::TcAttachOptions,
    },
};
use tollgate::dataplane::{object::FLOOR_OBJECT, programs};

use crate::Node;

/// The attached floor programs; dropping it detaches them (their links are not pinned).
pub struct Floor {
    _ebpf: Ebpf,
}

impl Floor {
    /// Attaches the floor to `node`: its cgroup, every pod's host-side interface and `eth0`.
    pub fn attach(node: &Node) -> anyhow::Result<Self> {
        let ebpf = node.ns.run_in(|| attach_in_netns(node))?;
        Ok(Self { _ebpf: ebpf })
    }
}

fn attach_in_netns(node: &Node) -> anyhow::Result<Ebpf> {
    let mut ebpf = Ebpf::load(FLOOR_OBJECT).context("loading the floor object")?;
    let cgroup = File::open(&node.cgroup)
        .with_context(|| format!("opening cgroup {}", node.cgroup.display()))?;
    for name in programs::SOCK.into_iter().chain([programs::SOCK_RELEASE]) {
        let attached = match ebpf.program_mut(name) {
            Some(Program::CgroupSockAddr(p)) => p
                .load()
                .and_then(|()| p.attach(&cgroup, CgroupAttachMode::Single).map(drop)),
            Some(Program::CgroupSock(p)) => p
                .load()
                .and_then(|()| p.attach(&cgroup, CgroupAttachMode::Single).map(drop)),
            _ => bail!("{name} is not a cgroup program of the floor object"),
        };
        attached.with_context(|| format!("attaching {name} to {}", node.cgroup.display()))?;
    }
    let mut tc = vec![
        (programs::TC_INGRESS, "eth0", TcAttachType::Ingress),
        (programs::TC_EGRESS, "eth0", TcAttachType::Egress),
    ];
    tc.extend(node.pods.iter().map(|pod| {
        (
            programs::TC_FROM_POD,
            pod.host_iface.as_str(),
            TcAttachType::Ingress,
        )
    }));
    for name in [
        programs::TC_INGRESS,
        programs::TC_EGRESS,
        programs::TC_FROM_POD,
    ] {
        classifier(&mut ebpf, name)?
            .load()
            .with_context(|| format!("loading {name}"))?;
    }
    for (name, iface, direction) in tc {
        classifier(&mut ebpf, name)?
            .attach_with_options(
                iface,
                direction,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .with_context(|| format!("attaching {name} to {iface}"))?;
    }
    Ok(ebpf)
}

fn classifier<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("{name} is missing from the floor object"))?
        .try_into()
        .with_context(|| format!("{name} is not a classifier"))
}
