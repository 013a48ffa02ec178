/* Shared by the freestanding test guests (GNU as, preprocessed by gcc). They run at CPL0,
 * which the PVM hypervisor on the development machines emulates at ~0.6 us per
 * instruction: keep them tiny. They report through two test devices the Python test
 * registers (an MMIO range and a port) and through the serial console. */
#define REPORT_MMIO 0xd0000000  /* 8-byte slots, served by a Python test device */
#define REPORT_PORT 0x500       /* 32-bit writes, served by a Python test device */
#define COM1        0x3f8
#define BOOT_TIMER  0x440

/* Ask the i8042 to pulse the reset line: the VMM ends the VM as "shutdown". */
.macro RESET
    movb $0xfe, %al
    outb %al, $0x64
9991: hlt
    jmp 9991b
.endm

/* Write the NUL-terminated string at %rsi to COM1 (clobbers rax, rdx, rsi). */
.macro PUTS_FN
puts:
    mov $COM1, %dx
9992: lodsb
    test %al, %al
    jz 9993f
    outb %al, %dx
    jmp 9992b
9993: ret
.endm
