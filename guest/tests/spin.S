/* Says it is spinning, then spins forever: only a host stop ends it. */
#include "guest.h"
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    lea msg(%rip), %rsi
    call puts
1:  jmp 1b
    PUTS_FN
msg: .asciz "spinning\n"
