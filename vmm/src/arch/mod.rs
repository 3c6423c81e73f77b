//! x86_64 machine description: memory layout, CPUID, registers, firmware
//! tables (ACPI, SMBIOS) and the e820 map.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod regs;
pub mod reset_vector;
pub mod smbios;
