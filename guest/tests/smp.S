/* Two vCPUs. The BSP reports its APIC id (CPUID leaf 1 EBX[31:24]) to the report port,
 * starts the AP with INIT + SIPI into a real-mode trampoline at 0x10000, waits (bounded)
 * for the AP's flag, resets. The AP reports its APIC id and sets the flag. */
#include "guest.h"
#define TRAMPOLINE 0x10000
#define FLAG       0x10f00      /* TRAMPOLINE segment, offset 0xf00 */
#define LAPIC      0xfee00000
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %ebx, %eax
    mov $REPORT_PORT, %dx
    outl %eax, %dx
    lea tramp_start(%rip), %rsi
    mov $TRAMPOLINE, %edi
    mov $(tramp_end - tramp_start), %ecx
    rep movsb
    movl $0, FLAG
    mov $LAPIC, %edi
    orl $0x100, 0xf0(%rdi)      /* spurious vector register: APIC software-enabled */
    movl $(1 << 24), 0x310(%rdi)
    movl $0x4500, 0x300(%rdi)   /* INIT to APIC id 1 */
    movl $(1 << 24), 0x310(%rdi)
    movl $(0x4600 | (TRAMPOLINE >> 12)), 0x300(%rdi) /* SIPI: start at TRAMPOLINE */
    mov $3000000, %ecx
1:  cmpl $0, FLAG
    jne 2f
    pause
    dec %ecx
    jnz 1b
2:  RESET

    .code16
tramp_start:
    cli
    mov %cs, %ax
    mov %ax, %ds
    mov $1, %eax
    cpuid
    shr $24, %ebx
    mov %ebx, %eax
    mov $REPORT_PORT, %dx
    outl %eax, %dx
    movl $1, (FLAG - TRAMPOLINE)
3:  hlt
    jmp 3b
tramp_end:
