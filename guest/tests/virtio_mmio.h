/* Shared by the freestanding virtio-mmio driver guests (virtio_blk.S, virtio_vsock.S):
 * the register map, where the driver keeps its ring and buffers, and the pieces every
 * driver repeats (negotiation, queue set-up, interrupts). The driver talks to the first
 * virtio device: %rbx holds its window, %dx the report port, throughout. */
#define VIRTIO 0xd0100000  /* LAYOUT_VIRTIO_MMIO: the first device's window */
#define IRQ 5              /* and its IRQ (csrc/vm_virtio.c) */
#define VECTOR 0x30
#define DESC 0x200000      /* queue of 8: descriptors, then the avail and used rings */
#define AVAIL 0x200100
#define USED 0x200200
#define SEEN 0x200420      /* last InterruptStatus read by the handler */
#define COUNT 0x200424     /* interrupts taken */
#define DATA 0x201000      /* a 4 KiB buffer */
#define IDT 0x202000
#define IOAPIC 0xfec00000
#define LAPIC 0xfee00000

/* Register offsets (virtio 1.x, 4.2.2) */
#define MAGIC 0x00
#define VERSION 0x04
#define DEVICE_ID 0x08
#define DEV_FEATURES 0x10
#define DEV_FEATURES_SEL 0x14
#define DRV_FEATURES 0x20
#define DRV_FEATURES_SEL 0x24
#define QUEUE_SEL 0x30
#define QUEUE_NUM_MAX 0x34
#define QUEUE_NUM 0x38
#define QUEUE_READY 0x44
#define QUEUE_NOTIFY 0x50
#define INT_STATUS 0x60
#define INT_ACK 0x64
#define STATUS 0x70
#define DESC_LO 0x80
#define DRIVER_LO 0x90
#define DEVICE_LO 0xa0

.macro REPORT src
    mov \src, %eax
    outl %eax, %dx
.endm

/* Reset, then ACKNOWLEDGE | DRIVER, VERSION_1 only, FEATURES_OK; queue 0 selected. */
.macro NEGOTIATE
    movl $0, STATUS(%rbx)
    movl $3, STATUS(%rbx)
    movl $1, DRV_FEATURES_SEL(%rbx)
    movl $1, DRV_FEATURES(%rbx)
    movl $0xb, STATUS(%rbx)
    movl $0, QUEUE_SEL(%rbx)
.endm

/* Queue 0: 8 entries at DESC/AVAIL/USED, made ready. */
.macro SETUP_QUEUE0
    movl $8, QUEUE_NUM(%rbx)
    movl $DESC, DESC_LO(%rbx)
    movl $AVAIL, DRIVER_LO(%rbx)
    movl $USED, DEVICE_LO(%rbx)
    movl $1, QUEUE_READY(%rbx)
.endm

/* PICs masked, vector VECTOR -> handler, IOAPIC pin IRQ -> VECTOR (edge, active high,
 * fixed, to APIC 0), LAPIC software-enabled. Interrupts stay off (IF=0) until WAIT_USED. */
.macro ENABLE_INTERRUPTS
    mov $0xff, %al
    outb %al, $0x21
    outb %al, $0xa1
    mov $IDT + VECTOR * 16, %edi
    mov $handler, %eax
    mov %ax, (%rdi)
    movl $0x8e000010, 2(%rdi)           /* selector 0x10, present interrupt gate */
    shr $16, %eax
    mov %ax, 6(%rdi)
    lidt idtr
    mov $IOAPIC, %esi
    movl $0x10 + 2 * IRQ, (%rsi)
    movl $VECTOR, 0x10(%rsi)
    movl $0x11 + 2 * IRQ, (%rsi)
    movl $0, 0x10(%rsi)
    mov $LAPIC, %esi
    movl $0x1ff, 0xf0(%rsi)
.endm

/* Sleep until the used ring's index reaches \idx; each wake-up is an interrupt. */
.macro WAIT_USED idx
1:  sti
    hlt                                 /* sti; hlt: no interrupt slips in between */
    cli
    cmpw $\idx, USED+2
    jne 1b
.endm

/* The interrupt handler (reads and acks InterruptStatus, counts) and the IDT pointer. */
.macro HANDLER
handler:
    push %rax
    push %rsi
    mov INT_STATUS(%rbx), %eax
    mov %eax, SEEN
    mov %eax, INT_ACK(%rbx)
    incl COUNT
    mov $LAPIC, %esi
    movl $0, 0xb0(%rsi)                 /* EOI */
    pop %rsi
    pop %rax
    iretq
idtr:
    .word VECTOR * 16 + 15
    .quad IDT
.endm
