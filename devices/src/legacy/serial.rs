//! 8250 UART (COM1) on top of vm-superio, raising its interrupt through an
//! eventfd that the VMM registers as a KVM irqfd.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::serial::NoEvents;
use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::state::StateError;

/// An interrupt line backed by an eventfd (registered with KVM as an irqfd).
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

type Uart = vm_superio::Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// The guest's serial console.
pub struct Serial {
    uart: Uart,
}

impl Serial {
    /// `interrupt` is signalled when the guest should see IRQ 4;
    /// everything the guest transmits goes to `out`.
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: vm_superio::Serial::new(EventFdTrigger::new(interrupt), out),
        }
    }

    /// Feed bytes typed by the user to the guest. Returns how many fit in the
    /// receive FIFO; the caller keeps the rest for later.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        let room = self.uart.fifo_capacity();
        let take = input.len().min(room);
        if take == 0 {
            return 0;
        }
        match self.uart.enqueue_raw_bytes(&input[..take]) {
            Ok(n) => n,
            Err(e) => {
                log::warn!("serial: dropping console input: {e:?}");
                0
            }
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_room(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn save_state(&self) -> SerialState {
        let s = self.uart.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Load saved registers, keeping this UART's interrupt line and output.
    pub fn restore_state(&mut self, saved: &SerialState) -> Result<(), StateError> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        let evt = |uart: &Uart| {
            uart.interrupt_evt()
                .0
                .try_clone()
                .map_err(|e| StateError::Invalid(format!("serial: {e}")))
        };
        // vm-superio builds a UART from state only as a new value: move the
        // output writer over from the current one.
        let placeholder = vm_superio::Serial::new(
            EventFdTrigger::new(evt(&self.uart)?),
            Box::new(io::sink()) as Box<dyn Write + Send>,
        );
        let old = std::mem::replace(&mut self.uart, placeholder);
        let trigger = EventFdTrigger::new(evt(&old)?);
        let out = old.into_writer();
        self.uart = vm_superio::Serial::from_state(&state, trigger, NoEvents, out)
            .map_err(|e| StateError::Invalid(format!("serial: {e:?}")))?;
        Ok(())
    }
}

/// The 8250's registers (vm-superio's state, with serde).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset > 7 {
            data.fill(0xff);
            return;
        }
        data[0] = self.uart.read(offset as u8);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset > 7 {
            return;
        }
        if let Err(e) = self.uart.write(offset as u8, data[0]) {
            log::warn!("serial: write failed: {e:?}");
        }
        // Console output should appear as the guest writes it.
        if offset == 0 {
            let _ = self.uart.writer_mut().flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmits_and_receives_with_interrupts() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let sink = Sink::default();
        let mut serial = Serial::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        for b in b"hi" {
            serial.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi");
        // Enable the received-data interrupt (IER bit 0), then feed input.
        serial.write(1, &[0x01]);
        assert_eq!(serial.enqueue_input(b"ok"), 2);
        assert!(irq.read().unwrap() >= 1, "input raised the interrupt");
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut c = [0u8];
        serial.read(0, &mut c);
        assert_eq!(c[0], b'o');
    }

    #[test]
    fn state_round_trips_into_a_new_uart() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut a = Serial::new(irq.try_clone().unwrap(), Box::new(io::sink()));
        a.write(7, &[0x42]); // scratch
        a.write(1, &[0x01]);
        a.enqueue_input(b"xy");
        let saved = a.save_state();
        let sink = Sink::default();
        let mut b = Serial::new(irq.try_clone().unwrap(), Box::new(sink.clone()));
        b.restore_state(&saved).unwrap();
        assert_eq!(b.save_state(), saved);
        let mut c = [0u8];
        b.read(0, &mut c);
        assert_eq!(c[0], b'x', "the receive FIFO came along");
        b.write(0, b"!");
        assert_eq!(&*sink.0.lock().unwrap(), b"!", "output stays the new one's");
    }
}
