//! The guest physical address map (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT              0x0000_7000  zero page (boot_params)
//! 0x0000_0520  IDT              0x0000_8ff0  boot stack top
//! 0x0000_6000  PVH start_info   0x0000_9000  PML4, PDPTE at 0xa000, PDEs at 0xb000..
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  EBDA start (RAM below it)
//! 0x000e_0000  ACPI RSDP and tables   0x000f_0000  SMBIOS entry point and tables
//! 0x0010_0000  kernel (1 MiB)  ...  initrd at the top of low RAM
//! 0xc000_0000  32-bit MMIO hole: devices, PCI BARs, ECAM, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when the guest has more than 3 GiB
//! ```

pub const GDT_START: u64 = 0x500;
pub const IDT_START: u64 = 0x520;
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = PVH_INFO_START + 0x100;
pub const PVH_MEMMAP_START: u64 = PVH_INFO_START + 0x200;
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
/// Four PD pages identity-map the first 4 GiB with 2 MiB pages.
pub const PDE_START: u64 = 0xb000;
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 0x10000;
pub const EBDA_START: u64 = 0x9fc00;
pub const ACPI_START: u64 = 0xe0000;
pub const ACPI_END: u64 = 0xf0000;
pub const SMBIOS_START: u64 = 0xf0000;
pub const SMBIOS_END: u64 = 0x100000;
pub const HIMEM_START: u64 = 0x100000;

/// Start of the 32-bit MMIO hole; RAM stops here and resumes at 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const FOUR_GIB: u64 = 0x1_0000_0000;
pub const MMIO_HOLE_SIZE: u64 = FOUR_GIB - MMIO_HOLE_START;

/// PCI BARs are allocated from here up to the ECAM window.
pub const PCI_MMIO_START: u64 = MMIO_HOLE_START;
pub const PCI_MMIO_SIZE: u64 = 0x2000_0000;
/// ECAM for bus 0 (1 MiB: 32 devices x 8 functions x 4 KiB).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
pub const PCI_ECAM_SIZE: u64 = 1 << 20;

pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
pub const LAPIC_ADDR: u64 = 0xfee0_0000;

/// KVM needs three pages for the TSS and one for the identity map, placed
/// inside the hole just below the IOAPIC where nothing else lives.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// RAM ranges `(start, len)` for a guest of `mem_bytes`.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_HOLE_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_HOLE_START),
            (FOUR_GIB, mem_bytes - MMIO_HOLE_START),
        ]
    }
}

/// End of RAM below the MMIO hole (exclusive).
pub fn low_ram_end(mem_bytes: u64) -> u64 {
    mem_bytes.min(MMIO_HOLE_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_hole() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(MMIO_HOLE_START), vec![(0, MMIO_HOLE_START)]);
        let big = ram_ranges(4 << 30);
        assert_eq!(big, vec![(0, MMIO_HOLE_START), (FOUR_GIB, 1 << 30)]);
        let total: u64 = big.iter().map(|r| r.1).sum();
        assert_eq!(total, 4 << 30);
    }
}
