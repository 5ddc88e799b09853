//! Reading the per-CPU counters back (for `/metrics` and `tollgate maps`).

use aya::maps::{Map, MapData, PerCpuHashMap};
use tollgate_common::iface_stats::{self, IfaceStats, IfaceStatsKey};

use super::{DataplaneError, PinLayout};

/// One interface × hook row, summed over CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IfaceStatsRow {
    pub ifindex: u32,
    pub hook: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

/// Opens a pinned map by name from the pin directory.
pub(crate) fn open_pinned(pins: &PinLayout, name: &'static str) -> Result<Map, DataplaneError> {
    let data =
        MapData::from_pin(pins.map(name)).map_err(|source| DataplaneError::Map { name, source })?;
    Map::from_map_data(data).map_err(|source| DataplaneError::Map { name, source })
}

/// Opens a pinned map by name as the typed handle `T`.
pub(crate) fn typed<T>(pins: &PinLayout, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(open_pinned(pins, name)?).map_err(|source| DataplaneError::Map { name, source })
}

/// Opens a pinned array map by name from the pin directory.
pub(crate) fn open_array<V: aya::Pod>(
    pins: &PinLayout,
    name: &'static str,
) -> Result<aya::maps::Array<MapData, V>, DataplaneError> {
    aya::maps::Array::try_from(open_pinned(pins, name)?)
        .map_err(|source| DataplaneError::Map { name, source })
}

/// Every interface counter, summed over CPUs, sorted by interface then hook.
pub fn iface_stats(pins: &PinLayout) -> Result<Vec<IfaceStatsRow>, DataplaneError> {
    let name = iface_stats::NAME;
    let map = open_pinned(pins, name)?;
    let map: PerCpuHashMap<_, IfaceStatsKey, IfaceStats> =
        PerCpuHashMap::try_from(map).map_err(|source| DataplaneError::Map { name, source })?;
    let mut rows = Vec::new();
    for entry in map.iter() {
        let (key, per_cpu) = entry.map_err(|source| DataplaneError::Map { name, source })?;
        let (packets, bytes) = per_cpu
            .iter()
            .fold((0u64, 0u64), |(p, b), v| (p + v.packets, b + v.bytes));
        rows.push(IfaceStatsRow {
            ifindex: key.ifindex,
            hook: iface_stats::hook::name(key.hook),
            packets,
            bytes,
        });
    }
    rows.sort_by_key(|r| (r.ifindex, r.hook));
    Ok(rows)
}
