//! A PCI function passed through with VFIO (an SR-IOV VF for "enhanced
//! networking").
//!
//! The device's own registers are reached through the VFIO device fd;
//! what the guest must not touch directly is virtualised here:
//! - BARs: the guest sees addresses in its MMIO hole (allocated by the
//!   VMM) and the sizing protocol; accesses are forwarded to the VFIO
//!   region at the same offset.
//! - MSI-X: the capability's control word, the vector table and the PBA
//!   are emulated ([`MsixConfig`]); when the guest enables MSI-X, VFIO is
//!   told to signal one eventfd per vector, the same eventfds that are the
//!   KVM irqfds of the vectors' GSIs, so device interrupts reach the guest
//!   without passing through the VMM.
//! - Extended capabilities (SR-IOV, ARI, resizable BAR...) are hidden, and
//!   so is plain MSI (not wired: a guest without MSI-X must use INTx).
//! - INTx (`intx.rs`): the Interrupt Pin as INTA when VFIO offers INTx, the
//!   Interrupt Line as guest scratch; VFIO's trigger and unmask eventfds
//!   are a resampling KVM irqfd on the slot's GSI, on while MSI-X is off.
//!
//! - BARs are mmap'ed from VFIO and mapped into the guest as KVM memory
//!   slots (through [`GuestMemoryMapper`]), so the driver's register
//!   accesses never exit, except the pages holding the MSI-X table/PBA
//!   (`direct_segments`) and BARs smaller than a page, which stay trapped.
//!
//! Masking: a masked vector's eventfd is detached from KVM (by the VMM's
//! `MsiInterrupts`), so what the device signals meanwhile stays counted
//! and is delivered on unmask.

mod intx;

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use vfio_ioctls::VfioDevice;
use vmm_sys_util::eventfd::EventFd;

use crate::pci::config::{Bar, BarKind, BarMove, NUM_BARS};
use crate::pci::msix::MSIX_CAP_ID;
use crate::pci::{MsiInterrupts, MsixConfig, PciDevice};

pub use intx::{IntxError, IntxLine, IrqControl, VfioIrqs};

const CONFIG_REGION: u32 = 7;
const BAR0_REG: usize = 0x10;
const ROM_BAR_REG: usize = 0x30;
const CAP_PTR_REG: usize = 0x34;
const MSI_CAP_ID: u8 = 0x05;

/// Maps host memory into the guest's physical address space (KVM memory
/// slots), for BARs the guest may touch directly.
pub trait GuestMemoryMapper: Send + Sync {
    /// Map `[host, host + size)` at guest physical `gpa`; returns a handle.
    fn map(&self, gpa: u64, size: u64, host: u64) -> std::io::Result<u32>;
    fn unmap(&self, handle: u32) -> std::io::Result<()>;
}

const PAGE_SIZE: u64 = 4096;
const REGION_FLAG_MMAP: u32 = 4;

/// A BAR mmap'ed from the VFIO device and mapped into the guest.
struct DirectBar {
    host: u64,
    size: u64,
    /// The BAR's directly mapped (offset, length) segments.
    segments: Vec<(u64, u64)>,
    /// Their guest mappings (while the BAR is placed).
    handles: Vec<u32>,
}

/// The parts of a BAR of `size` bytes that can be mapped into the guest, as
/// (offset, length) pairs: everything except the pages touching `trapped`
/// ranges (the MSI-X table and PBA, which must stay emulated). Mappings are
/// made of whole pages, so a trapped range takes its pages with it.
fn direct_segments(size: u64, trapped: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut holes: Vec<(u64, u64)> = trapped
        .iter()
        .filter(|(_, len)| *len > 0)
        .map(|&(off, len)| {
            let start = off / PAGE_SIZE * PAGE_SIZE;
            let end = (off + len).div_ceil(PAGE_SIZE) * PAGE_SIZE;
            (start.min(size), end.min(size))
        })
        .collect();
    holes.sort_unstable();
    let mut segments = Vec::new();
    let mut at = 0;
    for (start, end) in holes {
        if start > at {
            segments.push((at, start - at));
        }
        at = at.max(end);
    }
    if at < size {
        segments.push((at, size - at));
    }
    segments
}

#[derive(Debug, thiserror::Error)]
pub enum VfioPciError {
    #[error("BAR {index}: {detail}")]
    Bar { index: usize, detail: String },
    #[error("MSI-X: {0}")]
    Msix(String),
    #[error(transparent)]
    Irqs(#[from] IntxError),
}

/// Where the MSI-X structures live in the device's BARs.
#[derive(Clone, Copy, Debug)]
struct MsixLayout {
    cap: usize,
    table_bar: usize,
    table_offset: u64,
    table_size: u64,
    pba_bar: usize,
    pba_offset: u64,
    pba_size: u64,
}

/// A BAR as the VMM placed it, with the guest's programming state.
#[derive(Clone, Copy, Debug)]
struct VirtualBar {
    bar: Bar,
    /// Register values the guest reads (sizing writes land here).
    regs: [u32; 2],
}

pub struct VfioPciDevice {
    device: Arc<VfioDevice>,
    bars: [Option<VirtualBar>; NUM_BARS],
    msix: Option<(MsixLayout, Arc<Mutex<MsixConfig>>)>,
    msix_control: u16,
    vector_fds: Vec<EventFd>,
    /// INTx and MSI-X in VFIO/KVM (one at a time), INTx config registers.
    irqs: IrqControl,
    /// The config byte that unlinks the MSI capability: (offset, value).
    msi_unlink: Option<(usize, u8)>,
    name: String,
    mapper: Option<Arc<dyn GuestMemoryMapper>>,
    direct: [Option<DirectBar>; NUM_BARS],
}

/// Probe a BAR's kind and size the way firmware does, through VFIO.
pub fn probe_bar(device: &VfioDevice, index: usize) -> Option<(BarKind, u64, bool)> {
    let size = device.get_region_size(index as u32);
    if size == 0 {
        return None;
    }
    let mut raw = [0u8; 4];
    device.region_read(CONFIG_REGION, &mut raw, (BAR0_REG + 4 * index) as u64);
    let v = u32::from_le_bytes(raw);
    let kind = if v & 1 == 1 {
        BarKind::Io
    } else if (v >> 1) & 3 == 2 {
        BarKind::Mem64
    } else {
        BarKind::Mem32
    };
    Some((kind, size.next_power_of_two().max(16), v & 0x8 != 0))
}

fn read_config_u32(device: &VfioDevice, at: usize) -> u32 {
    let mut b = [0u8; 4];
    device.region_read(CONFIG_REGION, &mut b, at as u64);
    u32::from_le_bytes(b)
}

/// Where the capability list must be patched to skip the MSI capability:
/// the next-pointer byte that points at it (or the list head) and the
/// value that skips it. `read` reads a config dword.
fn msi_unlink(read: impl Fn(usize) -> u32) -> Option<(usize, u8)> {
    let mut pointer_at = CAP_PTR_REG;
    let mut at = (read(CAP_PTR_REG) & 0xfc) as usize;
    // Bounded walk: a broken list must not loop forever.
    for _ in 0..48 {
        if !(0x40..=0xfc).contains(&at) {
            return None;
        }
        let header = read(at);
        let next = ((header >> 8) & 0xfc) as u8;
        if header as u8 == MSI_CAP_ID {
            return Some((pointer_at, next));
        }
        pointer_at = at + 1;
        at = usize::from(next);
    }
    None
}

fn find_capability(device: &VfioDevice, id: u8) -> Option<usize> {
    let mut at = (read_config_u32(device, CAP_PTR_REG) & 0xfc) as usize;
    // Bounded walk: a broken list must not loop forever.
    for _ in 0..48 {
        if !(0x40..=0xfc).contains(&at) {
            return None;
        }
        let header = read_config_u32(device, at);
        if header as u8 == id {
            return Some(at);
        }
        at = ((header >> 8) & 0xfc) as usize;
    }
    None
}

/// Number of MSI-X vectors the function has (0 without MSI-X).
pub fn msix_vector_count(device: &VfioDevice) -> u16 {
    find_capability(device, MSIX_CAP_ID)
        .map(|cap| ((read_config_u32(device, cap) >> 16) & 0x7ff) as u16 + 1)
        .unwrap_or(0)
}

impl VfioPciDevice {
    /// `bars` are the addresses the VMM allocated, per BAR index (from
    /// [`probe_bar`]); `msi` delivers the MSI-X vectors, and
    /// `vector_fds[v]` must be the irqfd of vector `v`; `intx` is the
    /// guest's INTx line of the function's slot.
    pub fn new(
        device: Arc<VfioDevice>,
        bars: Vec<Bar>,
        msi: Arc<dyn MsiInterrupts>,
        vector_fds: Vec<EventFd>,
        name: String,
        mapper: Option<Arc<dyn GuestMemoryMapper>>,
        intx: Option<Arc<dyn IntxLine>>,
    ) -> Result<Self, VfioPciError> {
        let mut table: [Option<VirtualBar>; NUM_BARS] = [None; NUM_BARS];
        for b in bars {
            let flags: u32 = match b.kind {
                BarKind::Io => 1,
                BarKind::Mem32 => u32::from(b.prefetchable) << 3,
                BarKind::Mem64 => 0x4 | (u32::from(b.prefetchable) << 3),
            };
            let regs = [(b.addr as u32 & !0xf) | flags, (b.addr >> 32) as u32];
            *table.get_mut(b.index).ok_or(VfioPciError::Bar {
                index: b.index,
                detail: "out of range".into(),
            })? = Some(VirtualBar { bar: b, regs });
        }
        let msix = match find_capability(&device, MSIX_CAP_ID) {
            Some(cap) => {
                let ctrl = read_config_u32(&device, cap) >> 16;
                let vectors = (ctrl & 0x7ff) as u16 + 1;
                let table_reg = read_config_u32(&device, cap + 4);
                let pba_reg = read_config_u32(&device, cap + 8);
                let layout = MsixLayout {
                    cap,
                    table_bar: (table_reg & 7) as usize,
                    table_offset: u64::from(table_reg & !7),
                    table_size: u64::from(vectors) * 16,
                    pba_bar: (pba_reg & 7) as usize,
                    pba_offset: u64::from(pba_reg & !7),
                    pba_size: u64::from(vectors).div_ceil(64) * 8,
                };
                if vector_fds.len() < usize::from(vectors) {
                    return Err(VfioPciError::Msix(format!(
                        "{vectors} vectors but {} eventfds",
                        vector_fds.len()
                    )));
                }
                Some((layout, Arc::new(Mutex::new(MsixConfig::new(vectors, msi)))))
            }
            None => None,
        };
        // Start from a clean device state.
        device.reset();
        let msi_unlink = msi_unlink(|at| read_config_u32(&device, at));
        let pin = (read_config_u32(&device, intx::INTERRUPT_LINE) >> 8) as u8;
        let irqs = IrqControl::new(
            Arc::clone(&device) as Arc<dyn VfioIrqs>,
            pin,
            intx,
            name.clone(),
        )?;
        let mut dev = Self {
            device,
            bars: table,
            msix,
            msix_control: 0,
            vector_fds,
            irqs,
            msi_unlink,
            name,
            mapper,
            direct: Default::default(),
        };
        dev.map_direct_bars();
        Ok(dev)
    }

    /// mmap every BAR that may be mapped straight into the guest.
    fn map_direct_bars(&mut self) {
        let Some(mapper) = self.mapper.clone() else {
            return;
        };
        let trapped_in = |bar: usize| -> Vec<(u64, u64)> {
            let Some((l, _)) = &self.msix else {
                return Vec::new();
            };
            let mut t = Vec::new();
            if l.table_bar == bar {
                t.push((l.table_offset, l.table_size));
            }
            if l.pba_bar == bar {
                t.push((l.pba_offset, l.pba_size));
            }
            t
        };
        for i in 0..NUM_BARS {
            let Some(vb) = self.bars[i].filter(|vb| vb.bar.index == i) else {
                continue;
            };
            let region = i as u32;
            let size = self.device.get_region_size(region);
            let segments = direct_segments(size, &trapped_in(i));
            if vb.bar.kind == BarKind::Io
                || segments.is_empty()
                || size < PAGE_SIZE
                || !size.is_multiple_of(PAGE_SIZE)
                || self.device.get_region_flags(region) & REGION_FLAG_MMAP == 0
            {
                continue;
            }
            let offset = self.device.get_region_offset(region);
            // SAFETY: a fresh shared mapping of the VFIO device's region at
            // its advertised offset; we own it until munmap in Drop.
            let host = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    size as usize,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    self.device.as_raw_fd(),
                    offset as libc::off_t,
                )
            };
            if host == libc::MAP_FAILED {
                log::warn!(
                    "vfio {}: cannot mmap BAR {i}: {}; it stays trapped",
                    self.name,
                    std::io::Error::last_os_error()
                );
                continue;
            }
            let host = host as u64;
            let mut handles = Vec::new();
            for &(off, len) in &segments {
                match mapper.map(vb.bar.addr + off, len, host + off) {
                    Ok(h) => handles.push(h),
                    Err(e) => log::warn!(
                        "vfio {}: cannot map BAR {i} [{off:#x}+{len:#x}] into the guest: {e}",
                        self.name
                    ),
                }
            }
            if segments == [(0, size)] {
                log::info!(
                    "vfio {}: BAR {i} ({size:#x} bytes) mapped directly at {:#x}",
                    self.name,
                    vb.bar.addr
                );
            } else {
                let text: Vec<String> = segments
                    .iter()
                    .map(|(off, len)| format!("{off:#x}+{len:#x}"))
                    .collect();
                log::info!(
                    "vfio {}: BAR {i} ({size:#x} bytes) at {:#x}: {} mapped directly, \
                     the MSI-X table/PBA pages trapped",
                    self.name,
                    vb.bar.addr,
                    text.join(", ")
                );
            }
            self.direct[i] = Some(DirectBar {
                host,
                size,
                segments,
                handles,
            });
        }
    }

    /// The GSI of the function's INTx, if it has one.
    pub fn intx_gsi(&self) -> Option<u32> {
        self.irqs.intx_gsi()
    }

    /// MSI-X vectors the device has (0 without MSI-X).
    pub fn msix_vectors(&self) -> u16 {
        self.msix
            .as_ref()
            .map(|(_, m)| m.lock().unwrap_or_else(|e| e.into_inner()).vectors())
            .unwrap_or(0)
    }

    fn bar_index_for_reg(offset: usize) -> Option<(usize, usize)> {
        (BAR0_REG..BAR0_REG + 4 * NUM_BARS)
            .contains(&offset)
            .then(|| ((offset - BAR0_REG) / 4, (offset - BAR0_REG) % 4))
    }

    /// Which BAR register slot (lower/upper) `reg` is for, if it is one.
    fn virtual_bar_slot(&self, reg: usize) -> Option<(usize, usize)> {
        if let Some(vb) = self.bars.get(reg).copied().flatten() {
            if vb.bar.index == reg {
                return Some((reg, 0));
            }
        }
        if reg > 0 {
            if let Some(vb) = self.bars.get(reg - 1).copied().flatten() {
                if vb.bar.kind == BarKind::Mem64 {
                    return Some((reg - 1, 1));
                }
            }
        }
        None
    }

    fn set_msix_control(&mut self, ctrl: u16) {
        let Some((_, msix)) = &self.msix else { return };
        let was = self.msix_control & 0x8000 != 0;
        let now = ctrl & 0x8000 != 0;
        self.msix_control = ctrl & 0xc000;
        msix.lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_control(ctrl);
        if now && !was {
            let n = usize::from(self.msix_vectors());
            let fds: Vec<&EventFd> = self.vector_fds.iter().take(n).collect();
            match self.irqs.enable_msix(&fds) {
                Ok(()) => log::info!("vfio {}: MSI-X enabled ({n} vectors)", self.name),
                Err(e) => log::error!("vfio {}: cannot enable MSI-X: {e}", self.name),
            }
        } else if was && !now {
            match self.irqs.disable_msix() {
                Ok(()) if self.irqs.intx_on() => {
                    log::info!("vfio {}: MSI-X disabled, back to INTx", self.name)
                }
                Ok(()) => {}
                Err(e) => log::warn!("vfio {}: MSI-X off / INTx on: {e}", self.name),
            }
        }
    }
}

impl Drop for VfioPciDevice {
    fn drop(&mut self) {
        for d in self.direct.iter_mut().filter_map(Option::take) {
            if let Some(m) = self.mapper.as_ref() {
                for h in d.handles {
                    let _ = m.unmap(h);
                }
            }
            // SAFETY: `host`/`size` describe the mapping made in
            // map_direct_bars, no longer mapped into the guest.
            unsafe { libc::munmap(d.host as *mut libc::c_void, d.size as usize) };
        }
        // MSI-X or INTx off in VFIO, the INTx irqfd out of KVM.
        self.irqs.teardown();
        // Leave the function quiet for whoever gets it next.
        self.device.reset();
    }
}

impl PciDevice for VfioPciDevice {
    fn read_config(&mut self, offset: usize, data: &mut [u8]) {
        // Extended capabilities (SR-IOV, ARI, ...) are hidden: an empty list.
        if offset >= 0x100 {
            data.fill(0);
            return;
        }
        self.device.region_read(CONFIG_REGION, data, offset as u64);
        self.irqs.read_config(offset, data);
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i;
            if let Some((reg, byte)) = Self::bar_index_for_reg(at & !3).map(|(r, _)| (r, at & 3)) {
                *b = match self.virtual_bar_slot(reg) {
                    Some((lower, half)) => self.bars[lower]
                        .map(|vb| vb.regs[half].to_le_bytes()[byte])
                        .unwrap_or(0),
                    None => 0,
                };
            } else if (ROM_BAR_REG..ROM_BAR_REG + 4).contains(&at) {
                *b = 0;
            } else if self.msi_unlink.is_some_and(|(ptr, _)| ptr == at) {
                *b = self.msi_unlink.map_or(0, |(_, next)| next);
            } else if let Some((layout, _)) = &self.msix {
                if at == layout.cap + 3 {
                    // Enable and function-mask bits are ours.
                    *b = (*b & 0x3f) | (self.msix_control >> 8) as u8;
                }
            }
        }
    }

    fn write_config(&mut self, offset: usize, data: &[u8]) -> Vec<BarMove> {
        if offset >= 0x100 {
            return Vec::new();
        }
        if let Some((reg, _)) = Self::bar_index_for_reg(offset) {
            let Some((lower, half)) = self.virtual_bar_slot(reg) else {
                return Vec::new();
            };
            let Some(mut vb) = self.bars[lower] else {
                return Vec::new();
            };
            let mut bytes = vb.regs[half].to_le_bytes();
            let at = offset & 3;
            let n = data.len().min(4 - at);
            bytes[at..at + n].copy_from_slice(&data[..n]);
            let value = u32::from_le_bytes(bytes);
            let size_mask = !(vb.bar.size - 1);
            let flags = vb.regs[0] & 0xf;
            vb.regs[half] = if half == 0 {
                (value & size_mask as u32 & !0xf) | flags
            } else {
                value & (size_mask >> 32) as u32
            };
            let low_sizing = vb.regs[0] & !0xf == size_mask as u32 & !0xf;
            // Sizing writes all ones to one half at a time: not a placement.
            let high_sizing = vb.bar.kind == BarKind::Mem64 && vb.regs[1] == u32::MAX;
            let addr = u64::from(vb.regs[0] & !0xf)
                | if vb.bar.kind == BarKind::Mem64 {
                    u64::from(vb.regs[1]) << 32
                } else {
                    0
                };
            let mut moves = Vec::new();
            if addr != vb.bar.addr && !low_sizing && !high_sizing {
                moves.push(BarMove {
                    index: lower,
                    kind: vb.bar.kind,
                    old: vb.bar.addr,
                    new: addr,
                    size: vb.bar.size,
                });
                vb.bar.addr = addr;
            }
            self.bars[lower] = Some(vb);
            return moves;
        }
        if (ROM_BAR_REG..ROM_BAR_REG + 4).contains(&offset) || self.irqs.write_config(offset, data)
        {
            return Vec::new();
        }
        if let Some((layout, _)) = self.msix {
            let ctrl_at = layout.cap + 2;
            if offset <= ctrl_at + 1 && offset + data.len() > ctrl_at {
                let mut ctrl = self.msix_control.to_le_bytes();
                for (i, &b) in data.iter().enumerate() {
                    let at = offset + i;
                    if at >= ctrl_at && at < ctrl_at + 2 {
                        ctrl[at - ctrl_at] = b;
                    }
                }
                self.set_msix_control(u16::from_le_bytes(ctrl));
                return Vec::new();
            }
        }
        // Everything else (command register: bus master, memory decode)
        // goes to the device; vfio-pci filters what it must.
        self.device.region_write(CONFIG_REGION, data, offset as u64);
        Vec::new()
    }

    fn bars(&self) -> Vec<Bar> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.filter(|vb| vb.bar.index == i).map(|vb| vb.bar))
            .collect()
    }

    fn bar_moved(&mut self, mv: &BarMove) {
        let Some(mapper) = self.mapper.clone() else {
            return;
        };
        let Some(d) = self.direct.get_mut(mv.index).and_then(Option::as_mut) else {
            return;
        };
        for h in d.handles.drain(..) {
            if let Err(e) = mapper.unmap(h) {
                log::warn!("vfio {}: unmap BAR {}: {e}", self.name, mv.index);
            }
        }
        if mv.new != 0 {
            for &(off, len) in &d.segments {
                match mapper.map(mv.new + off, len, d.host + off) {
                    Ok(h) => d.handles.push(h),
                    Err(e) => {
                        log::warn!("vfio {}: remap BAR {}: {e}; trapped", self.name, mv.index)
                    }
                }
            }
        }
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if let Some((l, msix)) = &self.msix {
            if bar == l.table_bar
                && (l.table_offset..l.table_offset + l.table_size).contains(&offset)
            {
                msix.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read_table(offset - l.table_offset, data);
                return;
            }
            if bar == l.pba_bar && (l.pba_offset..l.pba_offset + l.pba_size).contains(&offset) {
                msix.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .read_pba(offset - l.pba_offset, data);
                return;
            }
        }
        self.device.region_read(bar as u32, data, offset);
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some((l, msix)) = &self.msix {
            if bar == l.table_bar
                && (l.table_offset..l.table_offset + l.table_size).contains(&offset)
            {
                msix.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .write_table(offset - l.table_offset, data);
                return;
            }
            if bar == l.pba_bar && (l.pba_offset..l.pba_offset + l.pba_size).contains(&offset) {
                return;
            }
        }
        self.device.region_write(bar as u32, data, offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msix_pages_are_cut_out_of_direct_mappings() {
        // No MSI-X structures: the whole BAR.
        assert_eq!(direct_segments(0x4000, &[]), vec![(0, 0x4000)]);
        // igbvf's MSI-X BAR: table at 0, PBA at 0x2000, 16 KiB: two pages trapped.
        assert_eq!(
            direct_segments(0x4000, &[(0, 0x30), (0x2000, 8)]),
            vec![(0x1000, 0x1000), (0x3000, 0x1000)]
        );
        // Registers and MSI-X sharing a 64 KiB BAR: table and PBA mid-BAR, one
        // table crossing a page boundary.
        assert_eq!(
            direct_segments(0x10000, &[(0x8ff0, 0x20), (0xc000, 8)]),
            vec![(0, 0x8000), (0xa000, 0x2000), (0xd000, 0x3000)]
        );
        // Table and PBA on one page; everything trapped when they cover it all.
        assert_eq!(
            direct_segments(0x2000, &[(0x1000, 0x40), (0x1800, 8)]),
            vec![(0, 0x1000)]
        );
        assert!(direct_segments(0x1000, &[(0, 0x100)]).is_empty());
        // A range past the BAR (a broken capability) is clamped.
        assert_eq!(direct_segments(0x2000, &[(0x5000, 8)]), vec![(0, 0x2000)]);
    }

    /// A config space with the given capabilities (id, offset) chained in order.
    fn caps(list: &[(u8, usize)]) -> impl Fn(usize) -> u32 {
        let mut space = [0u32; 64];
        space[CAP_PTR_REG / 4] = list.first().map_or(0, |c| c.1 as u32);
        for (i, &(id, at)) in list.iter().enumerate() {
            let next = list.get(i + 1).map_or(0, |c| c.1 as u32);
            space[at / 4] = u32::from(id) | (next << 8);
        }
        move |at| space[at / 4]
    }

    #[test]
    fn msi_capability_is_unlinked() {
        // 82576 PF: PM, MSI, MSI-X, PCIe: PM's next pointer skips MSI.
        let pf = caps(&[(0x01, 0x40), (MSI_CAP_ID, 0x50), (0x11, 0x70), (0x10, 0xa0)]);
        assert_eq!(msi_unlink(pf), Some((0x41, 0x70)));
        // MSI first: the list head moves.
        assert_eq!(
            msi_unlink(caps(&[(MSI_CAP_ID, 0x50), (0x11, 0x70)])),
            Some((CAP_PTR_REG, 0x70))
        );
        // MSI last: the previous capability ends the list.
        assert_eq!(
            msi_unlink(caps(&[(0x11, 0x70), (MSI_CAP_ID, 0x50)])),
            Some((0x71, 0))
        );
        // A VF: MSI-X and PCIe only; no capabilities at all.
        assert_eq!(msi_unlink(caps(&[(0x11, 0x70), (0x10, 0xa0)])), None);
        assert_eq!(msi_unlink(caps(&[])), None);
        // A loop in a broken list ends.
        let looped = |at: usize| if at == CAP_PTR_REG { 0x40 } else { 0x4001 };
        assert_eq!(msi_unlink(looped), None);
    }
}
