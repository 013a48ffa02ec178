/* An invalid opcode with no usable IDT: #UD -> #GP -> #DF -> triple fault. */
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    nop
    ud2
