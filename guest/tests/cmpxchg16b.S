/* lock cmpxchg16b at CPL0: native on hardware KVM (then the guest resets), an emulation
 * failure on the PVM software hypervisor, which lacks it (docs/platform.md). */
#include "guest.h"
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    mov $0x10000, %edi          /* 16-byte aligned scratch in low RAM */
    xor %eax, %eax
    xor %edx, %edx
    xor %ebx, %ebx
    xor %ecx, %ecx
    lock cmpxchg16b (%rdi)
    RESET
