/* A minimal virtio-mmio driver for the first virtio device (a virtio-blk disk): it
 * negotiates VERSION_1, sets up queue 0 with 8 entries, reads sector 0, then writes
 * "VIRTIOWR" + the rest of sector 0 to sector 1, each completion awaited as an interrupt
 * (IOAPIC pin 5 -> vector 0x30, PIC masked) and checked in the used ring. Results go to
 * REPORT_PORT as 32-bit writes, in this order:
 *   magic, version, device id, device features 63..32, status after FEATURES_OK,
 *   QueueNumMax, QueueReady, read: used idx, status byte, data[0..4), data[508..512),
 *   write: used idx, status byte, interrupts taken, last InterruptStatus seen,
 *   InterruptStatus now.
 * With -DHOSTILE it first reports (QueueReady, Status) after each of: a queue size of 3,
 * a queue size of 2048 (above the maximum), rings outside guest RAM, a notify of queue 7;
 * each followed by a reset; then it runs the normal sequence (the device must recover).
 * With -DFUZZ it first writes FUZZ_WRITES pseudo-random values (a fixed LCG, so runs
 * repeat) to pseudo-randomly chosen writable registers (and the first config word).
 * With -DBATCH it then makes BATCH_N reads of sector 0 available at once, with one notify,
 * on a queue of BATCH_N entries whose avail entries all name the same chain: more than
 * the device serves per notify (its work budget), so only its re-arming finishes them.
 * It reports the used idx and the status byte after the last one.
 * Keep it short: CPL0 code is emulated at ~0.6 us per instruction on PVM hosts. */
#include "guest.h"
#include "virtio_mmio.h"
#define HDR 0x200400
#define STATUS_BYTE 0x200410

.macro REPORT_QUEUE_AND_STATUS
    REPORT QUEUE_READY(%rbx)
    REPORT STATUS(%rbx)
.endm

/* One request: header type \type for sector \sector, data flags \dflags, avail idx \idx. */
.macro REQUEST type, sector, dflags, idx
    movl $\type, HDR
    movq $\sector, HDR+8
    movw $\dflags, DESC+16+12
    movw $0, AVAIL+4+2*(\idx-1)
    movw $\idx, AVAIL+2
    movl $0, QUEUE_NOTIFY(%rbx)
    WAIT_USED \idx
    movzwl USED+2, %eax
    outl %eax, %dx
    movzbl STATUS_BYTE, %eax
    outl %eax, %dx
.endm

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    mov $VIRTIO, %ebx
    mov $REPORT_PORT, %dx

#ifdef HOSTILE
    NEGOTIATE
    movl $3, QUEUE_NUM(%rbx)            /* not a power of 2 */
    movl $1, QUEUE_READY(%rbx)
    REPORT_QUEUE_AND_STATUS
    NEGOTIATE
    movl $2048, QUEUE_NUM(%rbx)         /* above QueueNumMax */
    movl $1, QUEUE_READY(%rbx)
    REPORT_QUEUE_AND_STATUS
    NEGOTIATE
    movl $8, QUEUE_NUM(%rbx)
    movl $0xbff00000, DESC_LO(%rbx)     /* rings far outside the guest's 16 MiB */
    movl $0xbff01000, DRIVER_LO(%rbx)
    movl $0xbff02000, DEVICE_LO(%rbx)
    movl $1, QUEUE_READY(%rbx)
    REPORT_QUEUE_AND_STATUS
    movl $7, QUEUE_NOTIFY(%rbx)         /* no such queue */
    REPORT STATUS(%rbx)
#endif

#ifdef FUZZ
#define FUZZ_WRITES 4000
    mov $FUZZ_WRITES, %ecx
    mov $0x2545f491, %eax               /* LCG state */
2:  imul $1103515245, %eax, %eax
    add $12345, %eax
    mov %eax, %esi
    shr $14, %esi
    and $15, %esi
    movzwl fuzz_regs(,%rsi,2), %esi     /* one of the writable registers */
    mov %eax, %edi
    test $0x100, %eax
    jz 3f
    and $0x1f, %edi                     /* half of the values small: indexes, sizes, bits */
3:  mov %edi, (%rbx,%rsi)
    dec %ecx
    jnz 2b
#endif

    REPORT MAGIC(%rbx)
    REPORT VERSION(%rbx)
    REPORT DEVICE_ID(%rbx)
    movl $1, DEV_FEATURES_SEL(%rbx)
    REPORT DEV_FEATURES(%rbx)
    NEGOTIATE
    REPORT STATUS(%rbx)
    REPORT QUEUE_NUM_MAX(%rbx)
    SETUP_QUEUE0
    REPORT QUEUE_READY(%rbx)
    movl $0xf, STATUS(%rbx)             /* DRIVER_OK */
    ENABLE_INTERRUPTS

    /* The chain: header (read), data (DESC+16, flags per request), status byte (write). */
    movq $HDR, DESC
    movl $16, DESC+8
    movl $0x00010001, DESC+12           /* flags NEXT, next 1 */
    movq $DATA, DESC+16
    movl $512, DESC+24
    movl $0x00020003, DESC+28           /* flags WRITE|NEXT, next 2 */
    movq $STATUS_BYTE, DESC+32
    movl $1, DESC+40
    movl $0x00000002, DESC+44           /* flags WRITE */

    REQUEST 0, 0, 3, 1                  /* IN, sector 0 */
    REPORT DATA
    REPORT DATA+508
    movabs $0x52574f4954524956, %rax    /* "VIRTIOWR" */
    mov %rax, DATA
    REQUEST 1, 1, 1, 2                  /* OUT, sector 1: data is device-readable */
    REPORT COUNT
    REPORT SEEN
    REPORT INT_STATUS(%rbx)

#ifdef BATCH
#define BATCH_N 256
#define BDESC 0x210000
#define BAVAIL 0x211000  /* its ring entries stay 0 (fresh RAM): every one names head 0 */
#define BUSED 0x212000
    NEGOTIATE
    movl $BATCH_N, QUEUE_NUM(%rbx)
    movl $BDESC, DESC_LO(%rbx)
    movl $BAVAIL, DRIVER_LO(%rbx)
    movl $BUSED, DEVICE_LO(%rbx)
    movl $1, QUEUE_READY(%rbx)
    movl $0xf, STATUS(%rbx)
    movl $0, HDR                        /* IN, sector 0 */
    movq $0, HDR+8
    movq $HDR, BDESC
    movl $16, BDESC+8
    movl $0x00010001, BDESC+12
    movq $DATA, BDESC+16
    movl $512, BDESC+24
    movl $0x00020003, BDESC+28
    movq $STATUS_BYTE, BDESC+32
    movl $1, BDESC+40
    movl $0x00000002, BDESC+44
    movb $0xff, STATUS_BYTE
    movw $BATCH_N, BAVAIL+2
    movl $0, QUEUE_NOTIFY(%rbx)
1:  sti
    hlt
    cli
    cmpw $BATCH_N, BUSED+2
    jne 1b
    REPORT BUSED+2
    movzbl STATUS_BYTE, %eax
    outl %eax, %dx
#endif
    RESET

    HANDLER

#ifdef FUZZ
fuzz_regs:
    .word DEV_FEATURES_SEL, DRV_FEATURES, DRV_FEATURES_SEL, QUEUE_SEL, QUEUE_NUM, QUEUE_READY
    .word QUEUE_NOTIFY, INT_ACK, STATUS, DESC_LO, DESC_LO + 4, DRIVER_LO, DRIVER_LO + 4
    .word DEVICE_LO, DEVICE_LO + 4, 0x100
#endif
