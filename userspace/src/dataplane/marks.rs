//! The filters in front of the conntrack lookup, seeded when their map is new but the maps
//! they stand for were kept (an agent from before them, or a pin removed by hand), so no flow
//! loses its translation.
//!
//! - Conntrack marks (`tg_ctmark_v1`): the programs set the slot of every address a conntrack
//!   tuple can start with (backends, and pods that reached a frontend themselves) before
//!   inserting the flow's entries; the flows already there are marked here.
//! - The frontend-port filter (`tg_feport_v1`): the writer sets a frontend's port before it
//!   writes the frontend; the kept frontends' ports and the destination ports of kept forward
//!   flows (whose frontend may be gone) are set here.

use std::collections::BTreeSet;

use aya::maps::{Array, MapData};
use tollgate_common::lb::{
    ct_dir,
    ctmark::{self, Mark},
    feport,
};

use super::{DataplaneError, PinLayout, lbmaps::LbMaps, stats::open_array};

fn open_marks(pins: &PinLayout) -> Result<Array<MapData, Mark>, DataplaneError> {
    open_array(pins, ctmark::NAME)
}

/// Marks the source of every conntrack entry; returns how many slots were newly set.
pub fn seed(pins: &PinLayout) -> Result<usize, DataplaneError> {
    let slots: BTreeSet<u32> = LbMaps::open(pins)?
        .ct
        .keys()
        .filter_map(Result::ok)
        .map(|k| ctmark::slot(&k.saddr))
        .collect();
    let name = ctmark::NAME;
    let mut marks = open_marks(pins)?;
    let mut set = 0;
    for slot in slots {
        let current = marks
            .get(&slot, 0)
            .map_err(|source| DataplaneError::Map { name, source })?;
        if current.flows == 0 {
            // A whole-value store of the same constant the programs store: nothing to race.
            marks
                .set(slot, Mark { flows: 1 }, 0)
                .map_err(|source| DataplaneError::Map { name, source })?;
            set += 1;
        }
    }
    Ok(set)
}

/// Is the address's slot set? (What the pod-side program checks; used by the packet tests.)
pub fn is_marked(pins: &PinLayout, addr: &[u32; 4]) -> Result<bool, DataplaneError> {
    let name = ctmark::NAME;
    let m = open_marks(pins)?
        .get(&ctmark::slot(addr), 0)
        .map_err(|source| DataplaneError::Map { name, source })?;
    Ok(m.flows != 0)
}

/// Sets the frontend-port filter from the frontends in `tg_svc_v1` and the forward entries in
/// `tg_ct_v2`; returns how many distinct ports it holds for them.
pub fn seed_frontend_ports(pins: &PinLayout) -> Result<usize, DataplaneError> {
    let mut maps = LbMaps::open(pins)?;
    let mut ports: BTreeSet<u16> = maps
        .svc
        .keys()
        .filter_map(Result::ok)
        .map(|k| k.port)
        .collect();
    ports.extend(
        maps.ct
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.dir == ct_dir::FORWARD)
            .map(|(k, _)| k.dport),
    );
    let name = feport::NAME;
    for &port in &ports {
        maps.fe_ports
            .allow(port)
            .map_err(|source| DataplaneError::Map { name, source })?;
    }
    Ok(ports.len())
}

/// Is the port (network order) in the frontend-port filter? (For the packet tests.)
pub fn is_frontend_port(pins: &PinLayout, port_be: u16) -> Result<bool, DataplaneError> {
    let name = feport::NAME;
    LbMaps::open(pins)?
        .fe_ports
        .allows(port_be)
        .map_err(|source| DataplaneError::Map { name, source })
}
