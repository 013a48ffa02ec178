/* Prints "ready", then echoes console input (polling the UART) until a newline. */
#include "guest.h"
    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    lea ready(%rip), %rsi
    call puts
echo:
    mov $(COM1 + 5), %dx        /* LSR */
1:  inb %dx, %al
    test $1, %al                /* data ready */
    jz 1b
    mov $COM1, %dx
    inb %dx, %al
    outb %al, %dx
    cmp $'\n', %al
    jne echo
    RESET
    PUTS_FN
ready: .asciz "ready\n"
