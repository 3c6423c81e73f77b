//! Boot-timer port: the guest writes any byte to it when it reaches a point
//! of interest (our initramfs does it first thing in /init); the VMM logs the
//! time since its own start. This is what the boot benchmark reads.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::bus::BusDevice;

/// I/O port the guest writes to (one byte, free on the PC map).
pub const BOOT_TIMER_PORT: u16 = 0x3f0;

pub struct BootTimer {
    start: Instant,
    /// Microseconds from VMM start to the last guest write (0 = never).
    last_us: Arc<AtomicU64>,
}

impl BootTimer {
    pub fn new(start: Instant) -> Self {
        Self {
            start,
            last_us: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Shared reading of the last recorded time, in microseconds.
    pub fn reading(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.last_us)
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let us = self.start.elapsed().as_micros() as u64;
        self.last_us.store(us.max(1), Ordering::Relaxed);
        let value = data.first().copied().unwrap_or(0);
        log::info!(
            "Guest-boot-time = {us:>8} us {} ms, value = {value}",
            us / 1000
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_elapsed_time_on_write() {
        let mut t = BootTimer::new(Instant::now() - std::time::Duration::from_millis(5));
        let r = t.reading();
        assert_eq!(r.load(Ordering::Relaxed), 0);
        t.write(0, &[123]);
        assert!(r.load(Ordering::Relaxed) >= 5000);
    }
}
