//! A four-instruction "BIOS" at the x86 reset vector.
//!
//! There is no firmware, but Linux may still jump there: on a
//! hardware-reduced ACPI machine without EFI its default reboot method is
//! EFI, which falls back to `machine_real_restart()` — real mode, then a far
//! jump to F000:FFF0. Whatever sits at 0xffff0 then runs. We put code there
//! that asks the ACPI power port for a reset, so every reboot path ends the
//! VM cleanly instead of spinning on zeroed memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::acpi::{ACPI_PM_PORT, ACPI_RESET_VALUE};

/// Physical address of F000:FFF0.
pub const RESET_VECTOR: u64 = 0xffff0;

/// Real-mode code: `mov dx, ACPI_PM_PORT; mov al, RESET; out dx, al; cli; hlt`.
pub fn reset_stub() -> [u8; 9] {
    let port = ACPI_PM_PORT.to_le_bytes();
    [
        0xBA,
        port[0],
        port[1],
        0xB0,
        ACPI_RESET_VALUE,
        0xEE,
        0xFA,
        0xF4,
        0x90,
    ]
}

pub fn write(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_slice(&reset_stub(), GuestAddress(RESET_VECTOR))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_targets_the_acpi_reset_port_and_fits_before_1mib() {
        let s = reset_stub();
        assert_eq!(&s[..3], &[0xBA, 0xC0, 0x03]);
        assert!(RESET_VECTOR + s.len() as u64 <= 0x10_0000);
    }
}
