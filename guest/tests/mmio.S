/* Reads and writes of 1, 2, 4 and 8 bytes to the Python MMIO test device, then reads of
 * an unclaimed MMIO address and an unclaimed port, whose values it reports. */
#include "guest.h"
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    mov $REPORT_MMIO, %edi
    movabs $0x1122334455667788, %rax
    mov %rax, (%rdi)            /* write 8 @0 */
    movl 8(%rdi), %eax          /* read 4 @8 */
    add $1, %eax
    movl %eax, 0x10(%rdi)       /* write 4 @0x10: the value read + 1 */
    movb 0x18(%rdi), %al        /* read 1 @0x18 */
    movb %al, 0x19(%rdi)        /* write 1 @0x19 */
    movw 0x1a(%rdi), %ax        /* read 2 @0x1a */
    movw %ax, 0x1c(%rdi)        /* write 2 @0x1c */
    mov $0xe0000000, %esi       /* nobody's MMIO */
    movl (%rsi), %eax
    movl %eax, 0x20(%rdi)       /* expect all-ones */
    mov $0x5f0, %dx             /* nobody's port */
    inl %dx, %eax
    movl %eax, 0x24(%rdi)       /* expect all-ones */
    RESET
