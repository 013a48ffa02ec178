/* The boot benchmark's guest (benchmarks/bench_kvm_boot.py), booted unchanged by our kvm
 * engine and by plain QEMU: entered through the PVH note (both load PVH ELFs), it marks the
 * boot timer, then ends whichever VMM runs it. QEMU exits on the isa-debug-exit write to
 * 0xf4, which our VMM counts as an unclaimed port and ignores; our VMM ends on the i8042
 * reset, which QEMU never reaches. A few instructions at CPL0: cheap even under PVM. */
#include "guest.h"
#define DEBUG_EXIT 0xf4
    .section .note.Xen, "a", @note
    .p2align 2
    .long 4                     /* name size */
    .long 4                     /* descriptor size */
    .long 18                    /* XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_entry

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:                         /* the 64-bit entry: the PVH note takes precedence */
    ud2
    .code32
pvh_entry:
    movb $123, %al              /* "init started" */
    mov $BOOT_TIMER, %dx
    outb %al, %dx
    xor %eax, %eax              /* QEMU: exit status (0 << 1) | 1 = 1 */
    outb %al, $DEBUG_EXIT
    RESET                       /* ours: i8042 reset, a clean "shutdown" */
