/* Walks the 16550A registers the way Linux's 8250 driver probes them and reports what it
 * reads (32-bit writes to the report port), including the PIC's IRR to see IRQ 4 raised. */
#include "guest.h"
#define REG(n) (COM1 + n)

/* Report the byte read from port \port. */
.macro REPORT_IN port
    mov $\port, %dx
    inb %dx, %al
    movzbl %al, %eax
    mov $REPORT_PORT, %dx
    outl %eax, %dx
.endm

.macro OUT port, value
    mov $\port, %dx
    mov $\value, %al
    outb %al, %dx
.endm

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    OUT REG(7), 0x5a            /* scratch register holds a value */
    REPORT_IN REG(7)            /* 1: 0x5a */
    OUT REG(3), 0x80            /* DLAB on: divisor latch */
    OUT REG(0), 0x01
    OUT REG(1), 0x00
    REPORT_IN REG(0)            /* 2: DLL 0x01 */
    OUT REG(3), 0x03            /* DLAB off, 8N1 */
    REPORT_IN REG(3)            /* 3: LCR 0x03 */
    OUT REG(2), 0x07            /* FCR: FIFOs on, cleared */
    REPORT_IN REG(2)            /* 4: IIR 0xc1: FIFOs, no interrupt */
    OUT REG(4), 0x1a            /* MCR: loopback, RTS, OUT2 */
    REPORT_IN REG(6)            /* 5: MSR 0x90: CTS and DCD looped back */
    OUT REG(0), 'X'             /* loopback: transmitted byte is received */
    REPORT_IN REG(5)            /* 6: LSR 0x61: DR, THRE, TEMT */
    REPORT_IN REG(0)            /* 7: 'X' */
    OUT REG(4), 0x0b            /* MCR: DTR, RTS, OUT2; loopback off */
    OUT 0x20, 0x0a              /* PIC OCW3: next read of 0x20 is the IRR */
    REPORT_IN 0x20              /* 8: IRR: IRQ 4 not raised yet */
    OUT REG(1), 0x02            /* IER: THR empty interrupt */
    REPORT_IN REG(2)            /* 9: IIR 0xc2: THR empty (and acknowledged) */
    REPORT_IN REG(2)            /* 10: IIR 0xc1: nothing pending */
    OUT 0x20, 0x0a
    REPORT_IN 0x20              /* 11: IRR bit 4: the line was raised */
    OUT REG(1), 0x01            /* IER: received data */
    lea msg(%rip), %rsi
    call puts                   /* "send\n": the host answers with one byte */
    mov $REG(5), %dx
1:  inb %dx, %al
    test $1, %al
    jz 1b
    REPORT_IN REG(2)            /* 12: IIR 0xc4: received data */
    REPORT_IN REG(0)            /* 13: the byte */
    REPORT_IN REG(2)            /* 14: IIR 0xc1 */
    RESET
    PUTS_FN
msg: .asciz "send\n"
