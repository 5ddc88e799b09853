//! Conntrack marks (`tg_ctmark_v1`): the programs set the slot of every address a conntrack
//! tuple from a pod can start with, before inserting the flow's entries, and skip the
//! conntrack lookup for pod packets from unmarked addresses. When the marks map is new but the
//! conntrack map was kept (an agent from before the marks existed, or the marks pin removed by
//! hand), the flows already there are marked here, so none of them loses its translation.

use std::collections::BTreeSet;

use aya::maps::{Array, HashMap, MapData};
use tollgate_common::lb::{
    ct::{self, CtEntry, CtKey},
    ctmark::{self, Mark},
};

use super::{DataplaneError, PinLayout, stats::open_pinned};

fn open_marks(pins: &PinLayout) -> Result<Array<MapData, Mark>, DataplaneError> {
    let name = ctmark::NAME;
    Array::try_from(open_pinned(pins, name)?).map_err(|source| DataplaneError::Map { name, source })
}

/// Marks the source of every conntrack entry; returns how many slots were newly set.
pub fn seed(pins: &PinLayout) -> Result<usize, DataplaneError> {
    let ct: HashMap<MapData, CtKey, CtEntry> = HashMap::try_from(open_pinned(pins, ct::NAME)?)
        .map_err(|source| DataplaneError::Map {
            name: ct::NAME,
            source,
        })?;
    let slots: BTreeSet<u32> = ct
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
