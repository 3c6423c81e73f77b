//! Interrupts of a passed-through function: legacy INTx and MSI-X, which
//! VFIO only lets be enabled one at a time.
//!
//! INTx is a level interrupt, so it cannot simply be an eventfd like an
//! MSI-X vector: the line must stay asserted until the guest has serviced
//! the device. VFIO and KVM split that between them without the VMM:
//! - VFIO masks the host line when the device raises it and signals the
//!   *trigger* eventfd (`SET_IRQS ACTION_TRIGGER|DATA_EVENTFD`);
//! - the trigger eventfd is a KVM irqfd with `KVM_IRQFD_FLAG_RESAMPLE` on
//!   the slot's GSI: KVM asserts the IOAPIC pin and, when the guest EOIs
//!   it, deasserts it and signals the *resample* eventfd;
//! - the resample eventfd is VFIO's unmask eventfd (`SET_IRQS
//!   ACTION_UNMASK|DATA_EVENTFD`): VFIO unmasks the host line, and a device
//!   that still wants service raises it again.
//!
//! INTx is on while the guest has not enabled MSI-X (the plain MSI
//! capability is hidden from the guest, see `msi_unlink`), as in QEMU:
//! enabling MSI-X first turns INTx off in VFIO and detaches the irqfd,
//! disabling MSI-X turns INTx back on.

use std::io;
use std::sync::Arc;

use vfio_bindings::bindings::vfio::{VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX};
use vfio_ioctls::{VfioDevice, VfioError};
use vmm_sys_util::eventfd::EventFd;

/// Interrupt Line: routing information the guest's firmware (or the guest)
/// writes and drivers read; no meaning to the device, so it is ours.
pub const INTERRUPT_LINE: usize = 0x3c;
/// Interrupt Pin: which INTx pin the function uses (0: none, 1: INTA).
pub const INTERRUPT_PIN: usize = 0x3d;
/// The INTx dword: line, pin, and the read-only Min_Gnt/Max_Lat.
const INTX_DWORD: std::ops::Range<usize> = INTERRUPT_LINE..INTERRUPT_LINE + 4;
const PIN_INTA: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum IntxError {
    #[error("VFIO INTx: {0}")]
    Vfio(#[source] VfioError),
    #[error("VFIO MSI-X: {0}")]
    Msix(#[source] VfioError),
    #[error("KVM resampling irqfd on GSI {gsi}: {source}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: io::Error,
    },
    #[error("INTx eventfd: {0}")]
    EventFd(#[source] io::Error),
}

/// The VFIO calls for a function's interrupts (a trait so that the
/// exclusivity logic can be tested without hardware).
pub trait VfioIrqs: Send + Sync {
    /// How many INTx interrupts VFIO offers (0: none; VFs never have one).
    fn intx_count(&self) -> u32;
    /// VFIO signals `trigger` (and masks the line) when the device raises INTx.
    fn enable_intx(&self, trigger: &EventFd) -> Result<(), VfioError>;
    /// VFIO unmasks the line when `resample` is signalled.
    fn set_intx_unmask(&self, resample: &EventFd) -> Result<(), VfioError>;
    /// `SET_IRQS DATA_NONE|ACTION_TRIGGER` with count 0: INTx off (and
    /// its unmask eventfd released).
    fn disable_intx(&self) -> Result<(), VfioError>;
    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), VfioError>;
    fn disable_msix(&self) -> Result<(), VfioError>;
}

impl VfioIrqs for VfioDevice {
    fn intx_count(&self) -> u32 {
        self.get_irq_info(VFIO_PCI_INTX_IRQ_INDEX)
            .map(|i| i.count)
            .unwrap_or(0)
    }
    fn enable_intx(&self, trigger: &EventFd) -> Result<(), VfioError> {
        self.enable_irq(VFIO_PCI_INTX_IRQ_INDEX, vec![trigger])
    }
    fn set_intx_unmask(&self, resample: &EventFd) -> Result<(), VfioError> {
        self.set_irq_resample_fd(VFIO_PCI_INTX_IRQ_INDEX, vec![resample])
    }
    fn disable_intx(&self) -> Result<(), VfioError> {
        self.disable_irq(VFIO_PCI_INTX_IRQ_INDEX)
    }
    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), VfioError> {
        self.enable_irq(VFIO_PCI_MSIX_IRQ_INDEX, fds.to_vec())
    }
    fn disable_msix(&self) -> Result<(), VfioError> {
        self.disable_irq(VFIO_PCI_MSIX_IRQ_INDEX)
    }
}

/// The guest's end of the INTx line: the slot's GSI in KVM (the VMM's
/// implementation registers resampling irqfds on the VM).
pub trait IntxLine: Send + Sync {
    fn gsi(&self) -> u32;
    /// `trigger` asserts the GSI as a level interrupt; the guest's EOI
    /// deasserts it and signals `resample`.
    fn attach(&self, trigger: &EventFd, resample: &EventFd) -> io::Result<()>;
    /// Remove the irqfd (KVM deasserts the line).
    fn detach(&self, trigger: &EventFd) -> io::Result<()>;
}

/// A function's INTx: the eventfds and whether VFIO/KVM have them now.
struct Intx {
    line: Arc<dyn IntxLine>,
    trigger: EventFd,
    resample: EventFd,
    on: bool,
}

impl Intx {
    fn enable(&mut self, vfio: &dyn VfioIrqs) -> Result<(), IntxError> {
        if self.on {
            return Ok(());
        }
        // Counts left from an earlier period would be delivered as soon as
        // the irqfd is attached: a spurious interrupt (and unmask).
        let _ = self.trigger.read();
        let _ = self.resample.read();
        let gsi = self.line.gsi();
        self.line
            .attach(&self.trigger, &self.resample)
            .map_err(|source| IntxError::Irqfd { gsi, source })?;
        // KVM first: an interrupt the device raises as soon as VFIO has the
        // trigger eventfd must find the irqfd (it would otherwise only be
        // counted). A resample signalled before VFIO has the unmask
        // eventfd is still seen: VFIO checks the count when it attaches.
        if let Err(e) = vfio.enable_intx(&self.trigger) {
            let _ = self.line.detach(&self.trigger);
            return Err(IntxError::Vfio(e));
        }
        if let Err(e) = vfio.set_intx_unmask(&self.resample) {
            let _ = vfio.disable_intx();
            let _ = self.line.detach(&self.trigger);
            return Err(IntxError::Vfio(e));
        }
        self.on = true;
        Ok(())
    }

    /// Both steps are attempted; the first error is returned.
    fn disable(&mut self, vfio: &dyn VfioIrqs) -> Result<(), IntxError> {
        if !self.on {
            return Ok(());
        }
        self.on = false;
        // VFIO first, so the device cannot signal a detached eventfd.
        let v = vfio.disable_intx().map_err(IntxError::Vfio);
        let gsi = self.line.gsi();
        let k = self
            .line
            .detach(&self.trigger)
            .map_err(|source| IntxError::Irqfd { gsi, source });
        v.and(k)
    }
}

/// INTx and MSI-X of one passed-through function, and the config-space
/// registers of INTx (line and pin).
pub struct IrqControl {
    vfio: Arc<dyn VfioIrqs>,
    /// None: the function has no INTx (a VF, or a device without a pin).
    intx: Option<Intx>,
    msix_on: bool,
    /// The Interrupt Line register as the guest last wrote it.
    guest_line: u8,
    name: String,
}

impl IrqControl {
    /// `device_pin` is the Interrupt Pin the function reports. With a pin,
    /// INTx from VFIO and a `line`, INTx is wired at once (the guest starts
    /// with MSI-X off); if that fails the function is shown without INTx.
    pub fn new(
        vfio: Arc<dyn VfioIrqs>,
        device_pin: u8,
        line: Option<Arc<dyn IntxLine>>,
        name: String,
    ) -> Result<Self, IntxError> {
        let mut ctl = Self {
            vfio,
            intx: None,
            msix_on: false,
            guest_line: 0xff,
            name,
        };
        let count = ctl.vfio.intx_count();
        let Some(line) = line.filter(|_| device_pin != 0 && count > 0) else {
            log::info!(
                "vfio {}: no INTx (pin {device_pin}, VFIO count {count})",
                ctl.name
            );
            return Ok(ctl);
        };
        // What firmware would have written: the GSI the _PRT routes the
        // slot's INTA to (GSIs 16..24 fit a byte).
        ctl.guest_line = u8::try_from(line.gsi()).unwrap_or(0xff);
        let mut intx = Intx {
            line,
            trigger: EventFd::new(libc::EFD_NONBLOCK).map_err(IntxError::EventFd)?,
            resample: EventFd::new(libc::EFD_NONBLOCK).map_err(IntxError::EventFd)?,
            on: false,
        };
        match intx.enable(ctl.vfio.as_ref()) {
            Ok(()) => {
                log::info!(
                    "vfio {}: INTx on GSI {} (device pin {device_pin})",
                    ctl.name,
                    intx.line.gsi()
                );
                ctl.intx = Some(intx);
            }
            // MSI-X still works; a pin the guest could not be served on
            // would only make it wait for interrupts that never come.
            Err(e) => log::warn!("vfio {}: INTx not available: {e}", ctl.name),
        }
        Ok(ctl)
    }

    /// The Interrupt Pin the guest sees: INTA whenever INTx is wired. The
    /// function is alone in its guest slot (function 0), where the _PRT
    /// routes INTA; which pin it uses on the host does not matter to the
    /// guest, VFIO hands over its one INTx either way.
    pub fn pin(&self) -> u8 {
        if self.intx.is_some() {
            PIN_INTA
        } else {
            0
        }
    }

    /// The GSI of the function's INTx, if it has one.
    pub fn intx_gsi(&self) -> Option<u32> {
        self.intx.as_ref().map(|i| i.line.gsi())
    }

    /// Whether INTx is routed to the guest right now.
    pub fn intx_on(&self) -> bool {
        self.intx.as_ref().is_some_and(|i| i.on)
    }

    pub fn msix_on(&self) -> bool {
        self.msix_on
    }

    /// The guest enabled MSI-X: INTx off first (VFIO refuses MSI-X while
    /// INTx is on), then VFIO signals `fds`, one per vector.
    pub fn enable_msix(&mut self, fds: &[&EventFd]) -> Result<(), IntxError> {
        if self.msix_on {
            return Ok(());
        }
        if let Some(intx) = self.intx.as_mut() {
            intx.disable(self.vfio.as_ref())?;
        }
        self.vfio.enable_msix(fds).map_err(IntxError::Msix)?;
        self.msix_on = true;
        Ok(())
    }

    /// The guest disabled MSI-X: back to INTx.
    pub fn disable_msix(&mut self) -> Result<(), IntxError> {
        if self.msix_on {
            self.msix_on = false;
            self.vfio.disable_msix().map_err(IntxError::Msix)?;
        }
        match self.intx.as_mut() {
            Some(intx) => intx.enable(self.vfio.as_ref()),
            None => Ok(()),
        }
    }

    /// Everything off (device release): MSI-X and INTx in VFIO, the irqfd
    /// in KVM. Errors are logged; the function is reset next anyway.
    pub fn teardown(&mut self) {
        if self.msix_on {
            self.msix_on = false;
            if let Err(e) = self.vfio.disable_msix() {
                log::warn!("vfio {}: cannot disable MSI-X: {e}", self.name);
            }
        }
        if let Some(intx) = self.intx.as_mut() {
            if let Err(e) = intx.disable(self.vfio.as_ref()) {
                log::warn!("vfio {}: cannot disable INTx: {e}", self.name);
            }
        }
    }

    /// Overlay the virtualised line and pin on config bytes read from the
    /// device at `offset`.
    pub fn read_config(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            match offset + i {
                INTERRUPT_LINE => *b = self.guest_line,
                INTERRUPT_PIN => *b = self.pin(),
                _ => {}
            }
        }
    }

    /// Take a guest write touching the INTx dword: the line is scratch the
    /// guest may write, pin and Min_Gnt/Max_Lat are read-only. Returns
    /// whether the write was consumed here.
    pub fn write_config(&mut self, offset: usize, data: &[u8]) -> bool {
        let end = offset + data.len();
        if offset >= INTX_DWORD.end || end <= INTX_DWORD.start {
            return false;
        }
        if let Some(&b) = INTERRUPT_LINE.checked_sub(offset).and_then(|i| data.get(i)) {
            self.guest_line = b;
        }
        true
    }
}

impl Drop for IrqControl {
    fn drop(&mut self) {
        self.teardown();
    }
}

#[cfg(test)]
mod tests;
