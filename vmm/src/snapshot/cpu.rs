//! vCPU and VM-wide KVM state: what KVM holds for the guest outside guest
//! memory. Saved from parked vCPUs (no thread is in KVM_RUN), restored
//! into vCPUs created with the same CPUID before their threads start.

use kvm_bindings::{
    kvm_clock_data, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, Msrs,
    KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// MSR_IA32_TSC_DEADLINE: KVM computes the deadline against the TSC, so it
/// must be written after MSR_IA32_TSC (0x10) or the timer fires at the
/// wrong time (Firecracker orders them the same way).
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;
/// KVM's fam wrapper limit for one KVM_GET/SET_MSRS call.
const MSR_CHUNK: usize = 250;

fn kvm(op: &'static str) -> impl Fn(kvm_ioctls::Error) -> SnapshotError {
    move |source| SnapshotError::Kvm { op, source }
}

/// Everything KVM keeps for one vCPU. The x87/SSE state is inside `xsave`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    pub id: u8,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub vcpu_events: kvm_vcpu_events,
    /// Every MSR of KVM's save list that this vCPU returned, with the
    /// TSC and kvmclock MSRs among them; the TSC deadline comes last.
    pub msrs: Vec<kvm_msr_entry>,
    /// The guest's TSC frequency, when KVM reports one.
    pub tsc_khz: Option<u32>,
}

/// The in-kernel interrupt controllers, the PIT and the KVM clock.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// The MSR indices to save, in restore order.
pub fn msr_save_order(list: &[u32]) -> Vec<u32> {
    let mut v: Vec<u32> = list
        .iter()
        .copied()
        .filter(|&i| i != MSR_IA32_TSC_DEADLINE)
        .collect();
    if list.contains(&MSR_IA32_TSC_DEADLINE) {
        v.push(MSR_IA32_TSC_DEADLINE);
    }
    v
}

fn get_msrs(vcpu: &VcpuFd, list: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut out = Vec::with_capacity(list.len());
    let mut rest = list;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(MSR_CHUNK)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| SnapshotError::Invalid {
            what: "MSR list".into(),
            reason: format!("{e:?}"),
        })?;
        let n = vcpu.get_msrs(&mut msrs).map_err(kvm("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..n.min(chunk.len())]);
        if n < chunk.len() {
            // KVM stops at the first MSR it cannot read for this vCPU (one
            // the save list names but the CPU model lacks): skip it.
            log::debug!("MSR {:#x} is not readable; not saved", chunk[n]);
            rest = &rest[n + 1..];
        } else {
            rest = &rest[chunk.len()..];
        }
    }
    Ok(out)
}

fn set_msrs(vcpu: &VcpuFd, entries: &[kvm_msr_entry]) -> Result<(), SnapshotError> {
    for chunk in entries.chunks(MSR_CHUNK) {
        let msrs = Msrs::from_entries(chunk).map_err(|e| SnapshotError::Invalid {
            what: "MSR list".into(),
            reason: format!("{e:?}"),
        })?;
        let n = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if n < chunk.len() {
            return Err(SnapshotError::Invalid {
                what: "MSRs".into(),
                reason: format!(
                    "KVM refused MSR {:#x} (value {:#x}): the host CPU differs from the one the snapshot was taken on?",
                    chunk[n].index, chunk[n].data
                ),
            });
        }
    }
    Ok(())
}

pub fn save_vcpu(id: u8, vcpu: &VcpuFd, msr_list: &[u32]) -> Result<VcpuState, SnapshotError> {
    Ok(VcpuState {
        id,
        // mp_state first: reading it makes KVM settle pending APIC events.
        mp_state: vcpu.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
        regs: vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
        debugregs: vcpu.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
        lapic: vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
        vcpu_events: vcpu.get_vcpu_events().map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
        msrs: get_msrs(vcpu, &msr_save_order(msr_list))?,
        tsc_khz: vcpu.get_tsc_khz().ok(),
    })
}

/// Restore in Firecracker's order: the TSC frequency before the MSRs (the
/// TSC value is scaled by it), special registers before xsave, the LAPIC
/// before the MSRs (the TSC deadline timer lives in the LAPIC), the event
/// state (pending exceptions, NMI, interrupt shadow) last.
pub fn restore_vcpu(vcpu: &VcpuFd, s: &VcpuState) -> Result<(), SnapshotError> {
    if let Some(khz) = s.tsc_khz {
        if vcpu.get_tsc_khz().ok() != Some(khz) {
            if let Err(e) = vcpu.set_tsc_khz(khz) {
                log::warn!(
                    "vcpu{}: cannot set the TSC to {khz} kHz ({e}); guest time may drift",
                    s.id
                );
            }
        }
    }
    vcpu.set_mp_state(s.mp_state)
        .map_err(kvm("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&s.regs).map_err(kvm("KVM_SET_REGS"))?;
    vcpu.set_sregs(&s.sregs).map_err(kvm("KVM_SET_SREGS"))?;
    // SAFETY: `s.xsave` is a complete kvm_xsave (4 KiB) read back by
    // serde; KVM_SET_XSAVE reads exactly that structure.
    unsafe { vcpu.set_xsave(&s.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&s.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&s.debugregs)
        .map_err(kvm("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&s.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
    set_msrs(vcpu, &s.msrs)?;
    vcpu.set_vcpu_events(&s.vcpu_events)
        .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

fn get_chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).map_err(kvm("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

pub fn save_vm(vm: &VmFd) -> Result<VmState, SnapshotError> {
    Ok(VmState {
        pic_master: get_chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: get_chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: get_chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm("KVM_GET_CLOCK"))?,
    })
}

/// Restore before the vCPUs: the clock first, so that kvmclock reads in
/// the guest continue from the saved value (never backwards).
pub fn restore_vm(vm: &VmFd, s: &VmState) -> Result<(), SnapshotError> {
    let mut clock = s.clock;
    // KVM only accepts flags it can act on when setting (TSC_STABLE and
    // HOST_TSC are informational): set the plain value.
    clock.flags = 0;
    vm.set_clock(&clock).map_err(kvm("KVM_SET_CLOCK"))?;
    vm.set_pit2(&s.pit).map_err(kvm("KVM_SET_PIT2"))?;
    for (chip, want) in [
        (&s.pic_master, KVM_IRQCHIP_PIC_MASTER),
        (&s.pic_slave, KVM_IRQCHIP_PIC_SLAVE),
        (&s.ioapic, KVM_IRQCHIP_IOAPIC),
    ] {
        if chip.chip_id != want {
            return Err(SnapshotError::Invalid {
                what: "irqchip".into(),
                reason: format!("chip id {} where {want} was expected", chip.chip_id),
            });
        }
        vm.set_irqchip(chip).map_err(kvm("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsc_deadline_goes_last() {
        assert_eq!(
            msr_save_order(&[0x6e0, 0x10, 0x174]),
            vec![0x10, 0x174, 0x6e0]
        );
        assert_eq!(msr_save_order(&[0x10]), vec![0x10]);
    }
}
