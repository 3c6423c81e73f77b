//! ACPI tables: RSDP, XSDT, FADT (hardware-reduced), DSDT, MADT, MCFG.
//!
//! Hardware-reduced ACPI (as Cloud Hypervisor and Firecracker use) spares us
//! the PM timer, GPE blocks and SCI. Power is handled by one I/O port
//! ([`ACPI_PM_PORT`]): the FADT names it as both the reset register and the
//! sleep control register, so `reboot` and `poweroff` in the guest both reach
//! the VMM. The DSDT describes COM1 and the i8042 so that their drivers bind
//! through ACPI PNP, and `_S5_` so the guest knows how to power off.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{ACPI_END, ACPI_START, IOAPIC_ADDR, LAPIC_ADDR};

/// Port of the ACPI power-management device (reset and sleep control).
pub const ACPI_PM_PORT: u16 = 0x3c0;
/// Value the guest writes to [`ACPI_PM_PORT`] to reset.
pub const ACPI_RESET_VALUE: u8 = 0x1;
/// SLP_TYP for S5 (soft off), as announced in `_S5_`.
pub const ACPI_S5_SLP_TYP: u8 = 5;

const OEM_ID: [u8; 6] = *b"NTRVMM";
const OEM_TABLE_ID: [u8; 8] = *b"NTRVMM01";
const OEM_REVISION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    #[error("ACPI tables need {needed} bytes but only {room} fit below {ACPI_END:#x}")]
    TooLarge { needed: u64, room: u64 },
    #[error("cannot write ACPI tables into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// Where the PCI root's resources live (see `layout.rs`).
#[derive(Clone, Copy, Debug)]
pub struct PciResources {
    pub ecam_base: u64,
    pub ecam_size: u64,
    /// 32-bit MMIO window for BARs, inclusive bounds.
    pub mmio_start: u32,
    pub mmio_end: u32,
    /// INTA of slot s is routed to GSI `intx_gsi_base + (s - 1) % intx_lines`.
    pub intx_gsi_base: u32,
    pub intx_lines: u32,
}

impl PciResources {
    pub fn intx_gsi(&self, slot: u8) -> u32 {
        self.intx_gsi_base + (u32::from(slot).saturating_sub(1)) % self.intx_lines
    }
}

/// The PCI host bridge: bus 0, the legacy config ports, I/O and 32-bit
/// memory windows, the INTx routing table, and a motherboard resource
/// reserving ECAM (Linux only trusts MCFG when ECAM is reserved).
fn pci_aml(pci: &PciResources, sink: &mut Sdt) {
    let prt_entries: Vec<(u32, u32)> = (1u8..32)
        .map(|slot| ((u32::from(slot) << 16) | 0xffff, pci.intx_gsi(slot)))
        .collect();
    let prt_packages: Vec<aml::Package> = prt_entries
        .iter()
        .map(|(addr, gsi)| aml::Package::new(vec![addr, &0u8, &0u8, gsi]))
        .collect();
    let prt_refs: Vec<&dyn Aml> = prt_packages.iter().map(|p| p as &dyn Aml).collect();
    aml::Device::new(
        "_SB_.PCI0".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0A08")),
            &aml::Name::new("_CID".into(), &aml::EISAName::new("PNP0A03")),
            &aml::Name::new("_ADR".into(), &aml::ZERO),
            &aml::Name::new("_SEG".into(), &aml::ZERO),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_BBN".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::AddressSpace::new_bus_number(0u16, 0u16),
                    &aml::IO::new(0xcf8, 0xcf8, 1, 8),
                    &aml::AddressSpace::new_io(0u16, 0x0cf7u16, None),
                    &aml::AddressSpace::new_io(0x0d00u16, 0xffffu16, None),
                    &aml::AddressSpace::new_memory(
                        aml::AddressSpaceCacheable::NotCacheable,
                        true,
                        pci.mmio_start,
                        pci.mmio_end,
                        None,
                    ),
                ]),
            ),
            &aml::Name::new("_PRT".into(), &aml::Package::new(prt_refs)),
        ],
    )
    .to_aml_bytes(sink);
    aml::Device::new(
        "_SB_.MRES".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0C02")),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![&aml::Memory32Fixed::new(
                    false,
                    pci.ecam_base as u32,
                    pci.ecam_size as u32,
                )]),
            ),
        ],
    )
    .to_aml_bytes(sink);
}

fn mcfg(pci: &PciResources) -> Vec<u8> {
    let mut m = acpi_tables::mcfg::MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    m.add_ecam(pci.ecam_base, 0, 0, 0);
    let mut out = Vec::new();
    m.to_aml_bytes(&mut out);
    out
}

fn dsdt(pci: &PciResources) -> Sdt {
    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    pci_aml(pci, &mut dsdt);
    // Each object is serialised in one statement: the AML builders borrow
    // their children, which must outlive the call.
    aml::Device::new(
        "_SB_.COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(0x3f8, 0x3f8, 0, 8),
                    &aml::Interrupt::new(true, true, false, false, 4),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut dsdt);
    aml::Device::new(
        "_SB_.PS2_".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0303")),
            &aml::Name::new(
                "_CRS".into(),
                &aml::ResourceTemplate::new(vec![
                    &aml::IO::new(0x60, 0x60, 0, 1),
                    &aml::IO::new(0x64, 0x64, 0, 1),
                    &aml::Interrupt::new(true, true, false, false, 1),
                ]),
            ),
        ],
    )
    .to_aml_bytes(&mut dsdt);
    aml::Name::new(
        "_S5_".into(),
        &aml::Package::new(vec![&ACPI_S5_SLP_TYP, &0u8]),
    )
    .to_aml_bytes(&mut dsdt);
    dsdt
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let pm_port = GAS::new(
        AddressSpace::SystemIo,
        8,
        0,
        AccessSize::ByteAccess,
        u64::from(ACPI_PM_PORT),
    );
    let mut b = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .dsdt_64(dsdt_addr)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    b.reset_reg = pm_port;
    b.reset_value = ACPI_RESET_VALUE;
    b.sleep_control_reg = pm_port;
    b.sleep_status_reg = pm_port;
    // IA-PC boot architecture: 8042 present (bit 1); no VGA (bit 2); no
    // MSI quirks. The CMOS RTC is present, so bit 5 stays clear.
    b.iapc_boot_arch = ((1u16 << 1) | (1 << 2)).into();
    b.hypervisor_vendor_identity = u64::from_le_bytes(*b"NTRVMM\0\0").into();
    let mut out = Vec::new();
    b.finalize().to_aml_bytes(&mut out);
    out
}

/// MADT written by hand: acpi_tables has no interrupt source override
/// structure and no way to set PCAT_COMPAT.
fn madt(vcpus: u8) -> Sdt {
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write_u32(36, LAPIC_ADDR as u32);
    // PCAT_COMPAT: the dual 8259s exist (KVM emulates them) and must be
    // masked by the OS when it switches to the IOAPIC.
    madt.write_u32(40, 1);
    let mut body = Vec::new();
    for id in 0..vcpus {
        // Processor Local APIC: type 0, len 8, uid, apic id, flags=enabled.
        body.extend_from_slice(&[0, 8, id, id]);
        body.extend_from_slice(&1u32.to_le_bytes());
    }
    // I/O APIC: type 1, len 12, id, reserved, address, GSI base 0.
    body.extend_from_slice(&[1, 12, vcpus, 0]);
    body.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    // Interrupt source override: ISA IRQ 0 (PIT) arrives on GSI 2, which is
    // how KVM's default routing wires the PIT to the IOAPIC.
    body.extend_from_slice(&[2, 10, 0, 0]);
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    // Local APIC NMI: all processors (0xff), flags 0, LINT1.
    body.extend_from_slice(&[4, 6, 0xff, 0, 0, 1]);
    madt.append_slice(&body);
    madt
}

fn align8(addr: u64) -> u64 {
    (addr + 7) & !7
}

/// Build the tables for `vcpus` CPUs, write them at [`ACPI_START`] and return
/// the RSDP's address.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    vcpus: u8,
    pci: &PciResources,
) -> Result<GuestAddress, AcpiError> {
    let rsdp_addr = ACPI_START;
    let mut next = align8(rsdp_addr + Rsdp::len() as u64);

    let dsdt = dsdt(pci);
    let dsdt_addr = next;
    next = align8(next + dsdt.len() as u64);

    let fadt_addr = next;
    let fadt = fadt(dsdt_addr);
    next = align8(next + fadt.len() as u64);

    let madt = madt(vcpus);
    let madt_addr = next;
    next = align8(next + madt.len() as u64);

    let mcfg = mcfg(pci);
    let mcfg_addr = next;
    next = align8(next + mcfg.len() as u64);

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    xsdt.add_entry(mcfg_addr);
    let mut xsdt_bytes = Vec::new();
    xsdt.to_aml_bytes(&mut xsdt_bytes);
    let xsdt_addr = next;
    next += xsdt_bytes.len() as u64;

    if next > ACPI_END {
        return Err(AcpiError::TooLarge {
            needed: next - ACPI_START,
            room: ACPI_END - ACPI_START,
        });
    }
    let mut rsdp = Vec::new();
    Rsdp::new(OEM_ID, xsdt_addr).to_aml_bytes(&mut rsdp);
    mem.write_slice(&rsdp, GuestAddress(rsdp_addr))?;
    mem.write_slice(dsdt.as_slice(), GuestAddress(dsdt_addr))?;
    mem.write_slice(&fadt, GuestAddress(fadt_addr))?;
    mem.write_slice(madt.as_slice(), GuestAddress(madt_addr))?;
    mem.write_slice(&mcfg, GuestAddress(mcfg_addr))?;
    mem.write_slice(&xsdt_bytes, GuestAddress(xsdt_addr))?;
    log::debug!(
        "ACPI: RSDP {rsdp_addr:#x} XSDT {xsdt_addr:#x} FADT {fadt_addr:#x} DSDT {dsdt_addr:#x} MADT {madt_addr:#x}"
    );
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PCI: PciResources = PciResources {
        ecam_base: 0xe000_0000,
        ecam_size: 1 << 20,
        mmio_start: 0xc000_0000,
        mmio_end: 0xdfff_ffff,
        intx_gsi_base: 16,
        intx_lines: 8,
    };

    fn checksum_ok(bytes: &[u8]) -> bool {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)) == 0
    }

    fn table_at(mem: &GuestMemoryMmap, addr: u64) -> Vec<u8> {
        let mut hdr = [0u8; 8];
        mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        let len = u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as usize;
        let mut t = vec![0u8; len];
        mem.read_slice(&mut t, GuestAddress(addr)).unwrap();
        t
    }

    #[test]
    fn tables_chain_from_rsdp_with_valid_checksums() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        let rsdp = write_tables(&mem, 4, &PCI).unwrap();
        let mut r = [0u8; 36];
        mem.read_slice(&mut r, rsdp).unwrap();
        assert_eq!(&r[0..8], b"RSD PTR ");
        assert!(checksum_ok(&r[0..20]) && checksum_ok(&r));
        let xsdt_addr = u64::from_le_bytes(r[24..32].try_into().unwrap());
        let xsdt = table_at(&mem, xsdt_addr);
        assert_eq!(&xsdt[0..4], b"XSDT");
        assert!(checksum_ok(&xsdt));
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(entries.len(), 3);
        let mcfg = table_at(&mem, entries[2]);
        assert_eq!(&mcfg[0..4], b"MCFG");
        assert!(checksum_ok(&mcfg));
        assert_eq!(
            u64::from_le_bytes(mcfg[44..52].try_into().unwrap()),
            PCI.ecam_base
        );
        let fadt = table_at(&mem, entries[0]);
        assert_eq!(&fadt[0..4], b"FACP");
        assert!(checksum_ok(&fadt));
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "hardware-reduced");
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        let dsdt = table_at(&mem, x_dsdt);
        assert_eq!(&dsdt[0..4], b"DSDT");
        assert!(checksum_ok(&dsdt));
        for name in [b"_S5_", b"PCI0", b"_PRT", b"MRES"] {
            assert!(
                dsdt.windows(4).any(|w| w == name),
                "{}",
                String::from_utf8_lossy(name)
            );
        }
        let madt = table_at(&mem, entries[1]);
        assert_eq!(&madt[0..4], b"APIC");
        assert!(checksum_ok(&madt));
        // Count local APIC structures.
        let mut off = 44;
        let mut lapics = 0;
        while off < madt.len() {
            if madt[off] == 0 {
                lapics += 1;
            }
            off += madt[off + 1] as usize;
        }
        assert_eq!(lapics, 4);
    }

    #[test]
    fn thirty_two_vcpus_fit() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x20_0000)]).unwrap();
        assert!(write_tables(&mem, 32, &PCI).is_ok());
    }
}
