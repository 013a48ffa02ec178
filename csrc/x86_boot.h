/* Loading a Linux kernel into guest memory and laying out what its boot protocol expects:
 * ELF vmlinux (PVH 32-bit entry if it has the Xen PHYS32_ENTRY note, else the 64-bit
 * entry) or bzImage (64-bit entry at +0x200), initrd, command line, zero page or PVH
 * start info, GDT, IDT and identity page tables. */
#ifndef VMM_X86_BOOT_H
#define VMM_X86_BOOT_H
#include <stddef.h>
#include <stdint.h>

struct guest_mem;
struct e820_table;

enum boot_mode { BOOT_NONE = 0, BOOT_LONG64, BOOT_PVH32 };

struct boot_info {
    int mode;               /* enum boot_mode */
    const char *kind;       /* "elf-pvh", "elf-64", "bzimage" */
    uint64_t entry;         /* guest-physical entry point */
    uint64_t boot_arg;      /* rsi (zero page) for BOOT_LONG64, ebx (start info) for PVH */
    uint64_t kernel_end;    /* highest guest-physical byte the kernel needs + 1 */
    uint64_t initrd_addr, initrd_size;
};

int x86_load(struct guest_mem *m, const struct e820_table *e820, const char *kernel,
             const char *initrd, const char *cmdline, struct boot_info *out,
             char *err, size_t errlen);

#endif
