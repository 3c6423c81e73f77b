//! Loading the guest kernel, initrd and command line, and writing the boot
//! structures the kernel reads: the zero page (64-bit Linux boot protocol) or
//! hvm_start_info (PVH).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::*;
use crate::arch::regs::EntryMode;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel image {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel image {path} is not a valid ELF vmlinux: {detail}")]
    BadElf { path: PathBuf, detail: String },
    #[error("kernel image {path} is not a valid bzImage: {detail}")]
    BadBzImage { path: PathBuf, detail: String },
    #[error("kernel image {path} is neither an ELF vmlinux nor a bzImage")]
    UnknownKernelFormat { path: PathBuf },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the kernel (ends at {kernel_end:#x})")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
        kernel_end: u64,
    },
    #[error("kernel command line: {0}")]
    Cmdline(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write boot data into guest memory: {0}")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
}

/// What the vCPU needs to enter the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEntry {
    pub entry: GuestAddress,
    pub mode: EntryMode,
}

/// Where the initrd landed.
#[derive(Clone, Copy, Debug)]
pub struct InitrdLocation {
    pub addr: GuestAddress,
    pub size: u64,
}

struct LoadedKernel {
    entry: KernelEntry,
    kernel_end: u64,
    setup_header: Option<linux_loader::loader::bootparam::setup_header>,
}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
#[allow(dead_code)] // Only ever read as bytes, by the guest.
struct BootParamsPage(boot_params);
// SAFETY: boot_params is a packed, bindgen-generated plain-old-data struct:
// every byte pattern is valid and it has no padding or pointers.
unsafe impl ByteValued for BootParamsPage {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
#[allow(dead_code)] // Only ever read as bytes, by the guest.
struct StartInfo(hvm_start_info);
// SAFETY: hvm_start_info is repr(C) with fields laid out without padding
// (4 x u32, 4 x u64, 2 x u32); any byte pattern is valid.
unsafe impl ByteValued for StartInfo {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
#[allow(dead_code)] // Only ever read as bytes, by the guest.
struct MemmapEntry(hvm_memmap_table_entry);
// SAFETY: repr(C) u64, u64, u32, u32: no padding, any byte pattern valid.
unsafe impl ByteValued for MemmapEntry {}

#[derive(Clone, Copy, Default)]
#[repr(transparent)]
#[allow(dead_code)] // Only ever read as bytes, by the guest.
struct ModlistEntry(hvm_modlist_entry);
// SAFETY: repr(C) four u64 fields: no padding, any byte pattern valid.
unsafe impl ByteValued for ModlistEntry {}

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

fn kernel_format_is_elf(file: &mut File, path: &Path) -> Result<bool, BootError> {
    let mut magic = [0u8; 4];
    let read = |e| BootError::Read {
        path: path.to_path_buf(),
        source: e,
    };
    file.seek(SeekFrom::Start(0)).map_err(read)?;
    let n = file.read(&mut magic).map_err(read)?;
    file.seek(SeekFrom::Start(0)).map_err(read)?;
    Ok(n == 4 && magic == ELF_MAGIC)
}

fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_path_buf(),
        source,
    })?;
    if kernel_format_is_elf(&mut file, path)? {
        let res =
            Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(|e| {
                BootError::BadElf {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            })?;
        let entry = match res.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(addr) => KernelEntry {
                entry: addr,
                mode: EntryMode::Pvh,
            },
            _ => KernelEntry {
                entry: res.kernel_load,
                mode: EntryMode::LongMode,
            },
        };
        log::info!(
            "loaded ELF kernel {} ({:?} entry at {:#x})",
            path.display(),
            entry.mode,
            entry.entry.raw_value()
        );
        return Ok(LoadedKernel {
            entry,
            kernel_end: res.kernel_end,
            setup_header: None,
        });
    }
    let res = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(
        |e| match e {
            linux_loader::loader::Error::Bzimage(
                linux_loader::loader::bzimage::Error::InvalidBzImage,
            ) => BootError::UnknownKernelFormat {
                path: path.to_path_buf(),
            },
            other => BootError::BadBzImage {
                path: path.to_path_buf(),
                detail: other.to_string(),
            },
        },
    )?;
    // The 64-bit entry point of a bzImage sits 0x200 bytes into the
    // protected-mode code.
    let entry = KernelEntry {
        entry: res.kernel_load.unchecked_add(0x200),
        mode: EntryMode::LongMode,
    };
    log::info!(
        "loaded bzImage {} (64-bit entry at {:#x})",
        path.display(),
        entry.entry.raw_value()
    );
    Ok(LoadedKernel {
        entry,
        kernel_end: res.kernel_end,
        setup_header: res.setup_header,
    })
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    limit: u64,
) -> Result<InitrdLocation, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenInitrd {
        path: path.to_path_buf(),
        source,
    })?;
    let read_err = |source| BootError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = file.metadata().map_err(read_err)?.len();
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_path_buf(),
        size,
        limit,
        kernel_end,
    };
    // Highest page-aligned address at which the initrd still fits below
    // `limit`: as far from the kernel as possible, as bootloaders do.
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if addr < kernel_end {
        return Err(too_large());
    }
    let mut data = Vec::with_capacity(size as usize);
    file.read_to_end(&mut data).map_err(read_err)?;
    mem.write_slice(&data, GuestAddress(addr))?;
    Ok(InitrdLocation {
        addr: GuestAddress(addr),
        size,
    })
}

/// The e820 map: RAM below the EBDA, reserved firmware area (ACPI/SMBIOS),
/// RAM from 1 MiB, and RAM above 4 GiB when present.
pub fn e820_map(mem_bytes: u64) -> Vec<(u64, u64, u32)> {
    const RAM: u32 = 1;
    const RESERVED: u32 = 2;
    let mut map = vec![
        (0, EBDA_START, RAM),
        (EBDA_START, HIMEM_START - EBDA_START, RESERVED),
    ];
    for (start, len) in ram_ranges(mem_bytes) {
        if start == 0 {
            map.push((HIMEM_START, len - HIMEM_START, RAM));
        } else {
            map.push((start, len, RAM));
        }
    }
    map
}

pub struct BootSetup<'a> {
    pub kernel: &'a Path,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
    pub mem_bytes: u64,
    pub rsdp: GuestAddress,
}

/// Load everything and write the boot structures. Returns where to enter.
pub fn load(mem: &GuestMemoryMmap, setup: &BootSetup) -> Result<KernelEntry, BootError> {
    let kernel = load_kernel(mem, setup.kernel)?;

    let mut cmdline =
        Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cmdline
        .insert_str(setup.cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    let cmdline_len = setup.cmdline.len() as u32 + 1;

    let low_end = low_ram_end(setup.mem_bytes);
    let initrd = match setup.initrd {
        Some(path) => {
            let max = kernel
                .setup_header
                .map(|h| u64::from(h.initrd_addr_max) + 1)
                .filter(|&m| m > HIMEM_START)
                .unwrap_or(low_end)
                .min(low_end);
            Some(load_initrd(mem, path, kernel.kernel_end, max)?)
        }
        None => None,
    };

    match kernel.entry.mode {
        EntryMode::LongMode => {
            write_zero_page(mem, setup, kernel.setup_header, initrd, cmdline_len)?
        }
        EntryMode::Pvh => write_pvh_info(mem, setup, initrd)?,
    }
    Ok(kernel.entry)
}

fn write_zero_page(
    mem: &GuestMemoryMmap,
    setup: &BootSetup,
    header: Option<linux_loader::loader::bootparam::setup_header>,
    initrd: Option<InitrdLocation>,
    cmdline_len: u32,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    }
    // "Other" boot loader, and the fields the protocol requires of it.
    params.hdr.type_of_loader = 0xff;
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len;
    params.hdr.kernel_alignment = 0x0100_0000;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr.raw_value() as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    params.acpi_rsdp_addr = setup.rsdp.raw_value();
    let map = e820_map(setup.mem_bytes);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(BootParamsPage(params), GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    setup: &BootSetup,
    initrd: Option<InitrdLocation>,
) -> Result<(), BootError> {
    const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
    let map = e820_map(setup.mem_bytes);
    for (i, (addr, size, type_)) in map.iter().enumerate() {
        let entry = MemmapEntry(hvm_memmap_table_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
            reserved: 0,
        });
        let at = PVH_MEMMAP_START + (i * std::mem::size_of::<MemmapEntry>()) as u64;
        mem.write_obj(entry, GuestAddress(at))?;
    }
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        rsdp_paddr: setup.rsdp.raw_value(),
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: map.len() as u32,
        ..Default::default()
    };
    if let Some(i) = initrd {
        let module = ModlistEntry(hvm_modlist_entry {
            paddr: i.addr.raw_value(),
            size: i.size,
            ..Default::default()
        });
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(StartInfo(info), GuestAddress(PVH_INFO_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mem(bytes: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), bytes as usize)]).unwrap()
    }

    #[test]
    fn e820_covers_ram_and_reserves_firmware() {
        let map = e820_map(256 << 20);
        assert_eq!(map[0], (0, EBDA_START, 1));
        assert_eq!(map[1].2, 2);
        assert_eq!(map[2], (HIMEM_START, (256 << 20) - HIMEM_START, 1));
        let big = e820_map(5 << 30);
        assert_eq!(
            big.last(),
            Some(&(FOUR_GIB, (5u64 << 30) - MMIO_HOLE_START, 1))
        );
    }

    #[test]
    fn garbage_kernel_is_rejected_clearly() {
        let dir = tempdir();
        let path = dir.join("garbage");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(&[0x55u8; 8192])
            .unwrap();
        let err = load_kernel(&mem(32 << 20), &path).err().unwrap();
        assert!(
            matches!(err, BootError::UnknownKernelFormat { .. }),
            "{err}"
        );
        let bad_elf = dir.join("bad-elf");
        let mut f = std::fs::File::create(&bad_elf).unwrap();
        f.write_all(b"\x7fELF\x02\x01\x01").unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        let err = load_kernel(&mem(32 << 20), &bad_elf).err().unwrap();
        assert!(matches!(err, BootError::BadElf { .. }), "{err}");
        let missing = load_kernel(&mem(32 << 20), &dir.join("nope"))
            .err()
            .unwrap();
        assert!(matches!(missing, BootError::OpenKernel { .. }));
    }

    #[test]
    fn initrd_goes_high_and_must_fit() {
        let dir = tempdir();
        let path = dir.join("initrd");
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let m = mem(16 << 20);
        let loc = load_initrd(&m, &path, 2 << 20, 16 << 20).unwrap();
        assert_eq!(loc.addr.raw_value() & 0xfff, 0);
        assert!(loc.addr.raw_value() + loc.size <= 16 << 20);
        assert!(loc.addr.raw_value() > (15 << 20));
        let err = load_initrd(&m, &path, (16 << 20) - 4096, 16 << 20)
            .err()
            .unwrap();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }));
    }

    fn tempdir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "vmm-boot-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
