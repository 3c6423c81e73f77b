//! CMOS RTC at ports 0x70 (index) / 0x71 (data): the wall clock in BCD from
//! the host's UTC time, and 128 bytes of NVRAM. Without it a guest that reads
//! the RTC spins on a floating "update in progress" bit.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::state::{hex_bytes, StateError};

/// The index register and NVRAM; the clock itself follows the host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CmosState {
    pub index: u8,
    #[serde(with = "hex_bytes")]
    pub nvram: Vec<u8>,
}

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_STATUS_A: u8 = 0x0A;
const REG_STATUS_B: u8 = 0x0B;
const REG_STATUS_C: u8 = 0x0C;
const REG_STATUS_D: u8 = 0x0D;
const REG_CENTURY: u8 = 0x32;

pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    now: fn() -> u64,
}

impl Default for Cmos {
    fn default() -> Self {
        Self::new()
    }
}

fn host_unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn bcd(v: u64) -> u8 {
    let v = (v % 100) as u8;
    ((v / 10) << 4) | (v % 10)
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, u64, u64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Cmos {
    pub fn new() -> Self {
        Self::with_clock(host_unix_seconds)
    }

    fn with_clock(now: fn() -> u64) -> Self {
        Self {
            index: 0,
            nvram: [0; 128],
            now,
        }
    }

    pub fn save_state(&self) -> CmosState {
        CmosState {
            index: self.index,
            nvram: self.nvram.to_vec(),
        }
    }

    pub fn restore_state(&mut self, s: &CmosState) -> Result<(), StateError> {
        if s.nvram.len() != self.nvram.len() {
            return Err(StateError::Invalid(format!(
                "CMOS NVRAM of {} bytes, expected {}",
                s.nvram.len(),
                self.nvram.len()
            )));
        }
        self.nvram.copy_from_slice(&s.nvram);
        self.index = s.index & 0x7f;
        Ok(())
    }

    fn register(&self, index: u8) -> u8 {
        let secs = (self.now)();
        let days = (secs / 86_400) as i64;
        let tod = secs % 86_400;
        let (year, month, day) = civil_from_days(days);
        match index {
            REG_SECONDS => bcd(tod % 60),
            REG_MINUTES => bcd(tod / 60 % 60),
            REG_HOURS => bcd(tod / 3600),
            // 1970-01-01 was a Thursday; the RTC counts Sunday as 1.
            REG_WEEKDAY => bcd(((days + 4).rem_euclid(7) + 1) as u64),
            REG_DAY => bcd(day),
            REG_MONTH => bcd(month),
            REG_YEAR => bcd(year.rem_euclid(100) as u64),
            REG_CENTURY => bcd((year / 100) as u64),
            // 32.768 kHz time base, no update in progress.
            REG_STATUS_A => 0x26,
            // 24-hour mode, BCD, no interrupts.
            REG_STATUS_B => 0x02,
            REG_STATUS_C => 0x00,
            // Valid RAM and time.
            REG_STATUS_D => 0x80,
            other => self.nvram[usize::from(other & 0x7f)],
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            1 => self.register(self.index),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            // Bit 7 of the index port is the NMI mask; ignore it.
            0 => self.index = value & 0x7f,
            1 => match self.index {
                REG_SECONDS..=REG_STATUS_D | REG_CENTURY => {}
                i => self.nvram[usize::from(i)] = value,
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(c: &mut Cmos, i: u8) -> u8 {
        c.write(0, &[i]);
        let mut b = [0u8];
        c.read(1, &mut b);
        b[0]
    }

    #[test]
    fn reports_a_known_time_in_bcd() {
        // 2026-11-25 13:51:52 UTC, a Wednesday.
        let mut c = Cmos::with_clock(|| 1_795_614_712);
        assert_eq!(reg(&mut c, REG_SECONDS), 0x52);
        assert_eq!(reg(&mut c, REG_MINUTES), 0x51);
        assert_eq!(reg(&mut c, REG_HOURS), 0x13);
        assert_eq!(reg(&mut c, REG_DAY), 0x25);
        assert_eq!(reg(&mut c, REG_MONTH), 0x11);
        assert_eq!(reg(&mut c, REG_YEAR), 0x26);
        assert_eq!(reg(&mut c, REG_CENTURY), 0x20);
        assert_eq!(reg(&mut c, REG_WEEKDAY), 4);
        assert_eq!(reg(&mut c, REG_STATUS_A) & 0x80, 0, "no update in progress");
    }

    #[test]
    fn nvram_keeps_values_but_clock_is_read_only() {
        let mut c = Cmos::with_clock(|| 0);
        c.write(0, &[0x40]);
        c.write(1, &[0x5a]);
        assert_eq!(reg(&mut c, 0x40), 0x5a);
        c.write(0, &[REG_SECONDS]);
        c.write(1, &[0x33]);
        assert_eq!(reg(&mut c, REG_SECONDS), 0x00);
        assert_eq!(reg(&mut c, REG_YEAR), 0x70);
        let saved = c.save_state();
        let mut d = Cmos::with_clock(|| 0);
        d.restore_state(&saved).unwrap();
        assert_eq!(reg(&mut d, 0x40), 0x5a);
        assert!(d
            .restore_state(&CmosState {
                index: 0,
                nvram: vec![0; 3]
            })
            .is_err());
    }
}
