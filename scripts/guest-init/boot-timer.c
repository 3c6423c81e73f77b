/*
 * /bin/boot-timer: the first thing the guest's /init runs. It writes one byte to I/O port
 * 0x3f0; the VMM logs the time from VM start to this write as the guest's boot time
 * (Firecracker does the same with an MMIO write; we use a port).
 *
 * Busybox has no way to do port I/O, hence this helper. It is built with -nostdlib and raw
 * system calls: no libc start-up code runs, the binary is ~1 KiB, and it costs the guest
 * (where every CPL0 instruction may be emulated) almost nothing to exec.
 *
 * Equivalent libc code: ioperm(0x3f0, 1, 1); outb(123, 0x3f0);
 */
#define BOOT_TIMER_PORT 0x3f0
#define BOOT_TIMER_VALUE 123 /* the magic byte Firecracker also uses */

#define SYS_exit 60
#define SYS_ioperm 173

static long syscall3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "a"(nr), "D"(a), "S"(b), "d"(c)
                     : "rcx", "r11", "memory");
    return ret;
}

void _start(void)
{
    long ok = syscall3(SYS_ioperm, BOOT_TIMER_PORT, 1, 1) == 0;
    if (ok) {
        __asm__ volatile("outb %b0, %w1" : : "a"(BOOT_TIMER_VALUE), "Nd"(BOOT_TIMER_PORT));
    }
    /* Not fatal when it fails (e.g. kernel lockdown): boot just goes untimed. */
    syscall3(SYS_exit, ok ? 0 : 1, 0, 0);
    __builtin_unreachable();
}
