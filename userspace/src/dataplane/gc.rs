//! Removing flows and affinities that outlived their backend: UDP flows (kube-proxy's conntrack
//! clean-up), unconnected-UDP socket choices and ClientIP affinities whose backend stopped
//! serving the service port, and (with `terminate_in`) the connected UDP sockets still sent to
//! it (see `sockterm`). TCP flows are left alone: a terminating endpoint keeps serving its
//! established connections, and a deleted one's flows end on their own (LRU eviction).

use std::{collections::HashSet, path::Path};

use aya::{
    Pod,
    maps::{HashMap, MapData},
};
use tollgate_common::lb::PROTO_UDP;

use super::{lbmaps::LbMaps, sockterm, writer::Purge};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PurgeStats {
    pub flows: usize,
    pub affinities: usize,
    pub sockets: usize,
    /// Connected UDP sockets destroyed, and failures to look at or destroy them.
    pub terminated: sockterm::TermStats,
}

/// Purges what `purge` names; `terminate_in`: the socket hooks' cgroup, whose processes'
/// connected UDP sockets to departed backends are destroyed (`None`: left alone).
pub fn purge(maps: &mut LbMaps, purge: &Purge, terminate_in: Option<&Path>) -> PurgeStats {
    let pairs: HashSet<(u32, u32)> = purge.pairs.iter().copied().collect();
    let gone: HashSet<u32> = purge.backends.iter().copied().collect();
    let gone_services: HashSet<u32> = purge.services.iter().copied().collect();
    let stale = |service: u32, backend: u32| {
        gone.contains(&backend)
            || gone_services.contains(&service)
            || pairs.contains(&(service, backend))
    };
    let mut stats = PurgeStats::default();
    if let Some(cgroup) = terminate_in
        && !purge.udp_peers.is_empty()
    {
        stats.terminated = sockterm::terminate(cgroup, &mut maps.sockrev, &purge.udp_peers);
    }
    if pairs.is_empty() && gone.is_empty() && gone_services.is_empty() {
        return stats;
    }
    stats.flows = remove_where(&mut maps.ct, |k, v| {
        k.proto == PROTO_UDP && stale(v.service_id, v.backend_id)
    });
    stats.affinities = remove_where(&mut maps.affinity, |k, v| stale(k.service_id, v.backend_id));
    stats.sockets = remove_where(&mut maps.sockct, |_, v| stale(v.service_id, v.backend_id));
    stats
}

/// Removes the entries whose key `stale` picks, without reading values (a Maglev table is
/// 16 KiB); returns how many went.
pub(super) fn remove_keys_where<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    stale: impl Fn(&K) -> bool,
) -> usize {
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| stale(k))
        .collect();
    keys.iter().filter(|k| map.remove(k).is_ok()).count()
}

/// Removes the entries `stale` picks; returns how many went.
fn remove_where<K: Pod, V: Pod>(
    map: &mut HashMap<MapData, K, V>,
    stale: impl Fn(&K, &V) -> bool,
) -> usize {
    let keys: Vec<K> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| stale(k, v))
        .map(|(k, _)| k)
        .collect();
    keys.iter().filter(|k| map.remove(k).is_ok()).count()
}
