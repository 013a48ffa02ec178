/* A minimal virtio-vsock driver for the first virtio device: it negotiates VERSION_1,
 * gives the device one 4 KiB receive buffer on queue 0 (rx), reports READY, and sleeps
 * until an interrupt says the buffer came back: the host's `CONNECT <port>` arrives as
 * a connection request, raised by the vsock device's own thread (not the device I/O
 * thread that serves notifies). Reports, as 32-bit writes to REPORT_PORT:
 *   device id, READY (0x7ead7), used len, src_cid, dst_cid, dst_port, type, op,
 *   interrupts taken, last InterruptStatus seen. */
#include "guest.h"
#include "virtio_mmio.h"
#define READY 0x7ead7

    .section .text.entry, "ax"
    .code64
    .globl _start
_start:
    mov $VIRTIO, %ebx
    mov $REPORT_PORT, %dx
    REPORT DEVICE_ID(%rbx)
    NEGOTIATE
    SETUP_QUEUE0
    movq $DATA, DESC
    movl $4096, DESC+8
    movl $0x00000002, DESC+12           /* flags WRITE */
    movw $1, AVAIL+2                    /* ring[0] = descriptor 0 */
    movl $0xf, STATUS(%rbx)             /* DRIVER_OK */
    ENABLE_INTERRUPTS
    movl $0, QUEUE_NOTIFY(%rbx)
    REPORT $READY
    WAIT_USED 1
    REPORT USED+4+4                     /* ring[0].len */
    REPORT DATA                         /* src_cid (low half) */
    REPORT DATA+8                       /* dst_cid (low half) */
    REPORT DATA+20                      /* dst_port */
    movzwl DATA+28, %eax                /* type */
    outl %eax, %dx
    movzwl DATA+30, %eax                /* op */
    outl %eax, %dx
    REPORT COUNT
    REPORT SEEN
    RESET

    HANDLER
