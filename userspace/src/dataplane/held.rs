//! Held bits of the TCP reverse-record slots (`tg_tcpheld_v1`, see `sockrev`). Agents before
//! the bits marked a held slot by a non-zero cookie in `tg_tcpslot_v1` and emptied it at close.
//! When the bits are new but the slots were kept, every slot with a cookie is marked held here,
//! before the new programs run (they alone write the bits afterwards), so the open sockets keep
//! their records and give their slots back when they close.

use aya::maps::{Array, MapData};
use tollgate_common::lb::sockrev::{self, TcpRevSlot};

use super::{DataplaneError, PinLayout, stats::open_array as open};

/// Sets the bit of every slot holding a cookie; returns how many.
pub fn seed(pins: &PinLayout) -> Result<usize, DataplaneError> {
    let err = |name| move |source| DataplaneError::Map { name, source };
    let slots: Array<MapData, TcpRevSlot> = open(pins, sockrev::SLOT_NAME)?;
    let mut words = vec![0u64; sockrev::HELD_WORDS as usize];
    let mut held = 0;
    for (index, slot) in slots.iter().enumerate() {
        if slot.map_err(err(sockrev::SLOT_NAME))?.cookie != 0 {
            let (word, bit) = sockrev::held_bit(index as u32);
            words[word as usize] |= bit;
            held += 1;
        }
    }
    let mut bits: Array<MapData, u64> = open(pins, sockrev::HELD_NAME)?;
    for (word, value) in words.into_iter().enumerate() {
        if value != 0 {
            bits.set(word as u32, value, 0)
                .map_err(err(sockrev::HELD_NAME))?;
        }
    }
    Ok(held)
}

/// Is a slot held? (For the tests.)
pub fn is_held(pins: &PinLayout, slot: u32) -> Result<bool, DataplaneError> {
    let bits: Array<MapData, u64> = open(pins, sockrev::HELD_NAME)?;
    let (word, bit) = sockrev::held_bit(slot);
    let value = bits.get(&word, 0).map_err(|source| DataplaneError::Map {
        name: sockrev::HELD_NAME,
        source,
    })?;
    Ok(value & bit != 0)
}
