//! Legacy PC devices: 8250 UART, i8042, boot timer, CMOS RTC, ACPI power port.

mod acpi_pm;
mod boot_timer;
mod cmos;
mod i8042;
mod serial;

pub use acpi_pm::{AcpiPm, PowerEvent};
pub use boot_timer::{BootTimer, BOOT_TIMER_PORT};
pub use cmos::{Cmos, CmosState};
pub use i8042::{I8042State, I8042};
pub use serial::{EventFdTrigger, Serial, SerialState};
