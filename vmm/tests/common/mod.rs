//! Hand-written guests for tests on the host's /dev/kvm: machine code as
//! bytes (only instructions that every KVM, including nested `kvm_pvm`,
//! runs: port I/O, moves, jumps, hlt) and a minimal ELF wrapper so the
//! `vmm` binary can boot them through the real kernel loader.
#![allow(dead_code)]

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Collects what the guest writes to its console.
#[derive(Clone, Default)]
pub struct Console(pub Arc<Mutex<Vec<u8>>>);

impl Console {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// 64-bit code: print `prefix`, then the NUL-terminated kernel command
/// line found through the zero page (rsi -> boot_params.hdr.cmd_line_ptr at
/// 0x228), then reset through the ACPI port.
pub fn long_mode_print_cmdline(prefix: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    for &b in prefix {
        c.extend_from_slice(&[0xB0, b, 0xEE]); // mov al, b; out dx, al
    }
    c.extend_from_slice(&[0x8B, 0x9E, 0x28, 0x02, 0x00, 0x00]); // mov ebx, [rsi+0x228]
    c.extend_from_slice(&[
        0x8A, 0x03, // loop: mov al, [rbx]
        0x84, 0xC0, // test al, al
        0x74, 0x06, // jz done
        0xEE, // out dx, al
        0x48, 0xFF, 0xC3, // inc rbx
        0xEB, 0xF4, // jmp loop
    ]);
    c.extend_from_slice(&acpi_reset_16bit_port());
    c
}

/// 32-bit code for the PVH entry: same as above but the command line comes
/// from hvm_start_info (ebx -> cmdline_paddr at offset 24).
pub fn pvh_print_cmdline(prefix: &[u8]) -> Vec<u8> {
    let mut c = vec![0x66, 0xBA, 0xF8, 0x03]; // mov dx, 0x3f8
    for &b in prefix {
        c.extend_from_slice(&[0xB0, b, 0xEE]);
    }
    c.extend_from_slice(&[0x8B, 0x73, 0x18]); // mov esi, [ebx+24]
    c.extend_from_slice(&[
        0x8A, 0x06, // loop: mov al, [esi]
        0x84, 0xC0, // test al, al
        0x74, 0x04, // jz done
        0xEE, // out dx, al
        0x46, // inc esi
        0xEB, 0xF6, // jmp loop
    ]);
    c.extend_from_slice(&acpi_reset_16bit_port());
    c
}

/// `mov dx, 0x3c0; mov al, 1; out dx, al; hlt` in 32/64-bit mode.
pub fn acpi_reset_16bit_port() -> Vec<u8> {
    vec![0x66, 0xBA, 0xC0, 0x03, 0xB0, 0x01, 0xEE, 0xF4]
}

/// A minimal ELF64 "kernel": one PT_LOAD at 1 MiB holding `long_code` at
/// offset 0 (the ELF entry) and `pvh_code` at offset 0x100; with `pvh`, a
/// PT_NOTE announces XEN_ELFNOTE_PHYS32_ENTRY pointing at `pvh_code`.
pub fn tiny_elf_kernel(long_code: &[u8], pvh_code: &[u8], pvh: bool) -> Vec<u8> {
    const LOAD_ADDR: u64 = 0x10_0000;
    let phnum: u16 = if pvh { 2 } else { 1 };
    let ehdr_size = 64u64;
    let phdr_size = 56u64;
    let note_off = ehdr_size + phdr_size * u64::from(phnum);
    let note_len = 12 + 4 + 4; // header, "Xen\0", 32-bit entry
    let seg_off = 0x1000u64;
    let mut seg = vec![0u8; 0x200];
    seg[..long_code.len()].copy_from_slice(long_code);
    seg[0x100..0x100 + pvh_code.len()].copy_from_slice(pvh_code);

    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\x00");
    f.extend_from_slice(&[0u8; 8]);
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // e_entry
    f.extend_from_slice(&ehdr_size.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // flags
    f.extend_from_slice(&(ehdr_size as u16).to_le_bytes());
    f.extend_from_slice(&(phdr_size as u16).to_le_bytes());
    f.extend_from_slice(&phnum.to_le_bytes());
    f.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    f.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
    let phdr = |f: &mut Vec<u8>, p_type: u32, off: u64, addr: u64, size: u64| {
        f.extend_from_slice(&p_type.to_le_bytes());
        f.extend_from_slice(&5u32.to_le_bytes()); // R+X
        f.extend_from_slice(&off.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes());
        f.extend_from_slice(&addr.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&size.to_le_bytes());
        f.extend_from_slice(&0x1000u64.to_le_bytes());
    };
    phdr(&mut f, 1, seg_off, LOAD_ADDR, seg.len() as u64);
    if pvh {
        phdr(&mut f, 4, note_off, 0, note_len);
        f.extend_from_slice(&4u32.to_le_bytes()); // namesz
        f.extend_from_slice(&4u32.to_le_bytes()); // descsz
        f.extend_from_slice(&18u32.to_le_bytes()); // XEN_ELFNOTE_PHYS32_ENTRY
        f.extend_from_slice(b"Xen\0");
        f.extend_from_slice(&((LOAD_ADDR + 0x100) as u32).to_le_bytes());
    }
    f.resize(seg_off as usize, 0);
    f.extend_from_slice(&seg);
    f
}

/// A scratch directory unique to this test process and name.
pub fn scratch_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
