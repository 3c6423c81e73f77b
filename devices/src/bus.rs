//! Address-range dispatch for port I/O and MMIO exits.
//!
//! vm-device is unmaintained, so the bus is written here. A bus maps
//! non-overlapping `[base, base + len)` ranges to devices; a vCPU exit is
//! routed to the device whose range holds the address, with the offset from
//! the range's base. Lookups take a read lock only, so vCPUs on different
//! devices do not serialise on the bus itself.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

/// A device reachable through a [`Bus`].
///
/// `offset` is relative to the base of the range the device was inserted at,
/// so one device type works at any address.
pub trait BusDevice: Send {
    /// Guest read of `data.len()` bytes at `offset`. Fill `data`.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Guest write of `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors from building a bus.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
    #[error("bus range at {base:#x} has zero length or wraps around")]
    InvalidRange { base: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Range {
    base: u64,
    len: u64,
}

impl Range {
    fn last(&self) -> u64 {
        // Checked at insertion: base + len - 1 never overflows.
        self.base + (self.len - 1)
    }
}

/// Shared handle to a device on a bus.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of address ranges, each owned by one device.
#[derive(Default, Clone)]
pub struct Bus {
    devices: Arc<RwLock<BTreeMap<u64, (Range, SharedDevice)>>>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Map `[base, base + len)` to `device`.
    pub fn insert(&self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base });
        }
        let new = Range { base, len };
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        // The closest range starting at or below our last byte is the only
        // one that can overlap, because ranges in the map never overlap.
        if let Some((_, (r, _))) = map.range(..=new.last()).next_back() {
            if r.last() >= base {
                return Err(BusError::Overlap { base, len });
            }
        }
        map.insert(base, (new, device));
        Ok(())
    }

    /// Remove the device mapped at exactly `base`.
    pub fn remove(&self, base: u64) -> Option<SharedDevice> {
        let mut map = self.devices.write().unwrap_or_else(|e| e.into_inner());
        map.remove(&base).map(|(_, d)| d)
    }

    fn resolve(&self, addr: u64, len: usize) -> Option<(u64, SharedDevice)> {
        let map = self.devices.read().unwrap_or_else(|e| e.into_inner());
        let (_, (range, dev)) = map.range(..=addr).next_back()?;
        let end = addr.checked_add(len.max(1) as u64 - 1)?;
        if end > range.last() {
            // An access that straddles the end of a device is not routed.
            return None;
        }
        Some((addr - range.base, Arc::clone(dev)))
    }

    /// Route a read. Returns false when no device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Route a write. Returns false when no device claims the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, dev)) => {
                dev.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write(offset, data);
                true
            }
            None => false,
        }
    }

    /// Number of mapped ranges.
    pub fn len(&self) -> usize {
        self.devices.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = (offset as u8).wrapping_add(i as u8);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let bus = Bus::new();
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x400, 0x10).unwrap();
        assert!(bus.write(0x3fa, &[7]));
        assert!(bus.write(0x40f, &[9]));
        assert!(
            !bus.write(0x400 + 0x10, &[1]),
            "one past the end is unclaimed"
        );
        assert!(!bus.write(0x3f7, &[1]));
        assert_eq!(a.lock().unwrap().writes, vec![(2, vec![7])]);
        assert_eq!(b.lock().unwrap().writes, vec![(0xf, vec![9])]);
        let mut data = [0u8; 2];
        assert!(bus.read(0x3fc, &mut data));
        assert_eq!(data, [4, 5]);
    }

    #[test]
    fn refuses_overlaps_and_bad_ranges() {
        let bus = Bus::new();
        let d = || -> SharedDevice { Arc::new(Mutex::new(Recorder::default())) };
        bus.insert(d(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(d(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(d(), 0xf8, 0x9),
            Err(BusError::Overlap { base: 0xf8, len: 9 })
        );
        assert!(bus.insert(d(), 0xf8, 0x8).is_ok());
        assert!(bus.insert(d(), 0x110, 0x8).is_ok());
        assert_eq!(
            bus.insert(d(), 0x0, 0),
            Err(BusError::InvalidRange { base: 0 })
        );
        assert_eq!(
            bus.insert(d(), u64::MAX, 2),
            Err(BusError::InvalidRange { base: u64::MAX })
        );
        assert!(bus.insert(d(), u64::MAX, 1).is_ok());
        assert_eq!(bus.len(), 4);
    }

    #[test]
    fn straddling_access_is_unclaimed() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x10, 4)
            .unwrap();
        let mut data = [0u8; 4];
        assert!(bus.read(0x10, &mut data));
        assert!(!bus.read(0x11, &mut data));
    }

    #[test]
    fn remove_unmaps() {
        let bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x10, 4)
            .unwrap();
        assert!(bus.remove(0x10).is_some());
        assert!(!bus.write(0x10, &[0]));
        assert!(bus.is_empty());
    }
}
