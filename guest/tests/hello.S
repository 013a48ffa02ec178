/* Says hello on the serial console, marks the boot timer, resets. */
#include "guest.h"
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    lea msg(%rip), %rsi
    call puts
    mov $123, %al
    mov $BOOT_TIMER, %dx
    outb %al, %dx
    RESET
    PUTS_FN
msg: .asciz "hello from the test guest\n"
