/* Entered through the PVH note in 32-bit protected mode: reports ebx (the start info),
 * its magic, CR0, CS, the command line address and the memory map entry count. */
#include "guest.h"
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
_start:                         /* the 64-bit entry: must not be used */
    ud2
    .code32
pvh_entry:
    mov $REPORT_PORT, %dx
    mov %ebx, %eax
    outl %eax, %dx
    mov (%ebx), %eax            /* magic */
    outl %eax, %dx
    mov %cr0, %eax
    outl %eax, %dx
    xor %eax, %eax
    mov %cs, %ax
    outl %eax, %dx
    mov 24(%ebx), %eax          /* cmdline_paddr (low half) */
    outl %eax, %dx
    mov 48(%ebx), %eax          /* memmap_entries */
    outl %eax, %dx
    mov %cr4, %eax
    outl %eax, %dx
    RESET
