//! The PCI root bus: a host bridge at 00:00.0, up to 31 functions, config
//! access through the legacy 0xCF8/0xCFC port pair and through ECAM MMIO,
//! and the mapping of every device's BARs on the MMIO/PIO buses.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};

use crate::bus::{Bus, BusDevice, BusError};
use crate::state::{PciSlotState, StateError};

use super::config::{BarKind, BarMove, PciConfiguration, PciIds};
use super::PciDevice;

/// Slots 1..=31 hold devices; slot 0 is the host bridge.
pub const MAX_SLOTS: u8 = 32;

#[derive(Debug, thiserror::Error)]
pub enum PciRootError {
    #[error("PCI slot {0} is taken or out of range")]
    Slot(u8),
    #[error("no free PCI slot")]
    Full,
    #[error("cannot map BAR: {0}")]
    Bus(#[from] BusError),
}

type SharedPci = Arc<Mutex<dyn PciDevice>>;

/// The host bridge: an Intel-compatible ID so guests need no quirks.
struct HostBridge {
    config: PciConfiguration,
}

impl HostBridge {
    fn new() -> Self {
        Self {
            config: PciConfiguration::new(
                PciIds {
                    vendor: 0x8086,
                    device: 0x0d57,
                    subsystem_vendor: 0,
                    subsystem: 0,
                    class: 0x06,
                    subclass: 0x00,
                    prog_if: 0,
                    revision: 0,
                },
                0,
            ),
        }
    }
}

impl PciDevice for HostBridge {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove> {
        self.config.write(offset, data)
    }
    fn bars(&self) -> Vec<super::Bar> {
        Vec::new()
    }
    fn read_bar(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn write_bar(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    fn save_state(&mut self) -> Result<super::PciDeviceState, StateError> {
        Ok(super::PciDeviceState::HostBridge(self.config.state()))
    }
    fn restore_state(&mut self, state: &super::PciDeviceState) -> Result<Vec<BarMove>, StateError> {
        match state {
            super::PciDeviceState::HostBridge(c) => self.config.restore(c),
            _ => Err(StateError::Mismatch("slot 0 holds the host bridge".into())),
        }
    }
}

/// Routes one BAR's accesses to its device.
struct BarWindow {
    device: Weak<Mutex<dyn PciDevice>>,
    bar: usize,
}

impl BusDevice for BarWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.device.upgrade() {
            Some(d) => d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_bar(self.bar, offset, data),
            None => data.fill(0xff),
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(d) = self.device.upgrade() {
            d.lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_bar(self.bar, offset, data);
        }
    }
}

pub struct PciRoot {
    devices: BTreeMap<u8, SharedPci>,
    mmio: Bus,
    pio: Bus,
}

impl PciRoot {
    pub fn new(mmio: Bus, pio: Bus) -> Self {
        let mut devices: BTreeMap<u8, SharedPci> = BTreeMap::new();
        devices.insert(0, Arc::new(Mutex::new(HostBridge::new())));
        Self { devices, mmio, pio }
    }

    /// Lowest free slot.
    pub fn free_slot(&self) -> Option<u8> {
        (1..MAX_SLOTS).find(|s| !self.devices.contains_key(s))
    }

    /// Plug `device` into `slot` and map its BARs where it declares them.
    pub fn add_device(&mut self, slot: u8, device: SharedPci) -> Result<(), PciRootError> {
        if slot == 0 || slot >= MAX_SLOTS || self.devices.contains_key(&slot) {
            return Err(PciRootError::Slot(slot));
        }
        let bars = device.lock().unwrap_or_else(|e| e.into_inner()).bars();
        for bar in &bars {
            self.map_bar(&device, bar.index, bar.kind, bar.addr, bar.size)?;
        }
        self.devices.insert(slot, device);
        Ok(())
    }

    fn bus_for(&self, kind: BarKind) -> &Bus {
        match kind {
            BarKind::Io => &self.pio,
            BarKind::Mem32 | BarKind::Mem64 => &self.mmio,
        }
    }

    fn map_bar(
        &self,
        device: &SharedPci,
        bar: usize,
        kind: BarKind,
        addr: u64,
        size: u64,
    ) -> Result<(), BusError> {
        let window = BarWindow {
            device: Arc::downgrade(device),
            bar,
        };
        self.bus_for(kind)
            .insert(Arc::new(Mutex::new(window)), addr, size)
    }

    /// Config read of function `devfn` (slot << 3 | function) on bus 0.
    pub fn config_read(&self, bus: u8, devfn: u8, offset: usize, data: &mut [u8]) {
        let (slot, function) = (devfn >> 3, devfn & 7);
        match self.devices.get(&slot) {
            Some(d) if bus == 0 && function == 0 => d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .read_config(offset, data),
            // No function here: all ones (vendor 0xffff) tells the guest.
            _ => data.fill(0xff),
        }
    }

    pub fn config_write(&self, bus: u8, devfn: u8, offset: usize, data: &[u8]) {
        let (slot, function) = (devfn >> 3, devfn & 7);
        if bus != 0 || function != 0 {
            return;
        }
        let Some(device) = self.devices.get(&slot) else {
            return;
        };
        let moves = device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .write_config(offset, data);
        for mv in moves {
            self.move_bar(device, &mv);
        }
    }

    /// Pause every function (see [`PciDevice::pause`]).
    pub fn pause_devices(&self) {
        for d in self.devices.values() {
            d.lock().unwrap_or_else(|e| e.into_inner()).pause();
        }
    }

    pub fn resume_devices(&self) {
        for d in self.devices.values() {
            d.lock().unwrap_or_else(|e| e.into_inner()).resume();
        }
    }

    /// Every function's state, by slot. Fails on the first function that
    /// cannot be saved (naming its slot).
    pub fn save_state(&self) -> Result<Vec<PciSlotState>, StateError> {
        let mut out = Vec::new();
        for (&slot, d) in &self.devices {
            let state = d
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .save_state()
                .map_err(|e| match e {
                    StateError::Unsupported(what) => {
                        StateError::Unsupported(format!("{what} in PCI slot {slot}"))
                    }
                    other => other,
                })?;
            out.push(PciSlotState { slot, state });
        }
        Ok(out)
    }

    /// Load saved state into the same set of functions (same slots, same
    /// kinds), moving BARs the guest had placed elsewhere.
    pub fn restore_state(&self, states: &[PciSlotState]) -> Result<(), StateError> {
        let mine: Vec<u8> = self.devices.keys().copied().collect();
        let saved: Vec<u8> = states.iter().map(|s| s.slot).collect();
        if mine != saved {
            return Err(StateError::Mismatch(format!(
                "PCI slots {saved:?} in the snapshot, {mine:?} in this VM (the device list differs)"
            )));
        }
        for s in states {
            let Some(device) = self.devices.get(&s.slot) else {
                continue;
            };
            // The device lock is released before the moves: moving a BAR
            // calls back into the device.
            let moves = device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .restore_state(&s.state)
                .map_err(|e| match e {
                    StateError::Mismatch(m) => {
                        StateError::Mismatch(format!("PCI slot {}: {m}", s.slot))
                    }
                    other => other,
                })?;
            for mv in moves {
                self.move_bar(device, &mv);
            }
        }
        Ok(())
    }

    fn move_bar(&self, device: &SharedPci, mv: &BarMove) {
        let bus = self.bus_for(mv.kind);
        if bus.remove(mv.old).is_none() {
            log::warn!("pci: BAR {} was not mapped at {:#x}", mv.index, mv.old);
        }
        // A zero address means "unassigned" to most guests: leave it unmapped.
        if mv.new != 0 {
            if let Err(e) = self.map_bar(device, mv.index, mv.kind, mv.new, mv.size) {
                log::warn!(
                    "pci: cannot move BAR {} to {:#x}: {e}; it stays unmapped",
                    mv.index,
                    mv.new
                );
            }
        }
        log::debug!("pci: BAR {} moved {:#x} -> {:#x}", mv.index, mv.old, mv.new);
        device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .bar_moved(mv);
    }
}

/// Run `f` on the root if it is still alive. The config-access devices
/// sit on buses the root itself holds, so they keep only a weak
/// reference: a strong one would be a cycle that keeps every device (and
/// a passed-through VF's VFIO fds) alive after the VM is gone.
fn with_root(root: &Weak<Mutex<PciRoot>>, f: impl FnOnce(&PciRoot)) -> bool {
    match root.upgrade() {
        Some(r) => {
            f(&r.lock().unwrap_or_else(|e| e.into_inner()));
            true
        }
        None => false,
    }
}

/// The legacy configuration mechanism: address at 0xCF8, data at 0xCFC.
pub struct PciConfigIo {
    root: Weak<Mutex<PciRoot>>,
    address: u32,
}

impl PciConfigIo {
    pub fn new(root: &Arc<Mutex<PciRoot>>) -> Self {
        Self {
            root: Arc::downgrade(root),
            address: 0,
        }
    }

    /// The address latch, for a snapshot.
    pub fn address(&self) -> u32 {
        self.address
    }

    pub fn set_address(&mut self, address: u32) {
        self.address = address;
    }

    /// (bus, devfn, register offset) if the enable bit is set.
    fn target(&self, data_offset: u64) -> Option<(u8, u8, usize)> {
        if self.address & 0x8000_0000 == 0 {
            return None;
        }
        let bus = ((self.address >> 16) & 0xff) as u8;
        let devfn = ((self.address >> 8) & 0xff) as u8;
        let reg = (self.address & 0xfc) as usize + data_offset as usize;
        Some((bus, devfn, reg))
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            0..=3 => {
                let bytes = self.address.to_le_bytes();
                let at = offset as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get(at + i).copied().unwrap_or(0xff);
                }
            }
            4..=7 => match self.target(offset - 4) {
                Some((bus, devfn, reg)) if reg + data.len() <= 0x100 => {
                    if !with_root(&self.root, |r| r.config_read(bus, devfn, reg, data)) {
                        data.fill(0xff);
                    }
                }
                _ => data.fill(0xff),
            },
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                self.address = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
            }
            4..=7 => {
                if let Some((bus, devfn, reg)) = self.target(offset - 4) {
                    if reg + data.len() <= 0x100 {
                        with_root(&self.root, |r| r.config_write(bus, devfn, reg, data));
                    }
                }
            }
            _ => {}
        }
    }
}

/// ECAM: 4 KiB of config space per function, bus 0 only.
pub struct PciConfigMmio {
    root: Weak<Mutex<PciRoot>>,
}

impl PciConfigMmio {
    pub fn new(root: &Arc<Mutex<PciRoot>>) -> Self {
        Self {
            root: Arc::downgrade(root),
        }
    }

    /// Bytes one bus's worth of ECAM covers.
    pub const BUS_SIZE: u64 = 1 << 20;

    fn decode(offset: u64, len: usize) -> Option<(u8, u8, usize)> {
        let bus = ((offset >> 20) & 0xff) as u8;
        let devfn = ((offset >> 12) & 0xff) as u8;
        let reg = (offset & 0xfff) as usize;
        (reg + len <= 0x1000).then_some((bus, devfn, reg))
    }
}

impl BusDevice for PciConfigMmio {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let done = match Self::decode(offset, data.len()) {
            Some((bus, devfn, reg)) => {
                with_root(&self.root, |r| r.config_read(bus, devfn, reg, data))
            }
            None => false,
        };
        if !done {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((bus, devfn, reg)) = Self::decode(offset, data.len()) {
            with_root(&self.root, |r| r.config_write(bus, devfn, reg, data));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::config::Bar;

    struct Dummy {
        config: PciConfiguration,
        bar_writes: Vec<(usize, u64, Vec<u8>)>,
        moved: Vec<BarMove>,
    }

    impl PciDevice for Dummy {
        fn read_config(&mut self, offset: usize, data: &mut [u8]) {
            self.config.read(offset, data)
        }
        fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove> {
            self.config.write(offset, data)
        }
        fn bars(&self) -> Vec<Bar> {
            self.config.bars().copied().collect()
        }
        fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            data.fill((bar as u8) << 4 | offset as u8);
        }
        fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.bar_writes.push((bar, offset, data.to_vec()));
        }
        fn bar_moved(&mut self, mv: &BarMove) {
            self.moved.push(*mv);
        }
    }

    fn dummy(addr: u64) -> Arc<Mutex<Dummy>> {
        let mut config = PciConfiguration::new(
            PciIds {
                vendor: 0x1af4,
                device: 0x1042,
                subsystem_vendor: 0,
                subsystem: 0,
                class: 1,
                subclass: 0,
                prog_if: 0,
                revision: 0,
            },
            1,
        );
        config
            .add_bar(Bar {
                index: 0,
                kind: BarKind::Mem32,
                size: 0x1000,
                addr,
                prefetchable: false,
            })
            .unwrap();
        Arc::new(Mutex::new(Dummy {
            config,
            bar_writes: Vec::new(),
            moved: Vec::new(),
        }))
    }

    fn cf8(slot: u8, reg: u32) -> [u8; 4] {
        (0x8000_0000u32 | (u32::from(slot) << 11) | reg).to_le_bytes()
    }

    #[test]
    fn legacy_and_ecam_config_access_and_bar_moves() {
        let mmio = Bus::new();
        let root = Arc::new(Mutex::new(PciRoot::new(mmio.clone(), Bus::new())));
        let dev = dummy(0xc000_0000);
        root.lock().unwrap().add_device(1, dev.clone()).unwrap();
        assert!(root
            .lock()
            .unwrap()
            .add_device(1, dummy(0xc000_1000))
            .is_err());

        let mut io = PciConfigIo::new(&root);
        let mut id = [0u8; 4];
        io.write(0, &cf8(0, 0));
        io.read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x0d57_8086, "host bridge");
        io.write(0, &cf8(1, 0));
        io.read(4, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1042_1af4);
        io.write(0, &cf8(2, 0));
        io.read(4, &mut id);
        assert_eq!(id, [0xff; 4], "empty slot");

        let mut ecam = PciConfigMmio::new(&root);
        ecam.read(1 << 15, &mut id);
        assert_eq!(u32::from_le_bytes(id), 0x1042_1af4);

        // BAR access through the MMIO bus.
        assert!(mmio.write(0xc000_0010, &[9]));
        let mut b = [0u8];
        assert!(mmio.read(0xc000_0003, &mut b));
        assert_eq!(b[0], 0x03);
        // Move the BAR through ECAM: the old window unmaps, the new maps.
        ecam.write((1 << 15) | 0x10, &0xd000_0000u32.to_le_bytes());
        assert!(!mmio.write(0xc000_0010, &[1]));
        assert!(mmio.write(0xd000_0020, &[2]));
        let d = dev.lock().unwrap();
        assert_eq!(d.bar_writes, vec![(0, 0x10, vec![9]), (0, 0x20, vec![2])]);
        assert_eq!(d.moved.len(), 1);
        drop(d);
        // No cycle: dropping the root drops its devices, though the config
        // devices are still on buses.
        let weak = Arc::downgrade(&dev);
        drop(dev);
        drop(root);
        assert!(weak.upgrade().is_none(), "the device outlived its root");
        let mut d = [0u8; 4];
        ecam.read(1 << 15, &mut d);
        assert_eq!(d, [0xff; 4]);
    }

    #[test]
    fn disabled_address_register_reads_all_ones() {
        let root = Arc::new(Mutex::new(PciRoot::new(Bus::new(), Bus::new())));
        let mut io = PciConfigIo::new(&root);
        io.write(0, &0u32.to_le_bytes());
        let mut d = [0u8; 4];
        io.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        io.write(0, &cf8(0, 0));
        io.read(0, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x8000_0000);
    }
}
