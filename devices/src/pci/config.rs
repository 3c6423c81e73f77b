//! A PCI function's configuration space (type 0 header, 256 bytes of
//! conventional space plus the PCIe extended space up to 4 KiB), with
//! per-bit write masks, BAR sizing and a capability list.

pub const CONFIG_SPACE_SIZE: usize = 4096;
pub const NUM_BARS: usize = 6;

const VENDOR_ID: usize = 0x00;
const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const REVISION: usize = 0x08;
const CLASS_PROG_IF: usize = 0x09;
const HEADER_TYPE: usize = 0x0e;
pub const BAR0: usize = 0x10;
const SUBSYS_VENDOR_ID: usize = 0x2c;
const SUBSYS_ID: usize = 0x2e;
const CAP_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3c;
const INTERRUPT_PIN: usize = 0x3d;

const STATUS_CAP_LIST: u16 = 1 << 4;
pub const COMMAND_IO: u16 = 1 << 0;
pub const COMMAND_MEMORY: u16 = 1 << 1;
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    Io,
    Mem32,
    /// Uses this BAR and the next one.
    Mem64,
}

/// One BAR as the device declares it; `addr` follows guest programming.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bar {
    pub index: usize,
    pub kind: BarKind,
    /// Power of two, at least 16 (I/O: 4).
    pub size: u64,
    pub addr: u64,
    pub prefetchable: bool,
}

/// A BAR's address changed because the guest reprogrammed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    pub index: usize,
    pub kind: BarKind,
    pub old: u64,
    pub new: u64,
    pub size: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0} is out of range or already used")]
    BarIndex(usize),
    #[error("BAR size {0:#x} is not a power of two of at least 16 bytes")]
    BarSize(u64),
    #[error("no room for a {0}-byte capability in configuration space")]
    CapabilitySpace(usize),
}

/// Identity of a function.
#[derive(Clone, Copy, Debug)]
pub struct PciIds {
    pub vendor: u16,
    pub device: u16,
    pub subsystem_vendor: u16,
    pub subsystem: u16,
    pub class: u8,
    pub subclass: u8,
    pub prog_if: u8,
    pub revision: u8,
}

/// What a snapshot keeps of a configuration space: the conventional 256
/// bytes (everything the guest can write) and where each BAR is placed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpaceState {
    #[serde(with = "crate::state::hex_bytes")]
    pub bytes: Vec<u8>,
    /// (BAR index, guest address) of every BAR the function declares.
    pub bars: Vec<(usize, u64)>,
}

/// Conventional configuration space: all a type 0 function exposes here.
const SAVED_CONFIG_BYTES: usize = 0x100;

pub struct PciConfiguration {
    bytes: Vec<u8>,
    /// Bits the guest may change.
    writable: Vec<u8>,
    bars: [Option<Bar>; NUM_BARS],
    /// Where the next capability goes (conventional space only).
    next_cap: usize,
    last_cap: Option<usize>,
}

impl PciConfiguration {
    pub fn new(ids: PciIds, interrupt_pin: u8) -> Self {
        let mut c = Self {
            bytes: vec![0; CONFIG_SPACE_SIZE],
            writable: vec![0; CONFIG_SPACE_SIZE],
            bars: [None; NUM_BARS],
            next_cap: 0x40,
            last_cap: None,
        };
        c.put16(VENDOR_ID, ids.vendor);
        c.put16(DEVICE_ID, ids.device);
        c.bytes[REVISION] = ids.revision;
        c.bytes[CLASS_PROG_IF] = ids.prog_if;
        c.bytes[CLASS_PROG_IF + 1] = ids.subclass;
        c.bytes[CLASS_PROG_IF + 2] = ids.class;
        c.bytes[HEADER_TYPE] = 0;
        c.put16(SUBSYS_VENDOR_ID, ids.subsystem_vendor);
        c.put16(SUBSYS_ID, ids.subsystem);
        c.bytes[INTERRUPT_PIN] = interrupt_pin;
        let command_mask = COMMAND_IO | COMMAND_MEMORY | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE;
        c.writable[COMMAND..COMMAND + 2].copy_from_slice(&command_mask.to_le_bytes());
        c.writable[INTERRUPT_LINE] = 0xff;
        c
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    pub fn read_u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    pub fn read_u32(&self, at: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    pub fn command(&self) -> u16 {
        self.read_u16(COMMAND)
    }

    pub fn interrupt_line(&self) -> u8 {
        self.bytes[INTERRUPT_LINE]
    }

    /// Pre-set the interrupt line (firmware's routing, read by the guest).
    pub fn set_interrupt_line(&mut self, line: u8) {
        self.bytes[INTERRUPT_LINE] = line;
    }

    /// Declare a BAR at `addr` (already allocated by the VMM).
    pub fn add_bar(&mut self, bar: Bar) -> Result<(), ConfigError> {
        let i = bar.index;
        let width = if bar.kind == BarKind::Mem64 { 2 } else { 1 };
        if i + width > NUM_BARS || (0..width).any(|k| self.bars[i + k].is_some()) {
            return Err(ConfigError::BarIndex(i));
        }
        let min = if bar.kind == BarKind::Io { 4 } else { 16 };
        if !bar.size.is_power_of_two() || bar.size < min {
            return Err(ConfigError::BarSize(bar.size));
        }
        self.bars[i] = Some(bar);
        if width == 2 {
            // The upper half is taken, and points back at its lower BAR.
            self.bars[i + 1] = Some(bar);
        }
        self.write_bar_registers(i);
        // Address bits above the size are writable; low flag bits are not.
        let mask = !(bar.size - 1);
        let off = BAR0 + 4 * i;
        self.writable[off..off + 4].copy_from_slice(&(mask as u32).to_le_bytes());
        if width == 2 {
            self.writable[off + 4..off + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
        Ok(())
    }

    fn write_bar_registers(&mut self, i: usize) {
        let Some(bar) = self.bars[i] else { return };
        let flags: u32 = match bar.kind {
            BarKind::Io => 0x1,
            BarKind::Mem32 => u32::from(bar.prefetchable) << 3,
            BarKind::Mem64 => 0x4 | (u32::from(bar.prefetchable) << 3),
        };
        let low_mask = if bar.kind == BarKind::Io {
            !0x3u64
        } else {
            !0xfu64
        };
        self.put32(BAR0 + 4 * i, ((bar.addr & low_mask) as u32) | flags);
        if bar.kind == BarKind::Mem64 {
            self.put32(BAR0 + 4 * (i + 1), (bar.addr >> 32) as u32);
        }
    }

    pub fn bars(&self) -> impl Iterator<Item = &Bar> {
        // Upper halves of 64-bit BARs carry their lower BAR's index.
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().filter(|b| b.index == i))
    }

    pub fn bar(&self, index: usize) -> Option<Bar> {
        self.bars
            .get(index)
            .copied()
            .flatten()
            .filter(|b| b.index == index)
    }

    /// Append a capability with `body` (after the ID and next-pointer bytes)
    /// and `writable` masks for the body. Returns its offset.
    pub fn add_capability(
        &mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Result<usize, ConfigError> {
        let len = (2 + body.len() + 3) & !3;
        let at = self.next_cap;
        if at + len > 0x100 {
            return Err(ConfigError::CapabilitySpace(len));
        }
        self.bytes[at] = id;
        self.bytes[at + 1] = 0;
        self.bytes[at + 2..at + 2 + body.len()].copy_from_slice(body);
        let wl = writable.len().min(body.len());
        self.writable[at + 2..at + 2 + wl].copy_from_slice(&writable[..wl]);
        match self.last_cap {
            Some(prev) => self.bytes[prev + 1] = at as u8,
            None => {
                self.bytes[CAP_POINTER] = at as u8;
                let status = self.read_u16(STATUS) | STATUS_CAP_LIST;
                self.put16(STATUS, status);
            }
        }
        self.last_cap = Some(at);
        self.next_cap = at + len;
        Ok(at)
    }

    /// Raw view of a capability's bytes (for the device that owns it).
    pub fn bytes(&self, at: usize, len: usize) -> &[u8] {
        &self.bytes[at..at + len]
    }

    /// Device-side update (not masked), e.g. status bits.
    pub fn set_bytes(&mut self, at: usize, data: &[u8]) {
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }

    pub fn read(&self, offset: usize, data: &mut [u8]) {
        match self.bytes.get(offset..offset + data.len()) {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0xff),
        }
    }

    pub fn state(&self) -> ConfigSpaceState {
        ConfigSpaceState {
            bytes: self.bytes[..SAVED_CONFIG_BYTES].to_vec(),
            bars: self.bars().map(|b| (b.index, b.addr)).collect(),
        }
    }

    /// Load a saved configuration space into a function built the same way.
    /// Returns the BARs whose placement differs from where they are now
    /// (the guest moved them before the snapshot), for the root to re-map.
    pub fn restore(
        &mut self,
        s: &ConfigSpaceState,
    ) -> Result<Vec<BarMove>, crate::state::StateError> {
        use crate::state::StateError;
        if s.bytes.len() != SAVED_CONFIG_BYTES {
            return Err(StateError::Invalid(format!(
                "configuration space of {} bytes, expected {SAVED_CONFIG_BYTES}",
                s.bytes.len()
            )));
        }
        // Identity (IDs, class) must be the same device.
        if s.bytes[..4] != self.bytes[..4] || s.bytes[8..12] != self.bytes[8..12] {
            return Err(StateError::Mismatch(format!(
                "PCI function {:02x?} in the snapshot, {:02x?} here",
                &s.bytes[..4],
                &self.bytes[..4]
            )));
        }
        let mine: Vec<usize> = self.bars().map(|b| b.index).collect();
        let saved: Vec<usize> = s.bars.iter().map(|b| b.0).collect();
        if mine != saved {
            return Err(StateError::Mismatch(format!(
                "BARs {saved:?} in the snapshot, {mine:?} here"
            )));
        }
        self.bytes[..SAVED_CONFIG_BYTES].copy_from_slice(&s.bytes);
        let mut moves = Vec::new();
        for &(index, addr) in &s.bars {
            let Some(bar) = self.bars[index].as_mut() else {
                continue;
            };
            if bar.addr != addr {
                moves.push(BarMove {
                    index,
                    kind: bar.kind,
                    old: bar.addr,
                    new: addr,
                    size: bar.size,
                });
                bar.addr = addr;
                if bar.kind == BarKind::Mem64 {
                    if let Some(upper) = self.bars[index + 1].as_mut() {
                        upper.addr = addr;
                    }
                }
            }
        }
        Ok(moves)
    }

    /// Guest write: only writable bits change. Returns the BARs the write
    /// moved (both halves of a 64-bit BAR written means one move).
    pub fn write(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove> {
        if offset + data.len() > CONFIG_SPACE_SIZE {
            return Vec::new();
        }
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i;
            let m = self.writable[at];
            self.bytes[at] = (self.bytes[at] & !m) | (b & m);
        }
        if offset + data.len() <= BAR0 || offset >= BAR0 + 4 * NUM_BARS {
            return Vec::new();
        }
        let mut moves = Vec::new();
        for i in 0..NUM_BARS {
            let Some(bar) = self.bar(i) else { continue };
            let low = u64::from(self.read_u32(BAR0 + 4 * i));
            let addr = match bar.kind {
                BarKind::Io => low & !0x3,
                BarKind::Mem32 => low & !0xf,
                BarKind::Mem64 => {
                    (low & !0xf) | (u64::from(self.read_u32(BAR0 + 4 * (i + 1))) << 32)
                }
            };
            // While the guest sizes a BAR it writes all ones to one half
            // at a time: not a placement, so nothing moves until it
            // writes a real address back.
            let size_mask = !(bar.size - 1);
            let low_sizing = (low as u32) & (size_mask as u32) == size_mask as u32;
            let high_sizing =
                bar.kind == BarKind::Mem64 && self.read_u32(BAR0 + 4 * (i + 1)) == u32::MAX;
            if addr != bar.addr && !low_sizing && !high_sizing {
                moves.push(BarMove {
                    index: i,
                    kind: bar.kind,
                    old: bar.addr,
                    new: addr,
                    size: bar.size,
                });
                if let Some(b) = self.bars[i].as_mut() {
                    b.addr = addr;
                }
            }
        }
        moves
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
            class: 0x01,
            subclass: 0x00,
            prog_if: 0,
            revision: 1,
        }
    }

    fn read32(c: &PciConfiguration, at: usize) -> u32 {
        let mut b = [0u8; 4];
        c.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn header_and_read_only_fields() {
        let mut c = PciConfiguration::new(ids(), 1);
        assert_eq!(read32(&c, 0), 0x1042_1af4);
        c.write(0, &[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(read32(&c, 0), 0x1042_1af4, "IDs are read-only");
        c.write(COMMAND, &[0x07, 0x04]);
        assert_eq!(c.command(), 0x0407);
        c.write(COMMAND, &[0xff, 0xff]);
        assert_eq!(
            c.command(),
            0x0407,
            "only decode, master and INTx-disable bits"
        );
    }

    #[test]
    fn bar_sizing_protocol_and_moves() {
        let mut c = PciConfiguration::new(ids(), 1);
        c.add_bar(Bar {
            index: 0,
            kind: BarKind::Mem64,
            size: 0x8000,
            addr: 0xc000_0000,
            prefetchable: false,
        })
        .unwrap();
        assert_eq!(read32(&c, BAR0), 0xc000_0004);
        // Sizing: write all ones, read back the size mask, restore.
        assert!(c.write(BAR0, &[0xff; 4]).is_empty());
        assert_eq!(read32(&c, BAR0), 0xffff_8004);
        assert!(c.write(BAR0, &0xc000_0000u32.to_le_bytes()).is_empty());
        assert!(c.write(BAR0 + 4, &[0xff; 4]).is_empty());
        assert_eq!(read32(&c, BAR0 + 4), 0xffff_ffff);
        let moves = c.write(BAR0 + 4, &0u32.to_le_bytes());
        assert!(moves.is_empty(), "restored to where it was: {moves:?}");
        let moves = c.write(BAR0, &0xd000_0000u32.to_le_bytes());
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].old, moves[0].new), (0xc000_0000, 0xd000_0000));
        assert_eq!(c.bar(0).unwrap().addr, 0xd000_0000);
        assert_eq!(c.bars().count(), 1);
        assert!(c.bar(1).is_none(), "upper half is not a BAR of its own");
        assert!(c
            .add_bar(Bar {
                index: 1,
                kind: BarKind::Mem32,
                size: 16,
                addr: 0,
                prefetchable: false
            })
            .is_err());
        // A 64-bit move written high half first, then low half.
        assert!(c.write(BAR0 + 4, &1u32.to_le_bytes()).len() == 1);
        assert_eq!(c.bar(0).unwrap().addr, 0x1_d000_0000);
    }

    #[test]
    fn state_restores_bytes_and_reports_moved_bars() {
        let bar = Bar {
            index: 0,
            kind: BarKind::Mem64,
            size: 0x8000,
            addr: 0xc000_0000,
            prefetchable: false,
        };
        let mut a = PciConfiguration::new(ids(), 1);
        a.add_bar(bar).unwrap();
        a.write(COMMAND, &[0x06, 0x00]);
        a.write(BAR0, &0xd000_0000u32.to_le_bytes());
        let saved = a.state();
        let mut b = PciConfiguration::new(ids(), 1);
        b.add_bar(bar).unwrap();
        let moves = b.restore(&saved).unwrap();
        assert_eq!(moves.len(), 1);
        assert_eq!((moves[0].old, moves[0].new), (0xc000_0000, 0xd000_0000));
        assert_eq!(b.command(), 6);
        assert_eq!(b.bar(0).unwrap().addr, 0xd000_0000);
        let mut other = ids();
        other.device = 0x1041;
        let mut c = PciConfiguration::new(other, 1);
        c.add_bar(bar).unwrap();
        assert!(c.restore(&saved).is_err(), "another device");
    }

    #[test]
    fn capabilities_chain() {
        let mut c = PciConfiguration::new(ids(), 0);
        let a = c.add_capability(0x09, &[0x10, 1, 2, 3], &[]).unwrap();
        let b = c
            .add_capability(0x11, &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[0x00, 0xc0])
            .unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(c.bytes[CAP_POINTER] as usize, a);
        assert_eq!(c.bytes[a + 1] as usize, b);
        assert_eq!(c.bytes[b + 1], 0);
        assert_ne!(c.read_u16(STATUS) & STATUS_CAP_LIST, 0);
        c.write(b + 3, &[0xff]);
        assert_eq!(c.bytes[b + 3], 0xc0, "only the writable bits");
        assert!(c
            .add_bar(Bar {
                index: 5,
                kind: BarKind::Mem64,
                size: 16,
                addr: 0,
                prefetchable: false
            })
            .is_err());
        assert!(c
            .add_bar(Bar {
                index: 2,
                kind: BarKind::Mem32,
                size: 24,
                addr: 0,
                prefetchable: false
            })
            .is_err());
    }
}
