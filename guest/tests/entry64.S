/* Reports the 64-bit boot protocol entry state: control registers, EFER, CS, rsi (the
 * zero page) and fields of the zero page, as 8-byte MMIO writes the test checks. */
#include "guest.h"
    .section .text.entry, "ax"
    .code64
#ifdef BZIMAGE
    /* A bzImage's 64-bit entry is 0x200 bytes into its protected-mode part. */
    .skip 0x200, 0xcc
#endif
    .globl _start
_start:
    mov %rsi, %rbx
    mov $REPORT_MMIO, %edi
    mov %cr0, %rax
    mov %rax, 0(%rdi)
    mov %cr4, %rax
    mov %rax, 8(%rdi)
    mov $0xc0000080, %ecx       /* EFER */
    rdmsr
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, 16(%rdi)
    xor %eax, %eax
    mov %cs, %ax
    mov %rax, 24(%rdi)
    mov %rbx, 32(%rdi)
    mov %rsp, 40(%rdi)
    mov %cr3, %rax
    mov %rax, 48(%rdi)
    movl 0x202(%rbx), %eax      /* setup header magic "HdrS" */
    mov %rax, 56(%rdi)
    movzbl 0x210(%rbx), %eax    /* type_of_loader */
    mov %rax, 64(%rdi)
    movl 0x228(%rbx), %eax      /* cmd_line_ptr */
    mov %rax, 72(%rdi)
    mov (%rax), %rax            /* first 8 bytes of the command line */
    mov %rax, 80(%rdi)
    movzbl 0x1e8(%rbx), %eax    /* e820 entries */
    mov %rax, 88(%rdi)
    pushfq
    pop %rax
    mov %rax, 96(%rdi)
    xor %eax, %eax
    mov %ds, %ax
    mov %rax, 104(%rdi)
    RESET
