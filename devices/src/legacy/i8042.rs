//! i8042 PS/2 controller with a keyboard behind it, enough for two things:
//! the guest's reboot path (command 0xFE, "pulse reset line") ends the VM, and
//! the VMM can send Ctrl+Alt+Del to the guest as keystrokes on IRQ 1.
//!
//! Mapped at port 0x60 (data, offset 0) through 0x64 (status/command,
//! offset 4).

use std::collections::VecDeque;

use vmm_sys_util::eventfd::EventFd;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::state::StateError;

/// The controller's registers and its output buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    pub status: u8,
    pub control: u8,
    pub output_port: u8,
    pub pending_cmd: Option<u8>,
    pub pending_kbd_cmd: Option<u8>,
    pub buffer: Vec<u8>,
}

const OFFSET_DATA: u64 = 0;
const OFFSET_COMMAND: u64 = 4;

// Status register bits.
const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

// Controller configuration byte bits.
const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;
const CB_KBD_DISABLED: u8 = 0x10;

// Controller commands (port 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xA7;
const CMD_ENABLE_AUX: u8 = 0xA8;
const CMD_TEST_AUX: u8 = 0xA9;
const CMD_SELF_TEST: u8 = 0xAA;
const CMD_TEST_KBD: u8 = 0xAB;
const CMD_DISABLE_KBD: u8 = 0xAD;
const CMD_ENABLE_KBD: u8 = 0xAE;
const CMD_READ_OUTP: u8 = 0xD0;
const CMD_WRITE_OUTP: u8 = 0xD1;
const CMD_WRITE_KBD_BUFFER: u8 = 0xD2;
const CMD_PULSE_RESET: u8 = 0xFE;

// Keyboard commands (port 0x60) and replies.
const KBD_SET_LEDS: u8 = 0xED;
const KBD_SCANCODE_SET: u8 = 0xF0;
const KBD_GET_ID: u8 = 0xF2;
const KBD_SET_TYPEMATIC: u8 = 0xF3;
const KBD_RESET: u8 = 0xFF;
const KBD_ACK: u8 = 0xFA;
const KBD_SELF_TEST_OK: u8 = 0xAA;

/// Scan-code set 2 sequences for Ctrl+Alt+Del (press, then release). The
/// controller starts with translation off, so the guest's atkbd driver reads
/// set 2 directly.
const CTRL_ALT_DEL: &[u8] = &[
    0x14, 0x11, 0xE0, 0x71, // press: left ctrl, left alt, delete
    0xE0, 0xF0, 0x71, 0xF0, 0x11, 0xF0, 0x14, // release in reverse
];

const BUFFER_LIMIT: usize = 64;

pub struct I8042 {
    reset_evt: EventFd,
    kbd_irq: EventFd,
    status: u8,
    control: u8,
    output_port: u8,
    /// A controller command waiting for its data byte.
    pending_cmd: Option<u8>,
    /// A keyboard command waiting for its parameter byte.
    pending_kbd_cmd: Option<u8>,
    buffer: VecDeque<u8>,
    reset_requested: bool,
}

impl I8042 {
    /// `reset_evt` is signalled when the guest asks for a reset (reboot);
    /// `kbd_irq` raises IRQ 1.
    pub fn new(reset_evt: EventFd, kbd_irq: EventFd) -> Self {
        Self {
            reset_evt,
            kbd_irq,
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            control: CB_POST_OK | CB_KBD_INT,
            output_port: 0x01,
            pending_cmd: None,
            pending_kbd_cmd: None,
            buffer: VecDeque::new(),
            reset_requested: false,
        }
    }

    pub fn save_state(&self) -> I8042State {
        I8042State {
            status: self.status,
            control: self.control,
            output_port: self.output_port,
            pending_cmd: self.pending_cmd,
            pending_kbd_cmd: self.pending_kbd_cmd,
            buffer: self.buffer.iter().copied().collect(),
        }
    }

    pub fn restore_state(&mut self, s: &I8042State) -> Result<(), StateError> {
        if s.buffer.len() > BUFFER_LIMIT {
            return Err(StateError::Invalid(format!(
                "i8042 buffer of {} bytes (limit {BUFFER_LIMIT})",
                s.buffer.len()
            )));
        }
        self.status = s.status;
        self.control = s.control;
        self.output_port = s.output_port;
        self.pending_cmd = s.pending_cmd;
        self.pending_kbd_cmd = s.pending_kbd_cmd;
        self.buffer = s.buffer.iter().copied().collect();
        Ok(())
    }

    /// Type Ctrl+Alt+Del on the keyboard.
    pub fn send_ctrl_alt_del(&mut self) {
        for &b in CTRL_ALT_DEL {
            self.push(b);
        }
    }

    fn push(&mut self, byte: u8) {
        if self.buffer.len() >= BUFFER_LIMIT {
            log::warn!("i8042: output buffer full, dropping {byte:#x}");
            return;
        }
        self.buffer.push_back(byte);
        self.status |= SB_OUT_DATA_AVAIL;
        self.raise_irq();
    }

    fn raise_irq(&self) {
        if self.control & CB_KBD_INT != 0 && self.control & CB_KBD_DISABLED == 0 {
            if let Err(e) = self.kbd_irq.write(1) {
                log::warn!("i8042: cannot raise IRQ 1: {e}");
            }
        }
    }

    fn pop(&mut self) -> u8 {
        let byte = self.buffer.pop_front().unwrap_or(0);
        if self.buffer.is_empty() {
            self.status &= !SB_OUT_DATA_AVAIL;
        } else {
            // One byte per interrupt: announce the next one.
            self.raise_irq();
        }
        byte
    }

    fn controller_command(&mut self, cmd: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP | CMD_WRITE_KBD_BUFFER => self.pending_cmd = Some(cmd),
            CMD_READ_OUTP => self.push(self.output_port),
            CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            // No auxiliary (mouse) port: report its clock line stuck low.
            CMD_TEST_AUX => self.push(0x01),
            CMD_SELF_TEST => self.push(0x55),
            CMD_TEST_KBD => self.push(0x00),
            CMD_DISABLE_KBD => self.control |= CB_KBD_DISABLED,
            CMD_ENABLE_KBD => self.control &= !CB_KBD_DISABLED,
            CMD_PULSE_RESET => {
                // The kernel retries the reset a few times before the VMM
                // stops the vCPUs: log the first request only.
                if !self.reset_requested {
                    log::info!("i8042: guest requested a reset");
                }
                self.reset_requested = true;
                if let Err(e) = self.reset_evt.write(1) {
                    log::error!("i8042: cannot signal reset: {e}");
                }
            }
            other => log::debug!("i8042: ignoring controller command {other:#x}"),
        }
    }

    fn data_write(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        if let Some(cmd) = self.pending_cmd.take() {
            match cmd {
                CMD_WRITE_CTR => self.control = value,
                CMD_WRITE_OUTP => self.output_port = value,
                CMD_WRITE_KBD_BUFFER => self.push(value),
                _ => {}
            }
            return;
        }
        if self.pending_kbd_cmd.take().is_some() {
            // Parameter of LEDs / typematic / scan-code set: acknowledge.
            self.push(KBD_ACK);
            return;
        }
        match value {
            KBD_SET_LEDS | KBD_SET_TYPEMATIC | KBD_SCANCODE_SET => {
                self.pending_kbd_cmd = Some(value);
                self.push(KBD_ACK);
            }
            KBD_GET_ID => {
                // MF2 keyboard.
                self.push(KBD_ACK);
                self.push(0xAB);
                self.push(0x83);
            }
            KBD_RESET => {
                self.buffer.clear();
                self.push(KBD_ACK);
                self.push(KBD_SELF_TEST_OK);
            }
            _ => self.push(KBD_ACK),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            OFFSET_DATA => self.pop(),
            OFFSET_COMMAND => self.status,
            _ => 0xff,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            OFFSET_DATA => self.data_write(value),
            OFFSET_COMMAND => self.controller_command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, EventFd, EventFd) {
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = I8042::new(reset.try_clone().unwrap(), irq.try_clone().unwrap());
        (dev, reset, irq)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut b = [0u8];
        dev.read(offset, &mut b);
        b[0]
    }

    #[test]
    fn pulse_reset_signals_the_vmm() {
        let (mut dev, reset, _irq) = device();
        assert!(reset.read().is_err(), "no reset yet");
        dev.write(OFFSET_COMMAND, &[CMD_PULSE_RESET]);
        assert_eq!(reset.read().unwrap(), 1);
    }

    #[test]
    fn controller_self_test_and_config_byte() {
        let (mut dev, _reset, _irq) = device();
        dev.write(OFFSET_COMMAND, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, OFFSET_COMMAND) & SB_OUT_DATA_AVAIL, 1);
        assert_eq!(read(&mut dev, OFFSET_DATA), 0x55);
        assert_eq!(read(&mut dev, OFFSET_COMMAND) & SB_OUT_DATA_AVAIL, 0);
        dev.write(OFFSET_COMMAND, &[CMD_WRITE_CTR]);
        dev.write(OFFSET_DATA, &[0x47]);
        dev.write(OFFSET_COMMAND, &[CMD_READ_CTR]);
        assert_eq!(read(&mut dev, OFFSET_DATA), 0x47);
    }

    #[test]
    fn keyboard_identifies_and_ctrl_alt_del_raises_irq() {
        let (mut dev, _reset, irq) = device();
        dev.write(OFFSET_DATA, &[KBD_GET_ID]);
        assert_eq!(read(&mut dev, OFFSET_DATA), KBD_ACK);
        assert_eq!(read(&mut dev, OFFSET_DATA), 0xAB);
        assert_eq!(read(&mut dev, OFFSET_DATA), 0x83);
        while irq.read().is_ok() {}
        dev.send_ctrl_alt_del();
        assert!(irq.read().unwrap() >= 1);
        let typed: Vec<u8> = (0..CTRL_ALT_DEL.len())
            .map(|_| read(&mut dev, OFFSET_DATA))
            .collect();
        assert_eq!(typed, CTRL_ALT_DEL);
    }
}
