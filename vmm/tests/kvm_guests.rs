//! Device and vCPU tests with hand-written guests on the host's /dev/kvm.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Console;
use devices::BusDevice;
use kvm_bindings::kvm_sregs;
use kvm_ioctls::{IoEventAddress, NoDatamatch};
use vm_memory::{Bytes, GuestAddress};
use vmm::arch::regs::{configure_sregs, EntryMode};
use vmm::config::MachineConfig;
use vmm::vcpu::ExitReason;
use vmm::vm::Vm;
use vmm_sys_util::eventfd::EventFd;

const TIMEOUT: Duration = Duration::from_secs(20);
const CODE_ADDR: u64 = 0x1000;
const LONG_CODE_ADDR: u64 = 0x10_0000;

fn machine(vcpus: u8) -> MachineConfig {
    MachineConfig {
        vcpu_count: vcpus,
        mem_size_mib: 32,
        ..Default::default()
    }
}

fn new_vm(vcpus: u8) -> (Vm, Console) {
    let console = Console::default();
    let vm = Vm::new(&machine(vcpus), Box::new(console.clone()), Instant::now())
        .expect("create VM on /dev/kvm");
    (vm, console)
}

/// Point the boot vCPU at real-mode code at 0:CODE_ADDR.
fn enter_real_mode(vm: &Vm, code: &[u8]) {
    vm.memory()
        .write_slice(code, GuestAddress(CODE_ADDR))
        .unwrap();
    let vcpu = vm.boot_vcpu().unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = CODE_ADDR;
    regs.rflags = 2;
    regs.rsp = 0x8000;
    vcpu.set_regs(&regs).unwrap();
}

/// Point the boot vCPU at 64-bit code, with the VMM's own long-mode setup
/// (GDT, identity page tables) — the same path a Linux boot takes.
fn enter_long_mode(vm: &Vm, code: &[u8]) {
    vm.memory()
        .write_slice(code, GuestAddress(LONG_CODE_ADDR))
        .unwrap();
    let vcpu = vm.boot_vcpu().unwrap();
    let mut sregs: kvm_sregs = vcpu.get_sregs().unwrap();
    configure_sregs(vm.memory(), EntryMode::LongMode, &mut sregs).unwrap();
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = LONG_CODE_ADDR;
    regs.rflags = 2;
    regs.rsp = 0x8ff0;
    vcpu.set_regs(&regs).unwrap();
}

#[derive(Default)]
struct Probe {
    writes: Vec<(u64, Vec<u8>)>,
    read_value: u32,
}

impl BusDevice for Probe {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let v = self.read_value.wrapping_add(offset as u32).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get(i).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

#[test]
fn real_mode_guest_prints_on_serial_and_resets_through_acpi() {
    let (mut vm, console) = new_vm(1);
    let code = [
        0xBA, 0xF8, 0x03, // mov dx, 0x3f8
        0xB0, b'O', 0xEE, // mov al, 'O'; out dx, al
        0xB0, b'K', 0xEE, // 'K'
        0xB0, b'\n', 0xEE, // '\n'
        0xBA, 0xF0, 0x03, 0xEE, // mov dx, 0x3f0 (boot timer); out dx, al
        0xBA, 0xC0, 0x03, // mov dx, 0x3c0
        0xB0, 0x01, 0xEE, // mov al, 1; out dx, al  (ACPI reset)
        0xF4, // hlt
    ];
    enter_real_mode(&vm, &code);
    vm.start().unwrap();
    assert_eq!(vm.wait_for_exit(TIMEOUT), Some(ExitReason::GuestReset));
    assert!(vm.stop());
    assert_eq!(console.text(), "OK\n");
    assert!(
        vm.boot_time_us.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "boot timer recorded the guest's write"
    );
}

#[test]
fn long_mode_guest_uses_mmio_and_pio_buses_and_resets_through_i8042() {
    let (mut vm, _console) = new_vm(1);
    let mmio_probe = Arc::new(Mutex::new(Probe {
        read_value: 0xCAFE_BAB0,
        ..Default::default()
    }));
    let pio_probe = Arc::new(Mutex::new(Probe::default()));
    vm.mmio_bus()
        .insert(mmio_probe.clone(), 0xd000_0000, 0x1000)
        .unwrap();
    vm.pio_bus().insert(pio_probe.clone(), 0x500, 4).unwrap();
    let code = [
        0x48, 0xB8, 0x00, 0x00, 0x00, 0xD0, 0x00, 0x00, 0x00, 0x00, // mov rax, 0xd0000000
        0xC7, 0x00, 0x78, 0x56, 0x34, 0x12, // mov dword [rax], 0x12345678
        0x8B, 0x58, 0x04, // mov ebx, [rax+4]
        0xBA, 0x00, 0x05, 0x00, 0x00, // mov edx, 0x500
        0x89, 0xD8, // mov eax, ebx
        0xEF, // out dx, eax
        0xB0, 0xFE, // mov al, 0xfe
        0xE6, 0x64, // out 0x64, al  (i8042: pulse reset line)
        0xF4, // hlt
    ];
    enter_long_mode(&vm, &code);
    vm.start().unwrap();
    assert_eq!(vm.wait_for_exit(TIMEOUT), Some(ExitReason::GuestReset));
    vm.stop();
    assert_eq!(
        mmio_probe.lock().unwrap().writes,
        vec![(0, 0x1234_5678u32.to_le_bytes().to_vec())]
    );
    assert_eq!(
        pio_probe.lock().unwrap().writes,
        vec![(0, 0xCAFE_BAB4u32.to_le_bytes().to_vec())],
        "the guest read the MMIO device (base value + offset 4) and wrote it out"
    );
}

#[test]
fn ioeventfd_write_is_consumed_by_kvm_not_the_bus() {
    let (mut vm, _console) = new_vm(1);
    let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    vm.vm_fd()
        .register_ioevent(&evt, &IoEventAddress::Pio(0x600), NoDatamatch)
        .unwrap();
    let probe = Arc::new(Mutex::new(Probe::default()));
    vm.pio_bus().insert(probe.clone(), 0x600, 1).unwrap();
    let code = [
        0xBA, 0x00, 0x06, // mov dx, 0x600
        0xEE, // out dx, al  (kick)
        0xEE, // out dx, al  (kick again: the counter adds up)
        0xBA, 0xC0, 0x03, 0xB0, 0x01, 0xEE, // ACPI reset
        0xF4,
    ];
    enter_real_mode(&vm, &code);
    vm.start().unwrap();
    assert_eq!(vm.wait_for_exit(TIMEOUT), Some(ExitReason::GuestReset));
    vm.stop();
    assert_eq!(evt.read().unwrap(), 2);
    assert!(probe.lock().unwrap().writes.is_empty());
}

/// The guest programs the PIC, enables the UART's receive interrupt and
/// halts; the test types a byte into the serial port, whose irqfd raises
/// IRQ 4; the guest's handler echoes the byte and resets.
#[test]
fn serial_input_interrupt_reaches_the_guest_through_irqfd() {
    let (mut vm, console) = new_vm(1);
    let mut code = vec![
        0xFA, // cli
        0x31, 0xC0, // xor ax, ax
        0x8E, 0xD8, // mov ds, ax
        0xC7, 0x06, 0x30, 0x00, 0x00, 0x00, // mov word [0x30], handler (patched)
        0xC7, 0x06, 0x32, 0x00, 0x00, 0x00, // mov word [0x32], 0
        0xB0, 0x11, 0xE6, 0x20, // PIC ICW1
        0xB0, 0x08, 0xE6, 0x21, // ICW2: vectors 8..15
        0xB0, 0x04, 0xE6, 0x21, // ICW3
        0xB0, 0x01, 0xE6, 0x21, // ICW4: 8086 mode
        0xB0, 0xEF, 0xE6, 0x21, // mask all but IRQ 4
        0xBA, 0xF9, 0x03, 0xB0, 0x01, 0xEE, // UART IER = received data
        0xBA, 0xFC, 0x03, 0xB0, 0x08, 0xEE, // UART MCR = OUT2
        0xBA, 0xF8, 0x03, 0xB0, b'R', 0xEE, // print 'R': ready
        0xFB, // sti
        0xF4, 0xEB, 0xFD, // loop: hlt; jmp loop
    ];
    let handler = CODE_ADDR as usize + code.len();
    code[9..11].copy_from_slice(&(handler as u16).to_le_bytes());
    code.extend_from_slice(&[
        0xBA, 0xF8, 0x03, 0xEC, // mov dx, 0x3f8; in al, dx
        0xEE, // out dx, al (echo)
        0xB0, 0x20, 0xE6, 0x20, // EOI
        0xBA, 0xC0, 0x03, 0xB0, 0x01, 0xEE, // ACPI reset
        0xCF, // iret
    ]);
    enter_real_mode(&vm, &code);
    vm.start().unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while !console.text().contains('R') {
        assert!(Instant::now() < deadline, "guest never got ready");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Give the guest time to reach hlt with interrupts on.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(vm.serial.lock().unwrap().enqueue_input(b"Z"), 1);
    assert_eq!(vm.wait_for_exit(TIMEOUT), Some(ExitReason::GuestReset));
    vm.stop();
    assert_eq!(console.text(), "RZ");
}

/// What Linux does when every other reboot method is exhausted: back to
/// real mode and a far jump to the reset vector, where our stub resets.
#[test]
fn jump_to_the_reset_vector_resets_the_vm() {
    let (mut vm, _console) = new_vm(1);
    // jmp far 0xf000:0xfff0
    enter_real_mode(&vm, &[0xEA, 0xF0, 0xFF, 0x00, 0xF0]);
    vm.start().unwrap();
    assert_eq!(vm.wait_for_exit(TIMEOUT), Some(ExitReason::GuestReset));
    vm.stop();
}

#[test]
fn instruction_fetch_from_mmio_is_a_vcpu_fault() {
    let (mut vm, _console) = new_vm(1);
    let code = [
        0x48, 0xB8, 0x00, 0x00, 0x00, 0xD0, 0x00, 0x00, 0x00, 0x00, // mov rax, 0xd0000000
        0xFF, 0xE0, // jmp rax: no RAM there
    ];
    enter_long_mode(&vm, &code);
    vm.start().unwrap();
    match vm.wait_for_exit(TIMEOUT) {
        Some(ExitReason::Fault(msg)) => assert!(msg.contains("vcpu0"), "{msg}"),
        other => panic!("expected a fault, got {other:?}"),
    }
    assert!(vm.stop(), "vCPU threads end after a fault");
}

#[test]
fn two_vcpus_start_and_stop_cleanly() {
    let (mut vm, _console) = new_vm(2);
    // The boot CPU spins; the AP waits for INIT/SIPI. Both must stop on demand.
    enter_real_mode(&vm, &[0xEB, 0xFE]);
    vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(vm.exit_reason(), None);
    assert!(vm.stop(), "both vCPU threads were kicked out of KVM_RUN");
}

/// Whichever limit is lower (KVM's or our 32) refuses one more vCPU, with
/// a message naming the limit.
#[test]
fn too_many_vcpus_is_a_clear_error() {
    let max = kvm_ioctls::Kvm::new().unwrap().get_max_vcpus();
    let wanted = (max + 1).min(usize::from(vmm::config::MAX_VCPUS) + 1) as u8;
    let cfg = machine(wanted);
    let msg = match cfg.validate() {
        Err(e) => e.to_string(),
        Ok(()) => Vm::new(&cfg, Box::new(std::io::sink()), Instant::now())
            .err()
            .expect("KVM limit must refuse")
            .to_string(),
    };
    let limit = max.min(usize::from(vmm::config::MAX_VCPUS));
    assert!(
        msg.contains("vcpu_count") && msg.contains(&limit.to_string()),
        "{msg}"
    );
}
