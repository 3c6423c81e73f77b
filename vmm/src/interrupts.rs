//! Interrupt plumbing between devices and KVM: the GSI routing table
//! (legacy IOAPIC/PIC lines plus one MSI route per live MSI-X vector), the
//! irqfds devices signal, and ioeventfds for virtio notifications.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use devices::pci::{MsiInterrupts, MsiMessage};
use devices::virtio::pci::IoEventRegistry;
use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, NoDatamatch, VmFd};
use vmm_sys_util::eventfd::EventFd;

/// IOAPIC pins (and so legacy GSIs) 0..24; MSI routes use GSIs above.
pub const IOAPIC_PINS: u32 = 24;
/// First GSI of the PCI INTx lines (IOAPIC pins 16..24).
pub const PCI_INTX_GSI_BASE: u32 = 16;
pub const PCI_INTX_LINES: u32 = 8;

fn irqchip_entry(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

fn msi_entry(gsi: u32, msg: MsiMessage) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = msg.address as u32;
    e.u.msi.address_hi = (msg.address >> 32) as u32;
    e.u.msi.data = msg.data;
    e
}

/// The legacy part of the table: GSI 0-15 on both PICs and the IOAPIC,
/// 16-23 on the IOAPIC only. GSI 0 (the PIT) goes to IOAPIC pin 2, as the
/// MADT's interrupt source override says.
fn legacy_routes() -> Vec<kvm_irq_routing_entry> {
    let mut v = Vec::new();
    for gsi in 0..IOAPIC_PINS {
        let pin = if gsi == 0 { 2 } else { gsi };
        v.push(irqchip_entry(gsi, KVM_IRQCHIP_IOAPIC, pin));
        if gsi < 8 {
            v.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_MASTER, gsi));
        } else if gsi < 16 {
            v.push(irqchip_entry(gsi, KVM_IRQCHIP_PIC_SLAVE, gsi - 8));
        }
    }
    v
}

struct RouterState {
    next_gsi: u32,
    msi: BTreeMap<u32, MsiMessage>,
}

/// Owns KVM's GSI routing table. KVM_SET_GSI_ROUTING replaces the whole
/// table, so every change re-sends the legacy routes plus all MSI routes.
pub struct GsiRouter {
    vm: Arc<VmFd>,
    state: Mutex<RouterState>,
}

impl GsiRouter {
    pub fn new(vm: Arc<VmFd>) -> io::Result<Self> {
        let router = Self {
            vm,
            state: Mutex::new(RouterState {
                next_gsi: IOAPIC_PINS,
                msi: BTreeMap::new(),
            }),
        };
        let state = router.state.lock().unwrap_or_else(|e| e.into_inner());
        router.commit(&state)?;
        drop(state);
        Ok(router)
    }

    fn commit(&self, state: &RouterState) -> io::Result<()> {
        let mut entries = legacy_routes();
        entries.extend(state.msi.iter().map(|(&gsi, &msg)| msi_entry(gsi, msg)));
        let table = KvmIrqRouting::from_entries(&entries)
            .map_err(|e| io::Error::other(format!("GSI routing table: {e:?}")))?;
        self.vm
            .set_gsi_routing(&table)
            .map_err(|e| io::Error::other(format!("KVM_SET_GSI_ROUTING: {e}")))
    }

    pub fn allocate_gsi(&self) -> u32 {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gsi = s.next_gsi;
        s.next_gsi += 1;
        gsi
    }

    /// Point `gsi` at `msg`, or remove its route (masked / disabled).
    pub fn set_msi_route(&self, gsi: u32, msg: Option<MsiMessage>) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let changed = match msg {
            Some(m) => s.msi.insert(gsi, m) != Some(m),
            None => s.msi.remove(&gsi).is_some(),
        };
        if changed {
            self.commit(&s)?;
        }
        Ok(())
    }
}

/// One device's MSI-X vectors: a GSI and an irqfd each.
pub struct KvmMsiGroup {
    router: Arc<GsiRouter>,
    vm: Arc<VmFd>,
    gsis: Vec<u32>,
    irqfds: Vec<EventFd>,
    /// Whether vector i's eventfd is attached to KVM right now. A masked
    /// (or disabled) vector is detached, so whatever its source signals
    /// meanwhile (a VFIO device keeps signalling) stays counted in the
    /// eventfd: KVM delivers it when the irqfd is attached again on
    /// unmask. That is MSI-X's "pending while masked".
    attached: Mutex<Vec<bool>>,
}

impl KvmMsiGroup {
    pub fn new(router: Arc<GsiRouter>, vm: &Arc<VmFd>, vectors: u16) -> io::Result<Self> {
        let mut gsis = Vec::new();
        let mut irqfds = Vec::new();
        for _ in 0..vectors {
            gsis.push(router.allocate_gsi());
            irqfds.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(Self {
            router,
            vm: Arc::clone(vm),
            attached: Mutex::new(vec![false; gsis.len()]),
            gsis,
            irqfds,
        })
    }

    /// The vectors' irqfds, for a device that signals them directly (VFIO).
    pub fn eventfds(&self) -> io::Result<Vec<EventFd>> {
        self.irqfds.iter().map(|e| e.try_clone()).collect()
    }
}

impl MsiInterrupts for KvmMsiGroup {
    fn update(&self, vector: u16, msg: Option<MsiMessage>) -> io::Result<()> {
        let v = usize::from(vector);
        let (Some(&gsi), Some(evt)) = (self.gsis.get(v), self.irqfds.get(v)) else {
            return Err(io::Error::other(format!("no MSI-X vector {vector}")));
        };
        let mut attached = self.attached.lock().unwrap_or_else(|e| e.into_inner());
        match msg {
            Some(m) => {
                // Route first, then attach: an event counted while detached
                // is delivered by KVM at attach time, to the new address.
                self.router.set_msi_route(gsi, Some(m))?;
                if !attached[v] {
                    self.vm
                        .register_irqfd(evt, gsi)
                        .map_err(|e| io::Error::other(format!("KVM_IRQFD for GSI {gsi}: {e}")))?;
                    attached[v] = true;
                }
            }
            None => {
                if attached[v] {
                    self.vm.unregister_irqfd(evt, gsi).map_err(|e| {
                        io::Error::other(format!("KVM_IRQFD deassign GSI {gsi}: {e}"))
                    })?;
                    attached[v] = false;
                }
                self.router.set_msi_route(gsi, None)?;
            }
        }
        Ok(())
    }

    fn fire(&self, vector: u16) -> io::Result<()> {
        match self.irqfds.get(usize::from(vector)) {
            Some(evt) => evt.write(1),
            None => Err(io::Error::other(format!("no MSI-X vector {vector}"))),
        }
    }
}

/// KVM memory slots for device memory mapped into the guest (VFIO BARs).
/// Slots below `first` belong to guest RAM.
pub struct KvmSlots {
    vm: Arc<VmFd>,
    state: Mutex<(u32, Vec<u32>, BTreeMap<u32, u64>)>,
}

impl KvmSlots {
    pub fn new(vm: Arc<VmFd>, first: u32) -> Self {
        Self {
            vm,
            state: Mutex::new((first, Vec::new(), BTreeMap::new())),
        }
    }
}

impl devices::vfio::GuestMemoryMapper for KvmSlots {
    fn map(&self, gpa: u64, size: u64, host: u64) -> io::Result<u32> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let slot = match s.1.pop() {
            Some(free) => free,
            None => {
                s.0 += 1;
                s.0 - 1
            }
        };
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: host,
            flags: 0,
        };
        // SAFETY: `host` is a live device mapping owned by the caller, who
        // removes the slot (unmap) before unmapping the memory.
        unsafe { self.vm.set_user_memory_region(region) }.map_err(|e| {
            io::Error::other(format!("KVM_SET_USER_MEMORY_REGION slot {slot}: {e}"))
        })?;
        s.2.insert(slot, gpa);
        Ok(slot)
    }

    fn unmap(&self, slot: u32) -> io::Result<()> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let gpa = s.2.remove(&slot).unwrap_or(0);
        let region = kvm_bindings::kvm_userspace_memory_region {
            slot,
            guest_phys_addr: gpa,
            memory_size: 0,
            userspace_addr: 0,
            flags: 0,
        };
        // SAFETY: a zero-sized region deletes the slot; no memory is touched.
        unsafe { self.vm.set_user_memory_region(region) }
            .map_err(|e| io::Error::other(format!("KVM slot {slot} removal: {e}")))?;
        s.1.push(slot);
        Ok(())
    }
}

/// Registers virtio notification addresses as KVM ioeventfds.
pub struct KvmIoEvents {
    pub vm: Arc<VmFd>,
}

impl IoEventRegistry for KvmIoEvents {
    fn register(&self, evt: &EventFd, addr: u64) -> io::Result<()> {
        self.vm
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::other(format!("KVM_IOEVENTFD at {addr:#x}: {e}")))
    }

    fn unregister(&self, evt: &EventFd, addr: u64) -> io::Result<()> {
        self.vm
            .unregister_ioevent(evt, &IoEventAddress::Mmio(addr), NoDatamatch)
            .map_err(|e| io::Error::other(format!("KVM_IOEVENTFD deassign at {addr:#x}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a real KVM VM: while a vector is attached, KVM consumes what is
    /// signalled on its eventfd; while masked (detached), signals stay
    /// counted for delivery at unmask.
    #[test]
    fn masked_vectors_keep_their_signals_counted() {
        let kvm = kvm_ioctls::Kvm::new().unwrap();
        let vm = Arc::new(kvm.create_vm().unwrap());
        vm.create_irq_chip().unwrap();
        let router = Arc::new(GsiRouter::new(Arc::clone(&vm)).unwrap());
        let group = KvmMsiGroup::new(router, &vm, 2).unwrap();
        let fds = group.eventfds().unwrap();
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        group.update(0, Some(msg)).unwrap();
        fds[0].write(1).unwrap();
        // KVM's irqfd reads the counter as soon as it is signalled.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(fds[0].read().is_err(), "attached: KVM consumed the signal");
        group.update(0, None).unwrap();
        fds[0].write(1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(
            fds[0].read().unwrap(),
            1,
            "masked: the signal stays pending"
        );
        // Unmask twice in a row is fine; a vector never routed stays detached.
        group.update(0, Some(msg)).unwrap();
        group.update(0, Some(msg)).unwrap();
        fds[1].write(1).unwrap();
        assert_eq!(fds[1].read().unwrap(), 1);
        assert!(group.update(7, None).is_err());
    }

    #[test]
    fn legacy_table_matches_the_madt() {
        let chip = |e: &kvm_irq_routing_entry| {
            // SAFETY: legacy_routes builds irqchip routes only, so `irqchip`
            // is the union member that was written.
            unsafe { e.u.irqchip }
        };
        let r = legacy_routes();
        // 16 GSIs on IOAPIC + PIC, 8 on the IOAPIC alone.
        assert_eq!(r.len(), 16 * 2 + 8);
        let gsi0 = r
            .iter()
            .find(|e| e.gsi == 0 && chip(e).irqchip == KVM_IRQCHIP_IOAPIC)
            .unwrap();
        assert_eq!(chip(gsi0).pin, 2);
    }
}
