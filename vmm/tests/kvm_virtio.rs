//! virtio-blk over PCI on a real KVM VM (the host's /dev/kvm), with the
//! test acting as the guest driver: it finds the device through the
//! 0xCF8/0xCFC config ports, negotiates features and sets up a queue
//! through BAR 0 on the MMIO bus, writes descriptor chains into guest
//! memory and kicks the queue; the device's worker thread serves them
//! against a raw file.

use std::time::{Duration, Instant};

use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm::config::{DriveConfig, MachineConfig};
use vmm::vm::Vm;

fn cf8(slot: u8, reg: u32) -> [u8; 4] {
    (0x8000_0000u32 | (u32::from(slot) << 11) | reg).to_le_bytes()
}

fn config_read32(vm: &Vm, slot: u8, reg: u32) -> u32 {
    assert!(vm.pio_bus().write(0xcf8, &cf8(slot, reg)));
    let mut d = [0u8; 4];
    assert!(vm.pio_bus().read(0xcfc, &mut d));
    u32::from_le_bytes(d)
}

fn config_write16(vm: &Vm, slot: u8, reg: u32, v: u16) {
    assert!(vm.pio_bus().write(0xcf8, &cf8(slot, reg & !3)));
    assert!(vm
        .pio_bus()
        .write(0xcfc + u64::from(reg & 3), &v.to_le_bytes()));
}

struct Bar0<'a> {
    vm: &'a Vm,
    base: u64,
}

impl Bar0<'_> {
    fn r8(&self, off: u64) -> u8 {
        let mut d = [0u8; 1];
        assert!(self.vm.mmio_bus().read(self.base + off, &mut d));
        d[0]
    }
    fn r32(&self, off: u64) -> u32 {
        let mut d = [0u8; 4];
        assert!(self.vm.mmio_bus().read(self.base + off, &mut d));
        u32::from_le_bytes(d)
    }
    fn w8(&self, off: u64, v: u8) {
        assert!(self.vm.mmio_bus().write(self.base + off, &[v]));
    }
    fn w16(&self, off: u64, v: u16) {
        assert!(self.vm.mmio_bus().write(self.base + off, &v.to_le_bytes()));
    }
    fn w32(&self, off: u64, v: u32) {
        assert!(self.vm.mmio_bus().write(self.base + off, &v.to_le_bytes()));
    }
    fn w64(&self, off: u64, v: u64) {
        self.w32(off, v as u32);
        self.w32(off + 4, (v >> 32) as u32);
    }
}

const HDR: u64 = 0x20_0000;
const DATA: u64 = 0x20_1000;
const STATUS: u64 = 0x20_3000;

fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn request(vm: &Vm, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    vm.memory().write_slice(&h, GuestAddress(HDR)).unwrap();
}

fn wait_used(vq: &MockSplitQueue<'_, vm_memory::GuestMemoryMmap>, idx: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while vq.used().idx().load() != idx {
        assert!(
            Instant::now() < deadline,
            "device never completed request {idx}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn test_driver_reads_and_writes_a_file_through_virtio_pci() {
    let dir = std::env::temp_dir().join(format!("vmm-kvm-virtio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();

    let machine = MachineConfig {
        vcpu_count: 1,
        mem_size_mib: 32,
        ..Default::default()
    };
    let mut vm = Vm::new(&machine, Box::new(std::io::sink()), Instant::now()).unwrap();
    vm.add_drive(&DriveConfig {
        drive_id: "data".into(),
        path_on_host: Some(disk.clone()),
        volume_id: None,
        endpoint: None,
        token: None,
        is_read_only: false,
        serial: Some("vol0123456789abcdef0".into()),
        num_queues: 1,
        rate_limiter: None,
    })
    .unwrap();

    // Discovery: virtio-blk (modern) in slot 1, mass-storage class.
    assert_eq!(config_read32(&vm, 1, 0), 0x1042_1af4);
    assert_eq!(config_read32(&vm, 1, 0x08) >> 24, 0x01);
    assert_eq!(config_read32(&vm, 2, 0), 0xffff_ffff, "nothing in slot 2");
    assert_eq!(config_read32(&vm, 1, 0x10) & 0x6, 0x4, "64-bit memory BAR");
    let bar = Bar0 {
        vm: &vm,
        base: bar0(&vm),
    };

    // Feature negotiation.
    bar.w8(0x14, 0); // reset
    bar.w8(0x14, 1 | 2); // ACKNOWLEDGE | DRIVER
    bar.w32(0x00, 1);
    assert_ne!(bar.r32(0x04) & 1, 0, "VIRTIO_F_VERSION_1 offered");
    bar.w32(0x00, 0);
    let low = bar.r32(0x04);
    assert_ne!(low & (1 << 9), 0, "FLUSH offered");
    bar.w32(0x08, 1);
    bar.w32(0x0c, 1); // accept VERSION_1
    bar.w32(0x08, 0);
    bar.w32(0x0c, 1 << 9); // and FLUSH
    bar.w8(0x14, 1 | 2 | 8);
    assert_ne!(bar.r8(0x14) & 8, 0, "FEATURES_OK accepted");

    // Capacity from the device config: 1 MiB = 2048 sectors.
    assert_eq!(bar.r32(0x2000), 2048);

    // One queue of 16 in guest memory.
    let vq = set_up_queue(&vm, &bar, 16);
    assert_eq!(bar.r8(0x14) & 0x40, 0, "device did not ask for a reset");

    // WRITE 1 KiB at sector 8.
    request(&vm, 1, 8);
    vm.memory()
        .write_slice(&[0x5au8; 1024], GuestAddress(DATA))
        .unwrap();
    vq.add_desc_chains(
        &chain(
            &[
                desc(HDR, 16, false),
                desc(DATA, 1024, false),
                desc(STATUS, 1, true),
            ],
            0,
        ),
        0,
    )
    .unwrap();
    bar.w16(0x3000, 0); // notify queue 0
    wait_used(&vq, 1);
    assert_eq!(vm.memory().read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
    let file = std::fs::read(&disk).unwrap();
    assert!(file[8 * 512..10 * 512].iter().all(|&b| b == 0x5a));
    assert!(file[..8 * 512].iter().all(|&b| b == 0));

    // READ it back into a cleared buffer.
    vm.memory()
        .write_slice(&[0u8; 1024], GuestAddress(DATA))
        .unwrap();
    request(&vm, 0, 8);
    vq.add_desc_chains(
        &chain(
            &[
                desc(HDR, 16, false),
                desc(DATA, 1024, true),
                desc(STATUS, 1, true),
            ],
            3,
        ),
        3,
    )
    .unwrap();
    bar.w16(0x3000, 0);
    wait_used(&vq, 2);
    let mut back = [0u8; 1024];
    vm.memory()
        .read_slice(&mut back, GuestAddress(DATA))
        .unwrap();
    assert!(back.iter().all(|&b| b == 0x5a));

    // A read past the end fails with IOERR and leaves the file alone.
    request(&vm, 0, 4096);
    vq.add_desc_chains(
        &chain(
            &[
                desc(HDR, 16, false),
                desc(DATA, 512, true),
                desc(STATUS, 1, true),
            ],
            6,
        ),
        6,
    )
    .unwrap();
    bar.w16(0x3000, 0);
    wait_used(&vq, 3);
    assert_eq!(vm.memory().read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 1);

    // Reset stops the worker; the device forgets its queue.
    bar.w8(0x14, 0);
    assert_eq!(bar.r8(0x14), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

/// BAR 0 of the function in slot 1, with memory decode and bus master on.
fn bar0(vm: &Vm) -> u64 {
    let bar_lo = config_read32(vm, 1, 0x10);
    config_write16(vm, 1, 0x04, 0x6); // memory decode + bus master
    u64::from(bar_lo & !0xf) | (u64::from(config_read32(vm, 1, 0x14)) << 32)
}

/// Queue 0 of `size` at 1 MiB in guest memory, then DRIVER_OK.
fn set_up_queue<'a>(
    vm: &'a Vm,
    bar: &Bar0<'_>,
    size: u16,
) -> MockSplitQueue<'a, vm_memory::GuestMemoryMmap> {
    let vq = MockSplitQueue::create(vm.memory(), GuestAddress(0x10_0000), size);
    bar.w16(0x16, 0);
    bar.w16(0x18, size);
    bar.w64(0x20, vq.desc_table_addr().0);
    bar.w64(0x28, vq.avail_addr().0);
    bar.w64(0x30, vq.used_addr().0);
    bar.w16(0x1c, 1);
    bar.w8(0x14, 1 | 2 | 8 | 4); // DRIVER_OK
    vq
}

/// Bring the device in slot 1 to DRIVER_OK (VERSION_1 only) with one
/// queue of 64. Returns BAR 0's address.
fn bring_up(vm: &Vm) -> (u64, MockSplitQueue<'_, vm_memory::GuestMemoryMmap>) {
    let base = bar0(vm);
    let bar = Bar0 { vm, base };
    bar.w8(0x14, 0);
    bar.w8(0x14, 1 | 2);
    bar.w32(0x08, 1);
    bar.w32(0x0c, 1);
    bar.w8(0x14, 1 | 2 | 8);
    (base, set_up_queue(vm, &bar, 64))
}

/// An ops limit of 10/s: 20 writes submitted at once cannot finish in
/// less than a second (10 from the full bucket, then 10 per second), and
/// all of them do finish.
#[test]
fn rate_limited_drive_throttles_requests_without_losing_any() {
    let dir = std::env::temp_dir().join(format!("vmm-kvm-virtio-rl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let machine = MachineConfig {
        vcpu_count: 1,
        mem_size_mib: 32,
        ..Default::default()
    };
    let mut vm = Vm::new(&machine, Box::new(std::io::sink()), Instant::now()).unwrap();
    let drive = DriveConfig::from_cli(&format!("id=data,path={},iops=10", disk.display())).unwrap();
    vm.add_drive(&drive).unwrap();
    let (base, vq) = bring_up(&vm);
    let bar = Bar0 { vm: &vm, base };
    let requests = 20u16;
    let mut descs = Vec::new();
    for r in 0..requests {
        // Each request: its own header, data and status areas.
        let hdr = 0x30_0000 + u64::from(r) * 0x1000;
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&1u32.to_le_bytes());
        h[8..16].copy_from_slice(&u64::from(r).to_le_bytes());
        vm.memory().write_slice(&h, GuestAddress(hdr)).unwrap();
        vm.memory()
            .write_slice(&[r as u8 + 1; 512], GuestAddress(hdr + 0x100))
            .unwrap();
        descs.extend(chain(
            &[
                desc(hdr, 16, false),
                desc(hdr + 0x100, 512, false),
                desc(hdr + 0x400, 1, true),
            ],
            r * 3,
        ));
    }
    vq.add_desc_chains(&descs, 0).unwrap();
    let start = Instant::now();
    bar.w16(0x3000, 0);
    let deadline = start + Duration::from_secs(20);
    while vq.used().idx().load() != requests {
        assert!(
            Instant::now() < deadline,
            "throttled requests never completed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "20 ops at 10/s took only {took:?}"
    );
    let file = std::fs::read(&disk).unwrap();
    for r in 0..usize::from(requests) {
        assert!(
            file[r * 512..(r + 1) * 512]
                .iter()
                .all(|&b| b == r as u8 + 1),
            "request {r} lost"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Link descriptors into one chain placed at table index `first`.
fn chain(descs: &[RawDescriptor], first: u16) -> Vec<RawDescriptor> {
    use virtio_bindings::bindings::virtio_ring::VRING_DESC_F_NEXT;
    descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let s = SplitDescriptor::from(*d);
            let last = i == descs.len() - 1;
            let flags = if last {
                s.flags()
            } else {
                s.flags() | VRING_DESC_F_NEXT as u16
            };
            let next = if last { 0 } else { first + i as u16 + 1 };
            RawDescriptor::from(SplitDescriptor::new(s.addr().0, s.len(), flags, next))
        })
        .collect()
}
