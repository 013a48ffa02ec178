/* An 8250/16550A UART, enough for Linux's 8250 driver and earlyprintk=ttyS0.
 *
 * Transmission is instant: a byte written to THR goes straight to the console fd, so the
 * transmitter is always empty (LSR THRE|TEMT). Received bytes come from the host
 * (vmm_vm_serial_input) through an RX FIFO. The interrupt line follows IIR: raised while
 * an enabled interrupt is pending, lowered when none is (edge-triggered ISA IRQs see a
 * rising edge for each new reason). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"
#include "vm.h"

enum { RBR_THR = 0, IER = 1, IIR_FCR = 2, LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };

#define IER_RDI   0x01  /* received data available */
#define IER_THRI  0x02  /* transmitter holding register empty */
#define IIR_NONE  0x01
#define IIR_THRI  0x02
#define IIR_RDI   0x04
#define IIR_FIFO  0xc0  /* "FIFOs enabled": what makes Linux say 16550A */
#define FCR_FIFO  0x01
#define FCR_CLEAR_RX 0x02
#define LCR_DLAB  0x80
#define MCR_DTR   0x01
#define MCR_RTS   0x02
#define MCR_OUT1  0x04
#define MCR_OUT2  0x08
#define MCR_LOOP  0x10
#define LSR_DR    0x01
#define LSR_THRE  0x20
#define LSR_TEMT  0x40
#define MSR_CTS   0x10
#define MSR_DSR   0x20
#define MSR_RI    0x40
#define MSR_DCD   0x80

#define RX_FIFO_SIZE 4096

struct serial {
    struct vmm_vm *vm;
    int irq;
    pthread_mutex_t lock;   /* vCPU threads and the host's input race on the state */
    uint8_t ier, fcr, lcr, mcr, scr, dll, dlm;
    bool thr_empty_pending; /* THRE interrupt not yet acknowledged */
    int irq_level;
    uint8_t rx[RX_FIFO_SIZE];
    size_t rx_head, rx_count;
};

static uint8_t iir(const struct serial *s)
{
    uint8_t fifo = (s->fcr & FCR_FIFO) ? IIR_FIFO : 0;
    if ((s->ier & IER_RDI) && s->rx_count)
        return fifo | IIR_RDI;
    if ((s->ier & IER_THRI) && s->thr_empty_pending)
        return fifo | IIR_THRI;
    return fifo | IIR_NONE;
}

static void update_irq(struct serial *s)
{
    int level = !(iir(s) & IIR_NONE);
    if (level != s->irq_level) {
        s->irq_level = level;
        vm_irq_line(s->vm, s->irq, level);
    }
}

static void rx_push(struct serial *s, uint8_t b)
{
    if (s->rx_count == RX_FIFO_SIZE)
        return; /* overrun: drop, like the hardware */
    s->rx[(s->rx_head + s->rx_count) % RX_FIFO_SIZE] = b;
    s->rx_count++;
}

static uint8_t rx_pop(struct serial *s)
{
    if (!s->rx_count)
        return 0;
    uint8_t b = s->rx[s->rx_head];
    s->rx_head = (s->rx_head + 1) % RX_FIFO_SIZE;
    s->rx_count--;
    return b;
}

/* Outside the lock: the write may block on a full pipe until the host reads, and the host
 * may want to send input (which takes the lock) before it reads. */
static void transmit(struct serial *s, uint8_t b)
{
    struct vmm_vm *vm = s->vm;
    /* console_fd is only closed after every vCPU thread (the only callers) has ended. */
    if (vm->console_fd >= 0)
        write_all(vm->console_fd, &b, 1, &vm->stopping);
}

static uint8_t modem_status(const struct serial *s)
{
    if (!(s->mcr & MCR_LOOP))
        return MSR_DCD | MSR_DSR | MSR_CTS; /* a cable with someone at the other end */
    /* Loopback wires the modem control outputs back to the status inputs. */
    uint8_t m = 0;
    if (s->mcr & MCR_RTS) m |= MSR_CTS;
    if (s->mcr & MCR_DTR) m |= MSR_DSR;
    if (s->mcr & MCR_OUT1) m |= MSR_RI;
    if (s->mcr & MCR_OUT2) m |= MSR_DCD;
    return m;
}

/* Returns true if v is to be transmitted (by the caller, after unlocking). */
static bool reg_write(struct serial *s, uint64_t reg, uint8_t v)
{
    bool dlab = s->lcr & LCR_DLAB;
    switch (reg) {
    case RBR_THR:
        if (dlab) {
            s->dll = v;
            break;
        }
        s->thr_empty_pending = true; /* sent at once: THR is empty again */
        if (s->mcr & MCR_LOOP) {
            rx_push(s, v);
            break;
        }
        return true;
    case IER:
        if (dlab) {
            s->dlm = v;
            break;
        }
        if (!(s->ier & IER_THRI) && (v & IER_THRI))
            s->thr_empty_pending = true; /* enabling THRI with THR empty raises it */
        s->ier = v & 0x0f;
        break;
    case IIR_FCR:
        s->fcr = v;
        if (v & FCR_CLEAR_RX)
            s->rx_count = 0;
        break;
    case LCR: s->lcr = v; break;
    case MCR: s->mcr = v & 0x1f; break;
    case SCR: s->scr = v; break;
    default: break; /* LSR and MSR are read-only */
    }
    return false;
}

static uint8_t reg_read(struct serial *s, uint64_t reg)
{
    bool dlab = s->lcr & LCR_DLAB;
    switch (reg) {
    case RBR_THR:
        return dlab ? s->dll : rx_pop(s);
    case IER:
        return dlab ? s->dlm : s->ier;
    case IIR_FCR: {
        uint8_t v = iir(s);
        if ((v & 0x0f) == IIR_THRI)
            s->thr_empty_pending = false; /* reading IIR acknowledges THRE */
        return v;
    }
    case LCR: return s->lcr;
    case MCR: return s->mcr;
    case LSR: return (s->rx_count ? LSR_DR : 0) | LSR_THRE | LSR_TEMT;
    case MSR: return modem_status(s);
    case SCR: return s->scr;
    }
    return 0xff;
}

static void serial_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct serial *s = opaque;
    bool send = false;
    pthread_mutex_lock(&s->lock);
    /* Byte registers: wider accesses touch only the first (Linux never does them). */
    if (is_write)
        send = reg_write(s, offset, data[0]);
    else {
        memset(data, 0, len);
        data[0] = reg_read(s, offset);
    }
    update_irq(s);
    pthread_mutex_unlock(&s->lock);
    if (send)
        transmit(s, data[0]);
}

struct serial *serial_create(struct vmm_vm *vm, uint16_t base, int irq, char *err, size_t errlen)
{
    struct serial *s = calloc(1, sizeof(*s));
    if (!s) {
        errf(err, errlen, "out of memory");
        return NULL;
    }
    s->vm = vm;
    s->irq = irq;
    s->mcr = MCR_OUT2;
    pthread_mutex_init(&s->lock, NULL);
    if (bus_register(&vm->pio, "serial", base, 8, serial_io, s, err, errlen) < 0) {
        serial_destroy(s);
        return NULL;
    }
    return s;
}

void serial_destroy(struct serial *s)
{
    if (!s)
        return;
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int serial_input(struct serial *s, const uint8_t *data, size_t len)
{
    pthread_mutex_lock(&s->lock);
    size_t n = 0;
    while (n < len && s->rx_count < RX_FIFO_SIZE)
        rx_push(s, data[n++]);
    update_irq(s);
    pthread_mutex_unlock(&s->lock);
    return (int)n;
}
