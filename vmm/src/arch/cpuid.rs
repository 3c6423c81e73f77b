//! Guest CPUID built from KVM_GET_SUPPORTED_CPUID and normalised per vCPU.
//!
//! KVM's list says which features it can virtualise; we then describe a
//! machine of `vcpus` single-threaded cores in one socket: APIC ids, the
//! topology leaves (Intel 0x4/0xB/0x1F, AMD 0x8000_0008/0x8000_001D/
//! 0x8000_001E), the hypervisor bit, and masks for what the VMM does not
//! emulate (PMU, thermal/power management, MONITOR/MWAIT, nested
//! virtualisation).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    Intel,
    Amd,
    Other,
}

pub fn vendor(cpuid: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf0) = cpuid.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut id = [0u8; 12];
    id[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    id[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    id[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &id {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

/// Bits needed to number `n` items (ceil(log2(n))).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

const LEAF1_ECX_MONITOR: u32 = 1 << 3;
const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_PDCM: u32 = 1 << 15;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
const EXT1_ECX_SVM: u32 = 1 << 2;
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;

/// Normalise KVM's supported CPUID for vCPU `vcpu_id` of `vcpus`.
pub fn normalise(supported: &CpuId, vcpu_id: u8, vcpus: u8) -> CpuId {
    let mut cpuid = supported.clone();
    let vendor = vendor(cpuid.as_slice());
    let n = u32::from(vcpus.max(1));
    let apic_id = u32::from(vcpu_id);
    let core_bits = bits_for(n);
    for e in cpuid.as_mut_slice().iter_mut() {
        normalise_entry(e, vendor, apic_id, n, core_bits);
    }
    cpuid
}

fn normalise_entry(e: &mut kvm_cpuid_entry2, vendor: Vendor, apic_id: u32, n: u32, core_bits: u32) {
    match e.function {
        0x1 => {
            // EBX: APIC id, logical processors per package, CLFLUSH size (8
            // quadwords), brand index 0.
            e.ebx = (apic_id << 24) | ((1u32 << core_bits).max(n) << 16) | (8 << 8);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            e.ecx &= !(LEAF1_ECX_MONITOR | LEAF1_ECX_VMX | LEAF1_ECX_PDCM);
            // The in-kernel LAPIC emulates the TSC deadline timer even when
            // the host CPUID list leaves it out.
            e.ecx |= LEAF1_ECX_TSC_DEADLINE;
            if n > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
        }
        0x4 if vendor == Vendor::Intel => {
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { n - 1 } else { 0 };
            e.eax &= 0x3fff;
            e.eax |= (sharing << 14) | ((n - 1) << 26);
        }
        // Thermal and power management, PMU: not emulated.
        0x6 | 0xa => {
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xb | 0x1f => {
            // Level 0: SMT (one thread per core), level 1: cores.
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 1 << 8;
                }
                1 => {
                    e.eax = core_bits;
                    e.ebx = n;
                    e.ecx = (2 << 8) | 1;
                }
                other => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = other & 0xff;
                }
            }
            e.edx = apic_id;
        }
        0x8000_0001 => {
            e.ecx &= !EXT1_ECX_SVM;
            if vendor == Vendor::Amd && n > 1 {
                e.ecx |= EXT1_ECX_CMP_LEGACY;
            } else {
                e.ecx &= !EXT1_ECX_CMP_LEGACY;
            }
        }
        0x8000_0008 if vendor == Vendor::Amd => {
            // NC = cores - 1, ApicIdCoreIdSize.
            e.ecx = (core_bits << 12) | (n - 1);
        }
        0x8000_001d if vendor == Vendor::Amd => {
            let cache_level = (e.eax >> 5) & 0x7;
            let sharing = if cache_level >= 3 { n - 1 } else { 0 };
            e.eax = (e.eax & !(0xfff << 14)) | (sharing << 14);
        }
        0x8000_001e if vendor == Vendor::Amd => {
            e.eax = apic_id;
            // Core id = APIC id, one thread per core.
            e.ebx = apic_id & 0xff;
            e.ecx = 0;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn fake(vendor: &[u8; 12]) -> CpuId {
        let mut leaf0 = entry(0, 0);
        leaf0.eax = 0x1f;
        leaf0.ebx = u32::from_le_bytes(vendor[0..4].try_into().unwrap());
        leaf0.edx = u32::from_le_bytes(vendor[4..8].try_into().unwrap());
        leaf0.ecx = u32::from_le_bytes(vendor[8..12].try_into().unwrap());
        let mut leaf1 = entry(1, 0);
        leaf1.ecx = LEAF1_ECX_VMX | LEAF1_ECX_MONITOR;
        let mut l3 = entry(4, 3);
        l3.eax = 3 << 5;
        let mut ext1 = entry(0x8000_0001, 0);
        ext1.ecx = EXT1_ECX_SVM;
        CpuId::from_entries(&[
            leaf0,
            leaf1,
            l3,
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
            ext1,
            entry(0x8000_0008, 0),
            entry(0x8000_001e, 0),
        ])
        .unwrap()
    }

    fn find(c: &CpuId, f: u32, i: u32) -> kvm_cpuid_entry2 {
        *c.as_slice()
            .iter()
            .find(|e| e.function == f && e.index == i)
            .unwrap()
    }

    #[test]
    fn intel_topology_for_four_vcpus() {
        let c = normalise(&fake(b"GenuineIntel"), 3, 4);
        let l1 = find(&c, 1, 0);
        assert_eq!(l1.ebx >> 24, 3, "APIC id");
        assert_eq!((l1.ebx >> 16) & 0xff, 4, "logical processors");
        assert_ne!(l1.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(l1.ecx & (LEAF1_ECX_VMX | LEAF1_ECX_MONITOR), 0);
        assert_ne!(l1.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&c, 4, 3).eax >> 26, 3, "cores per package - 1");
        let smt = find(&c, 0xb, 0);
        let core = find(&c, 0xb, 1);
        assert_eq!((smt.ebx, smt.edx), (1, 3));
        assert_eq!((core.eax, core.ebx, core.edx), (2, 4, 3));
        assert_eq!((core.ecx >> 8) & 0xff, 2, "core level type");
        assert_eq!(find(&c, 0xb, 2).ecx >> 8, 0, "end of levels");
        assert_eq!(find(&c, 0x8000_0001, 0).ecx & EXT1_ECX_SVM, 0);
    }

    #[test]
    fn amd_core_count_and_single_vcpu() {
        let c = normalise(&fake(b"AuthenticAMD"), 1, 3);
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, (2 << 12) | 2);
        assert_eq!(find(&c, 0x8000_001e, 0).eax, 1);
        let one = normalise(&fake(b"AuthenticAMD"), 0, 1);
        assert_eq!(find(&one, 1, 0).edx & LEAF1_EDX_HTT, 0);
        assert_eq!(find(&one, 0x8000_0008, 0).ecx, 0);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(bits_for), [0, 1, 2, 2, 3, 5]);
    }
}
