//! virtio-blk across pause, snapshot and restore on the host's /dev/kvm,
//! with the test as the guest's driver (as in kvm_virtio.rs): a request
//! made while the VM is paused is not served; the VM is snapshotted and
//! dropped, a new VM is restored from the files, and on resume the device
//! serves the pending request from the saved queue position and then new
//! ones. Also: VFIO devices refuse snapshots.

use std::path::Path;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm::config::{BootSource, DriveConfig, MachineConfig, VmConfig};
use vmm::snapshot::{self, RestoreOverrides, SnapshotError};
use vmm::vm::Vm;

const QSIZE: u16 = 16;
const DESC: u64 = 0x10_0000;
const AVAIL: u64 = 0x10_0100;
const USED: u64 = 0x10_1000;
const REQ: u64 = 0x30_0000;

fn cf8(slot: u8, reg: u32) -> [u8; 4] {
    (0x8000_0000u32 | (u32::from(slot) << 11) | reg).to_le_bytes()
}

fn config_read32(vm: &Vm, reg: u32) -> u32 {
    assert!(vm.pio_bus().write(0xcf8, &cf8(1, reg)));
    let mut d = [0u8; 4];
    assert!(vm.pio_bus().read(0xcfc, &mut d));
    u32::from_le_bytes(d)
}

/// BAR 0 of the virtio-blk function in slot 1.
fn bar0(vm: &Vm) -> u64 {
    u64::from(config_read32(vm, 0x10) & !0xf) | (u64::from(config_read32(vm, 0x14)) << 32)
}

fn w(vm: &Vm, addr: u64, bytes: &[u8]) {
    assert!(vm.mmio_bus().write(addr, bytes));
}

/// Driver set-up: features, one queue of 16 at fixed addresses, DRIVER_OK.
fn bring_up(vm: &Vm) {
    assert!(vm.pio_bus().write(0xcf8, &cf8(1, 0x04)));
    assert!(vm.pio_bus().write(0xcfc, &6u16.to_le_bytes())); // memory + bus master
    let b = bar0(vm);
    w(vm, b + 0x14, &[0]);
    w(vm, b + 0x14, &[1 | 2]);
    w(vm, b + 0x08, &1u32.to_le_bytes());
    w(vm, b + 0x0c, &1u32.to_le_bytes()); // VERSION_1
    w(vm, b + 0x14, &[1 | 2 | 8]);
    w(vm, b + 0x16, &0u16.to_le_bytes());
    w(vm, b + 0x18, &QSIZE.to_le_bytes());
    for (off, addr) in [(0x20, DESC), (0x28, AVAIL), (0x30, USED)] {
        w(vm, b + off, &(addr as u32).to_le_bytes());
        w(vm, b + off + 4, &((addr >> 32) as u32).to_le_bytes());
    }
    w(vm, b + 0x1c, &1u16.to_le_bytes());
    w(vm, b + 0x14, &[1 | 2 | 8 | 4]);
    let mut status = [0u8];
    assert!(vm.mmio_bus().read(b + 0x14, &mut status));
    assert_eq!(status[0] & 0x40, 0, "device did not ask for a reset");
}

/// Put request `n` (a 512-byte write of `fill` at `sector`, or a read
/// when `fill` is None) on the ring as chain n*3.. and publish it.
fn submit(mem: &GuestMemoryMmap, n: u16, sector: u64, fill: Option<u8>) {
    let base = REQ + u64::from(n) * 0x1000;
    let mut hdr = [0u8; 16];
    hdr[0..4].copy_from_slice(&u32::from(fill.is_some()).to_le_bytes());
    hdr[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&hdr, GuestAddress(base)).unwrap();
    mem.write_slice(&[fill.unwrap_or(0); 512], GuestAddress(base + 0x100))
        .unwrap();
    mem.write_obj(0xffu8, GuestAddress(base + 0x400)).unwrap();
    let head = (n * 3) % QSIZE;
    let descs = [
        (base, 16u32, 0u16),
        (base + 0x100, 512, if fill.is_some() { 0 } else { 2 }),
        (base + 0x400, 1, 2), // WRITE
    ];
    for (i, (addr, len, flags)) in descs.iter().enumerate() {
        let idx = (head + i as u16) % QSIZE;
        let last = i == descs.len() - 1;
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        let flags = flags | if last { 0 } else { 1 }; // NEXT
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&((idx + 1) % QSIZE).to_le_bytes());
        mem.write_slice(&d, GuestAddress(DESC + 16 * u64::from(idx)))
            .unwrap();
    }
    let avail_idx: u16 = mem.read_obj(GuestAddress(AVAIL + 2)).unwrap();
    mem.write_obj(
        head,
        GuestAddress(AVAIL + 4 + 2 * u64::from(avail_idx % QSIZE)),
    )
    .unwrap();
    mem.write_obj(avail_idx.wrapping_add(1), GuestAddress(AVAIL + 2))
        .unwrap();
}

fn kick(vm: &Vm) {
    w(vm, bar0(vm) + 0x3000, &0u16.to_le_bytes());
}

fn used_idx(mem: &GuestMemoryMmap) -> u16 {
    mem.read_obj(GuestAddress(USED + 2)).unwrap()
}

fn wait_used(mem: &GuestMemoryMmap, idx: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while used_idx(mem) != idx {
        assert!(Instant::now() < deadline, "request {idx} never completed");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn status(mem: &GuestMemoryMmap, n: u16) -> u8 {
    mem.read_obj(GuestAddress(REQ + u64::from(n) * 0x1000 + 0x400))
        .unwrap()
}

/// A VM whose boot vCPU spins in real mode (`jmp $`), so that it runs and
/// can be paused, with the drive in slot 1.
fn spinning_vm(cfg: &VmConfig) -> Vm {
    let mut vm = Vm::new(
        &cfg.machine_config,
        Box::new(std::io::sink()),
        Instant::now(),
    )
    .unwrap();
    vm.add_drive(&cfg.drives[0]).unwrap();
    vm.memory()
        .write_slice(&[0xeb, 0xfe], GuestAddress(0x1000))
        .unwrap();
    let vcpu = vm.boot_vcpu().unwrap();
    let mut sregs = vcpu.get_sregs().unwrap();
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).unwrap();
    let mut regs = vcpu.get_regs().unwrap();
    regs.rip = 0x1000;
    regs.rflags = 2;
    vcpu.set_regs(&regs).unwrap();
    vm
}

fn config(dir: &Path, disk: &Path) -> VmConfig {
    VmConfig {
        boot_source: BootSource {
            kernel_image_path: dir.join("no-kernel"),
            initrd_path: None,
            boot_args: None,
        },
        machine_config: MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 32,
            ..Default::default()
        },
        serial: Default::default(),
        drives: vec![DriveConfig::from_cli(&format!("id=data,path={}", disk.display())).unwrap()],
        net: Vec::new(),
        imds: None,
        vfs: Vec::new(),
    }
}

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("vmm-snapvirtio-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn virtio_blk_queue_survives_pause_snapshot_and_restore() {
    let dir = scratch("blk");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let cfg = config(&dir, &disk);
    let mut vm = spinning_vm(&cfg);
    bring_up(&vm);
    vm.start().unwrap();

    submit(vm.memory(), 0, 0, Some(0x11));
    kick(&vm);
    wait_used(vm.memory(), 1);
    assert_eq!(status(vm.memory(), 0), 0);

    // Paused: a request the driver publishes and kicks is not served.
    vm.pause().unwrap();
    submit(vm.memory(), 1, 1, Some(0x22));
    kick(&vm);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(used_idx(vm.memory()), 1, "the device ran while paused");
    assert_eq!(status(vm.memory(), 1), 0xff);

    let snap = dir.join("vm.snap");
    let mem = dir.join("vm.mem");
    snapshot::create(&vm, &cfg, &snap, &mem).unwrap();
    drop(vm);

    let saved = snapshot::read(&snap).unwrap();
    let (mut vm2, _, _) = snapshot::restore(
        &saved,
        &mem,
        &RestoreOverrides::default(),
        Box::new(std::io::sink()),
        Instant::now(),
    )
    .unwrap();
    assert!(vm2.is_paused());
    assert_eq!(used_idx(vm2.memory()), 1, "guest memory came back");
    vm2.resume().unwrap();
    // The request published before the snapshot is served now, from the
    // saved queue position (not from index 0, which would redo request 0).
    wait_used(vm2.memory(), 2);
    assert_eq!(status(vm2.memory(), 1), 0);
    // And new requests work: read back sector 1 through the restored queue.
    submit(vm2.memory(), 2, 1, None);
    let data = REQ + 2 * 0x1000 + 0x100;
    vm2.memory()
        .write_slice(&[0u8; 512], GuestAddress(data))
        .unwrap();
    kick(&vm2);
    wait_used(vm2.memory(), 3);
    assert_eq!(status(vm2.memory(), 2), 0);
    let mut back = [0u8; 512];
    vm2.memory()
        .read_slice(&mut back, GuestAddress(data))
        .unwrap();
    assert!(
        back.iter().all(|&b| b == 0x22),
        "read of sector 1 after restore"
    );
    drop(vm2);
    let file = std::fs::read(&disk).unwrap();
    assert!(file[..512].iter().all(|&b| b == 0x11));
    assert!(file[512..1024].iter().all(|&b| b == 0x22));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn snapshots_refuse_vfio_devices_and_running_vms() {
    let dir = scratch("refuse");
    let disk = dir.join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let cfg = config(&dir, &disk);
    let mut vm = spinning_vm(&cfg);
    vm.start().unwrap();
    let (snap, mem) = (dir.join("s"), dir.join("m"));
    let e = snapshot::create(&vm, &cfg, &snap, &mem).unwrap_err();
    assert!(matches!(e, SnapshotError::NotPaused), "{e}");
    assert!(e.to_string().contains("pause it first"), "{e}");

    vm.pause().unwrap();
    let mut with_vf = cfg.clone();
    with_vf
        .vfs
        .push(vmm::config::VfConfig::from_cli("0000:01:10.0").unwrap());
    let e = snapshot::create(&vm, &with_vf, &snap, &mem).unwrap_err();
    assert!(matches!(e, SnapshotError::Vfio), "{e}");
    assert!(e.to_string().contains("VFIO"), "{e}");
    assert!(!snap.exists() && !mem.exists(), "nothing written");
    // A snapshot that names a VF cannot be restored either.
    snapshot::create(&vm, &cfg, &snap, &mem).unwrap();
    let mut saved = snapshot::read(&snap).unwrap();
    saved.config = with_vf;
    let e = snapshot::restore(
        &saved,
        &mem,
        &RestoreOverrides::default(),
        Box::new(std::io::sink()),
        Instant::now(),
    )
    .err()
    .expect("restore with a VF refused");
    assert!(matches!(e, SnapshotError::Vfio), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
