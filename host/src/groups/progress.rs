//! A group's durable progress, one record written per persist: how far it has read the
//! log, and which of the events read are not settled yet (with their delivery counts).
//! After a crash the group starts again from exactly this: the unsettled events are
//! delivered again, nothing settled is.
//!
//! Encoding: a version byte, then varints: `scanned_to`, `delivered`, `acked`, the number
//! of unsettled events, and for each the distance from the previous position and its
//! deliveries. A few bytes per unsettled event, however far the log has grown.

use crate::store::GlobalPosition;

const VERSION: u8 = 1;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Every position below this has been looked at.
    pub scanned_to: GlobalPosition,
    pub delivered: u64,
    pub acked: u64,
    /// Unsettled events: position and deliveries so far, in position order.
    pub pending: Vec<(GlobalPosition, u32)>,
}

impl Progress {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.pending.len() * 3);
        out.push(VERSION);
        for value in [
            self.scanned_to,
            self.delivered,
            self.acked,
            self.pending.len() as u64,
        ] {
            put_varint(&mut out, value);
        }
        let mut previous = 0;
        for &(position, deliveries) in &self.pending {
            put_varint(&mut out, position - previous);
            put_varint(&mut out, u64::from(deliveries));
            previous = position;
        }
        out
    }

    /// # Errors
    /// A record this version does not read, or a damaged one.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let (&version, mut rest) = bytes.split_first().ok_or("an empty progress record")?;
        if version != VERSION {
            return Err(format!("progress record version {version} is not known"));
        }
        let mut next = || take_varint(&mut rest).ok_or("a truncated progress record");
        let scanned_to = next()?;
        let delivered = next()?;
        let acked = next()?;
        let count = next()?;
        let mut pending = Vec::with_capacity(count.min(1 << 20) as usize);
        let mut position = 0u64;
        for _ in 0..count {
            position = position
                .checked_add(next()?)
                .ok_or("a progress record whose positions overflow")?;
            let deliveries = u32::try_from(next()?).map_err(|_| "a delivery count too large")?;
            pending.push((position, deliveries));
        }
        Ok(Self {
            scanned_to,
            delivered,
            acked,
            pending,
        })
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips_and_refuses_damage() {
        let progress = Progress {
            scanned_to: 1_000_000_007,
            delivered: 42,
            acked: 40,
            pending: vec![(3, 1), (4, 0), (900_000, 12), (1_000_000_006, 1)],
        };
        let bytes = progress.encode();
        assert_eq!(Progress::decode(&bytes).unwrap(), progress);
        assert!(Progress::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(Progress::decode(&[]).is_err());
        assert!(Progress::decode(&[9]).is_err());
    }
}
