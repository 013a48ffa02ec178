/* Every guest-physical address the VMM uses, and why it is there.
 *
 *   0x0000_0000  real-mode IVT and BIOS data area: left zero (no BIOS runs)
 *   0x0000_0500  GDT            (low, out of the kernel's way; Linux replaces it early)
 *   0x0000_0520  IDT            (one null gate: any early exception triple-faults, which
 *                                we report with registers instead of hanging)
 *   0x0000_6000  PVH hvm_start_info, then its module list and memory map
 *   0x0000_7000  zero page (struct boot_params) for the 64-bit and bzImage entries
 *   0x0000_8ff0  initial stack top (grows down inside the 0x8000 page)
 *   0x0000_9000  PML4, 0xa000 PDPT, 0xb000..0xefff four page directories: identity map of
 *                the first 4 GiB with 2 MiB pages (the 64-bit boot protocol needs paging
 *                on and the kernel, zero page and command line mapped 1:1)
 *   0x0002_0000  kernel command line (up to CMDLINE_MAX bytes)
 *   0x0009_f000  MP configuration table (reserved in e820)
 *   0x0009_fc00  MP floating pointer: Linux scans the last KiB below 640 KiB for it
 *   0x000a_0000  legacy VGA/ROM hole up to 1 MiB (reserved in e820 from 0x9f000 on)
 *   0x0010_0000  kernel (bzImage protected-mode part; ELF segments at their p_paddr,
 *                which must be at or above here)
 *   ...          initrd: as high as possible below min(RAM top below 4 GiB, initrd_addr_max)
 *   0xc000_0000  3 GiB: start of the 32-bit MMIO hole (no RAM from here to 4 GiB)
 *   0xd000_0000  MMIO window for devices: its first MiB for test devices (the test guests'
 *                report range, Python devices), then
 *   0xd010_0000  virtio-mmio: device i at + i * 4 KiB (vm_virtio.c); below 4 GiB, so the
 *                boot identity map and 32-bit code reach it; announced to Linux as
 *                virtio_mmio.device=4K@0xd0100000:<irq> (one per device)
 *   0xfec0_0000  IOAPIC (in-kernel irqchip)
 *   0xfee0_0000  local APICs (in-kernel)
 *   0xfffb_d000  three pages for KVM_SET_TSS_ADDR (needed by VMX real-mode emulation)
 *   0x1_0000_0000  RAM beyond 3 GiB continues here
 */
#ifndef VMM_LAYOUT_H
#define VMM_LAYOUT_H

#define LAYOUT_GDT            0x500ULL
#define LAYOUT_GDT_ENTRIES    5
#define LAYOUT_IDT            0x520ULL
#define LAYOUT_PVH_INFO       0x6000ULL
#define LAYOUT_PVH_MODLIST    0x6040ULL  /* one hvm_modlist_entry (32 bytes): the initrd */
#define LAYOUT_PVH_MEMMAP     0x6080ULL  /* hvm_memmap_table_entry[] (24 bytes each) */
#define LAYOUT_ZERO_PAGE      0x7000ULL
#define LAYOUT_STACK_TOP      0x8ff0ULL
#define LAYOUT_PML4           0x9000ULL
#define LAYOUT_PDPT           0xa000ULL
#define LAYOUT_PD             0xb000ULL  /* 4 pages */
#define LAYOUT_CMDLINE        0x20000ULL
#define LAYOUT_CMDLINE_MAX    4096ULL
#define LAYOUT_MPTABLE        0x9f000ULL
#define LAYOUT_MPFP           0x9fc00ULL
#define LAYOUT_LOW_RAM_END    0x9f000ULL /* RAM below 640 KiB ends where the MP table starts */
#define LAYOUT_HIGH_RAM       0x100000ULL
#define LAYOUT_KERNEL_MIN     0x100000ULL
#define LAYOUT_MMIO_HOLE      0xc0000000ULL
#define LAYOUT_MMIO_DEVICES   0xd0000000ULL
#define LAYOUT_VIRTIO_MMIO    0xd0100000ULL  /* + i * 0x1000 */
#define LAYOUT_IOAPIC         0xfec00000ULL
#define LAYOUT_LAPIC          0xfee00000ULL
#define LAYOUT_TSS            0xfffbd000ULL
#define LAYOUT_4G             0x100000000ULL

/* GDT selectors: the Linux boot protocols want __BOOT_CS = 0x10, __BOOT_DS = 0x18. */
#define SEL_CODE 0x10
#define SEL_DATA 0x18
#define SEL_TSS  0x20

#endif
