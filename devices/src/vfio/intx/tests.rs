//! INTx/MSI-X exclusivity and the line/pin registers, against a fake VFIO
//! that enforces the kernel's rules (vfio_pci_set_irqs_ioctl: one interrupt
//! type at a time, the unmask eventfd only while INTx is on) and a fake
//! KVM line.

use std::sync::Mutex;

use super::*;

#[derive(Default)]
struct FakeState {
    calls: Vec<String>,
    intx: bool,
    msix: bool,
    /// The irqfd KVM has on the GSI.
    attached: bool,
    fail_intx: bool,
    fail_attach: bool,
}

struct Fake {
    count: u32,
    s: Mutex<FakeState>,
}

impl Fake {
    fn new(count: u32) -> Arc<Self> {
        Arc::new(Self {
            count,
            s: Mutex::new(FakeState::default()),
        })
    }
    fn calls(&self) -> Vec<String> {
        std::mem::take(&mut self.s.lock().unwrap().calls)
    }
    fn log(&self, call: &str) -> std::sync::MutexGuard<'_, FakeState> {
        let mut s = self.s.lock().unwrap();
        s.calls.push(call.into());
        s
    }
}

impl VfioIrqs for Fake {
    fn intx_count(&self) -> u32 {
        self.count
    }
    fn enable_intx(&self, _: &EventFd) -> Result<(), VfioError> {
        let mut s = self.log("vfio intx trigger");
        if s.msix || s.fail_intx || self.count == 0 {
            return Err(VfioError::VfioDeviceEnableIrq);
        }
        s.intx = true;
        Ok(())
    }
    fn set_intx_unmask(&self, _: &EventFd) -> Result<(), VfioError> {
        let s = self.log("vfio intx unmask");
        if !s.intx {
            return Err(VfioError::VfioDeviceSetIrqResampleFd);
        }
        Ok(())
    }
    fn disable_intx(&self) -> Result<(), VfioError> {
        let mut s = self.log("vfio intx off");
        s.intx = false;
        Ok(())
    }
    fn enable_msix(&self, fds: &[&EventFd]) -> Result<(), VfioError> {
        let mut s = self.log(&format!("vfio msix {}", fds.len()));
        if s.intx {
            return Err(VfioError::VfioDeviceEnableIrq);
        }
        s.msix = true;
        Ok(())
    }
    fn disable_msix(&self) -> Result<(), VfioError> {
        let mut s = self.log("vfio msix off");
        s.msix = false;
        Ok(())
    }
}

struct FakeLine(Arc<Fake>);

impl IntxLine for FakeLine {
    fn gsi(&self) -> u32 {
        17
    }
    fn attach(&self, _: &EventFd, _: &EventFd) -> io::Result<()> {
        let mut s = self.0.log("kvm attach");
        if s.fail_attach {
            return Err(io::Error::other("no irqchip"));
        }
        s.attached = true;
        Ok(())
    }
    fn detach(&self, _: &EventFd) -> io::Result<()> {
        let mut s = self.0.log("kvm detach");
        s.attached = false;
        Ok(())
    }
}

fn control(fake: &Arc<Fake>, pin: u8) -> IrqControl {
    let line: Arc<dyn IntxLine> = Arc::new(FakeLine(Arc::clone(fake)));
    IrqControl::new(
        Arc::clone(fake) as Arc<dyn VfioIrqs>,
        pin,
        Some(line),
        "test".into(),
    )
    .unwrap()
}

fn config(ctl: &IrqControl, offset: usize, len: usize) -> Vec<u8> {
    // What the device itself has there: line 0x0a, pin 2, Min_Gnt/Max_Lat.
    let device = [0x0a, 0x02, 0x11, 0x22];
    let mut data = device[offset - INTERRUPT_LINE..][..len].to_vec();
    ctl.read_config(offset, &mut data);
    data
}

#[test]
fn intx_is_wired_at_start_kvm_before_vfio() {
    let fake = Fake::new(1);
    let ctl = control(&fake, 1);
    assert_eq!(
        fake.calls(),
        ["kvm attach", "vfio intx trigger", "vfio intx unmask"]
    );
    assert!(ctl.intx_on() && !ctl.msix_on());
    assert_eq!(ctl.intx_gsi(), Some(17));
    // Line = the GSI the _PRT gives the slot; pin INTA; the rest as read.
    assert_eq!(config(&ctl, INTERRUPT_LINE, 4), [17, 1, 0x11, 0x22]);
}

#[test]
fn line_is_guest_scratch_and_pin_read_only() {
    let fake = Fake::new(1);
    let mut ctl = control(&fake, 1);
    fake.calls();
    assert!(ctl.write_config(INTERRUPT_LINE, &[0x0b]));
    assert_eq!(config(&ctl, INTERRUPT_LINE, 1), [0x0b]);
    // A dword write: the line changes, the pin does not, nothing reaches VFIO.
    assert!(ctl.write_config(INTERRUPT_LINE, &[0x05, 0x04, 0xff, 0xff]));
    assert_eq!(config(&ctl, INTERRUPT_LINE, 2), [0x05, 1]);
    assert!(ctl.write_config(INTERRUPT_PIN, &[3]));
    assert_eq!(config(&ctl, INTERRUPT_PIN, 1), [1]);
    // Writes elsewhere are not ours.
    assert!(!ctl.write_config(0x04, &[0x06, 0x04]));
    assert!(!ctl.write_config(0x38, &[0; 4]));
    assert!(!ctl.write_config(0x40, &[0; 4]));
    assert!(fake.calls().is_empty());
    // A device on pin B is INTA in the guest's slot.
    let fake = Fake::new(1);
    assert_eq!(control(&fake, 2).pin(), 1);
}

#[test]
fn msix_and_intx_are_exclusive() {
    let fake = Fake::new(1);
    let mut ctl = control(&fake, 1);
    fake.calls();
    let fds: Vec<EventFd> = (0..3).map(|_| EventFd::new(0).unwrap()).collect();
    let refs: Vec<&EventFd> = fds.iter().collect();
    ctl.enable_msix(&refs).unwrap();
    assert_eq!(
        fake.calls(),
        ["vfio intx off", "kvm detach", "vfio msix 3"],
        "INTx off in VFIO and KVM before MSI-X"
    );
    assert!(ctl.msix_on() && !ctl.intx_on());
    assert!(!fake.s.lock().unwrap().attached);
    // Enabling twice does nothing.
    ctl.enable_msix(&refs).unwrap();
    assert!(fake.calls().is_empty());
    ctl.disable_msix().unwrap();
    assert_eq!(
        fake.calls(),
        [
            "vfio msix off",
            "kvm attach",
            "vfio intx trigger",
            "vfio intx unmask"
        ],
        "back to INTx after MSI-X"
    );
    assert!(ctl.intx_on() && !ctl.msix_on());
    // Disabling MSI-X that is off leaves INTx as it is.
    ctl.disable_msix().unwrap();
    assert!(fake.calls().is_empty());
}

#[test]
fn teardown_turns_everything_off_once() {
    let fake = Fake::new(1);
    let mut ctl = control(&fake, 1);
    fake.calls();
    ctl.teardown();
    assert_eq!(fake.calls(), ["vfio intx off", "kvm detach"]);
    drop(ctl);
    assert!(fake.calls().is_empty(), "drop after teardown: nothing left");
    {
        let s = fake.s.lock().unwrap();
        assert!(!s.intx && !s.msix && !s.attached);
    }
    // With MSI-X on, drop disables MSI-X; INTx is already off.
    let fake = Fake::new(1);
    let mut ctl = control(&fake, 1);
    let fd = EventFd::new(0).unwrap();
    ctl.enable_msix(&[&fd]).unwrap();
    fake.calls();
    drop(ctl);
    assert_eq!(fake.calls(), ["vfio msix off"]);
}

#[test]
fn no_intx_without_pin_or_vfio_count() {
    // A VF: VFIO reports no INTx, whatever the pin register says.
    for (count, pin) in [(0, 1), (1, 0)] {
        let fake = Fake::new(count);
        let mut ctl = control(&fake, pin);
        assert_eq!(ctl.pin(), 0);
        assert_eq!(ctl.intx_gsi(), None);
        assert_eq!(config(&ctl, INTERRUPT_LINE, 2), [0xff, 0]);
        assert!(fake.calls().is_empty());
        let fd = EventFd::new(0).unwrap();
        ctl.enable_msix(&[&fd]).unwrap();
        ctl.disable_msix().unwrap();
        assert_eq!(fake.calls(), ["vfio msix 1", "vfio msix off"]);
    }
}

#[test]
fn failed_wiring_hides_the_pin_and_undoes_what_was_done() {
    // VFIO refuses INTx (e.g. a shared line without INTx masking): the
    // irqfd is removed again and the guest sees no pin.
    let fake = Fake::new(1);
    fake.s.lock().unwrap().fail_intx = true;
    let ctl = control(&fake, 1);
    assert_eq!(
        fake.calls(),
        ["kvm attach", "vfio intx trigger", "kvm detach"]
    );
    assert_eq!(ctl.pin(), 0);
    assert!(!fake.s.lock().unwrap().attached);
    // KVM refuses the irqfd: VFIO is never asked.
    let fake = Fake::new(1);
    fake.s.lock().unwrap().fail_attach = true;
    let ctl = control(&fake, 1);
    assert_eq!(fake.calls(), ["kvm attach"]);
    assert_eq!(ctl.pin(), 0);
}

#[test]
fn stale_counts_are_dropped_before_attaching() {
    let fake = Fake::new(1);
    let mut ctl = control(&fake, 1);
    let fd = EventFd::new(0).unwrap();
    ctl.enable_msix(&[&fd]).unwrap();
    // The device signalled while INTx was being torn down.
    let intx = ctl.intx.as_ref().unwrap();
    intx.trigger.write(1).unwrap();
    intx.resample.write(1).unwrap();
    ctl.disable_msix().unwrap();
    let intx = ctl.intx.as_ref().unwrap();
    assert!(intx.trigger.read().is_err(), "no stale trigger");
    assert!(intx.resample.read().is_err(), "no stale resample");
}
