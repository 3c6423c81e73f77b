//! The real thing: `vmm` boots Debian's 6.12 kernel to its initramfs /init
//! on nested KVM inside the test host, with 2 vCPUs and 256 MiB. The guest
//! prints a marker, the CPUs and MemTotal it sees, and reboots; `vmm` must
//! exit 0. Both boot paths run in one test-host boot: the ELF vmlinux (PVH
//! entry) and Debian's bzImage (64-bit entry).

use std::time::Duration;

use integration_tests::{field, guest_assets, sh_quote, testhost_run};

const VMM: &str = env!("CARGO_BIN_EXE_vmm");
const MEM_MIB: u64 = 256;

#[test]
fn debian_kernel_boots_to_init_with_two_vcpus_in_the_test_host() {
    let assets = guest_assets();
    // No reboot= parameter: the default reboot path (EFI -> real-mode BIOS
    // on hardware-reduced ACPI) must end the VM too.
    let cmdline = "console=ttyS0 quiet panic=-1 vmm.test=boot";
    let boot = |tag: &str, kernel: &std::path::Path| {
        format!(
            "echo {tag}-BEGIN; {vmm} --kernel {k} --initrd {i} --vcpus 2 --mem-mib {MEM_MIB} --cmdline {c}; echo {tag}-EXIT $?",
            vmm = sh_quote(VMM),
            k = sh_quote(&kernel.to_string_lossy()),
            i = sh_quote(&assets.initramfs.to_string_lossy()),
            c = sh_quote(cmdline),
        )
    };
    let script = format!(
        "{}; {}",
        boot("PVH", &assets.vmlinux),
        boot("BZIMAGE", &assets.bzimage)
    );
    let out = testhost_run(&script, Duration::from_secs(600));
    let all = format!("{}\n--- stderr ---\n{}", out.stdout, out.stderr);
    assert_eq!(out.status, 0, "test host run failed:\n{all}");

    for tag in ["PVH", "BZIMAGE"] {
        let begin = out
            .stdout
            .find(&format!("{tag}-BEGIN"))
            .unwrap_or_else(|| panic!("{tag} never ran:\n{all}"));
        let section = &out.stdout[begin..];
        // Up to the end of the "<tag>-EXIT <status>" line.
        let end = section
            .find(&format!("{tag}-EXIT"))
            .map(|e| e + section[e..].find('\n').unwrap_or(section.len() - e))
            .unwrap_or(section.len());
        let section = &section[..end];
        assert!(
            section.contains("VMM-GUEST-MARKER booted"),
            "{tag}: no marker from the guest's init:\n{all}"
        );
        assert_eq!(field(section, "VMM-GUEST-CPUS"), Some("2"), "{tag}:\n{all}");
        let mem_kb: u64 = field(section, "VMM-GUEST-MEMTOTAL")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{tag}: no MemTotal line:\n{all}"));
        // MemTotal is RAM minus what the kernel reserves for itself: most of
        // 256 MiB, never more.
        assert!(
            mem_kb > MEM_MIB * 1024 * 6 / 10 && mem_kb <= MEM_MIB * 1024,
            "{tag}: MemTotal {mem_kb} kB for a {MEM_MIB} MiB guest"
        );
        assert_eq!(
            field(section, &format!("{tag}-EXIT")),
            Some("0"),
            "{tag}: vmm must exit 0 after the guest reboots:\n{all}"
        );
    }
}
