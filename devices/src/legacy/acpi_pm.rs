//! The one-byte ACPI power-management port of a hardware-reduced ACPI
//! machine: the FADT names it as the reset register and as the sleep
//! control register, so the guest's `reboot` and `poweroff` both land here.

use crate::bus::BusDevice;

/// What the guest asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerEvent {
    Reset,
    PowerOff,
}

const SLP_EN: u8 = 1 << 5;

pub struct AcpiPm {
    reset_value: u8,
    s5_slp_typ: u8,
    on_event: Box<dyn Fn(PowerEvent) + Send>,
}

impl AcpiPm {
    /// `reset_value` is the FADT's RESET_VALUE; `s5_slp_typ` the SLP_TYP
    /// announced in the DSDT's `_S5_` package.
    pub fn new(reset_value: u8, s5_slp_typ: u8, on_event: Box<dyn Fn(PowerEvent) + Send>) -> Self {
        Self {
            reset_value,
            s5_slp_typ,
            on_event,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: WAK_STS never set, we do not come back from S5.
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if value & SLP_EN != 0 {
            let slp_typ = (value >> 2) & 0x7;
            if slp_typ == self.s5_slp_typ {
                log::info!("ACPI: guest entered S5 (power off)");
                (self.on_event)(PowerEvent::PowerOff);
            } else {
                log::warn!("ACPI: ignoring unsupported sleep state SLP_TYP={slp_typ}");
            }
        } else if value == self.reset_value {
            log::info!("ACPI: guest requested a reset");
            (self.on_event)(PowerEvent::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn decodes_reset_and_s5() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut pm = AcpiPm::new(1, 5, Box::new(move |e| s.lock().unwrap().push(e)));
        pm.write(0, &[1]);
        pm.write(0, &[(5 << 2) | SLP_EN]);
        pm.write(0, &[(3 << 2) | SLP_EN]); // S3: unsupported, ignored
        pm.write(0, &[5 << 2]); // no SLP_EN: nothing
        assert_eq!(
            *seen.lock().unwrap(),
            vec![PowerEvent::Reset, PowerEvent::PowerOff]
        );
    }
}
