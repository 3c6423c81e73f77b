//! EBS I/O accounting: how many I/O operations a request counts as.
//!
//! SSD volumes count one I/O per 256 KiB: larger requests split (1 MiB = 4 I/Os) and
//! physically sequential small requests merge until they fill 256 KiB (8 sequential
//! 32 KiB = 1 I/O; 8 random 32 KiB = 8). HDD volumes count per 1 MiB: sequential requests
//! of at least 32 KiB merge up to 1 MiB; random requests or requests under 32 KiB each
//! take a whole 1 MiB I/O.

pub const SSD_IO_UNIT: u64 = 256 * 1024;
pub const HDD_IO_UNIT: u64 = 1024 * 1024;
/// HDD requests smaller than this never merge.
pub const HDD_MERGE_MINIMUM: u64 = 32 * 1024;

/// Tracks one stream (reads or writes) of one volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoAccountant {
    unit: u64,
    hdd: bool,
    /// Where the previous request ended.
    next_offset: Option<u64>,
    /// Bytes already in the current, partly filled I/O (0 = none open).
    open_bytes: u64,
}

impl IoAccountant {
    pub fn new(hdd: bool) -> Self {
        IoAccountant {
            unit: if hdd { HDD_IO_UNIT } else { SSD_IO_UNIT },
            hdd,
            next_offset: None,
            open_bytes: 0,
        }
    }

    pub fn unit(&self) -> u64 {
        self.unit
    }

    /// The number of new I/Os a request of `length` bytes at `offset` counts as.
    pub fn count(&mut self, offset: u64, length: u64) -> u64 {
        let mergeable = !self.hdd || length >= HDD_MERGE_MINIMUM;
        let sequential = self.next_offset == Some(offset);
        self.next_offset = offset.checked_add(length);
        if length == 0 {
            return 0;
        }
        if !mergeable {
            // HDD small request: a whole I/O of its own, and nothing merges into it.
            self.open_bytes = 0;
            return 1;
        }
        let mut remaining = length;
        if sequential && self.open_bytes > 0 {
            let room = self.unit - self.open_bytes;
            if remaining <= room {
                self.open_bytes += remaining;
                if self.open_bytes == self.unit {
                    self.open_bytes = 0;
                }
                return 0;
            }
            remaining -= room;
        }
        let ios = remaining.div_ceil(self.unit);
        self.open_bytes = remaining % self.unit;
        ios
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn total(accountant: &mut IoAccountant, requests: impl IntoIterator<Item = (u64, u64)>) -> u64 {
        requests
            .into_iter()
            .map(|(offset, length)| accountant.count(offset, length))
            .sum()
    }

    #[test]
    fn ssd_sequential_small_ios_merge_up_to_256k() {
        let mut ssd = IoAccountant::new(false);
        assert_eq!(total(&mut ssd, (0..8).map(|i| (i * 32 * KIB, 32 * KIB))), 1);
        // The next sequential 32 KiB starts a new I/O.
        assert_eq!(ssd.count(256 * KIB, 32 * KIB), 1);
        let mut ssd = IoAccountant::new(false);
        assert_eq!(
            total(&mut ssd, (0..8).map(|i| (i * 10 * 1024 * KIB, 32 * KIB))),
            8
        );
    }

    #[test]
    fn ssd_large_ios_split_per_256k() {
        let mut ssd = IoAccountant::new(false);
        assert_eq!(ssd.count(0, 1024 * KIB), 4);
        assert_eq!(ssd.count(10 * 1024 * KIB, 1024 * KIB + 1), 5);
        // A sequential request first fills the open I/O (1 byte used, 256K-1 room).
        assert_eq!(ssd.count(11 * 1024 * KIB + 1, 256 * KIB), 1);
    }

    #[test]
    fn hdd_merges_only_sequential_ios_of_32k_or_more() {
        let mut hdd = IoAccountant::new(true);
        assert_eq!(
            total(&mut hdd, (0..32).map(|i| (i * 32 * KIB, 32 * KIB))),
            1
        );
        let mut hdd = IoAccountant::new(true);
        assert_eq!(
            total(&mut hdd, (0..32).map(|i| (i * 16 * KIB, 16 * KIB))),
            32,
            "small I/Os never merge"
        );
        let mut hdd = IoAccountant::new(true);
        assert_eq!(
            total(&mut hdd, (0..4).map(|i| (i * 100 * 1024 * KIB, 64 * KIB))),
            4,
            "random I/Os each count"
        );
        assert_eq!(hdd.count(0, 3 * 1024 * KIB), 3);
    }
}
