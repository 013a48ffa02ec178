/* The virtio-mmio transport, version 2. See mmio.h.
 *
 * Threads: register accesses arrive on vCPU threads (MMIO exits); queue notifies and the
 * device's backend events (d->poll_fd) on the VM's device I/O thread (ioeventfd, or our
 * own eventfd written by the QueueNotify exit when KVM has no ioeventfd for us);
 * interrupts from whichever thread completed work (the I/O thread, or a vCPU). All
 * transport state except InterruptStatus lives under d->lock, like the device's; InterruptStatus is set
 * by the interrupt path (d->lock held) and cleared by InterruptACK, both atomically.
 *
 * Interrupts are edges: the IRQs we hand out are ISA IRQs, which the MP table declares
 * "conforming to the bus", i.e. edge-triggered, active high, and Linux programs the
 * IOAPIC (or the PIC with noapic) so. Linux's handler reads InterruptStatus, acks it and
 * then walks every used ring; we set the status bit before the edge, so an edge that
 * lands while the handler runs re-runs it and no completion is missed. An edge needs no
 * resample fd: KVM_IRQFD without KVM_IRQFD_FLAG_RESAMPLE pulses the line (1 then 0),
 * exactly what KVM_IRQ_LINE 1, 0 does in the fallback. A resample fd would only be needed
 * for a level-triggered pin, which these are not. */
#define _GNU_SOURCE
#include "mmio.h"

#include <errno.h>
#include <linux/kvm.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "device.h"
#include "ioloop.h"
#include "util.h"
#include "vm.h"

/* Register offsets (virtio 1.x, 4.2.2). */
enum {
    R_MAGIC = 0x000, R_VERSION = 0x004, R_DEVICE_ID = 0x008, R_VENDOR_ID = 0x00c,
    R_DEVICE_FEATURES = 0x010, R_DEVICE_FEATURES_SEL = 0x014,
    R_DRIVER_FEATURES = 0x020, R_DRIVER_FEATURES_SEL = 0x024,
    R_QUEUE_SEL = 0x030, R_QUEUE_NUM_MAX = 0x034, R_QUEUE_NUM = 0x038,
    R_QUEUE_READY = 0x044, R_QUEUE_NOTIFY = 0x050,
    R_INTERRUPT_STATUS = 0x060, R_INTERRUPT_ACK = 0x064, R_STATUS = 0x070,
    R_QUEUE_DESC_LOW = 0x080, R_QUEUE_DESC_HIGH = 0x084,
    R_QUEUE_DRIVER_LOW = 0x090, R_QUEUE_DRIVER_HIGH = 0x094,
    R_QUEUE_DEVICE_LOW = 0x0a0, R_QUEUE_DEVICE_HIGH = 0x0a4,
    R_SHM_LEN_LOW = 0x0b0, R_SHM_LEN_HIGH = 0x0b4,
    R_CONFIG_GENERATION = 0x0fc, R_CONFIG = 0x100,
};

#define MMIO_MAGIC 0x74726976u  /* "virt" */
#define MMIO_VERSION 2
#define MMIO_VENDOR 0x00564d4du /* "MMV\0": ours; drivers do not look at it */

#define S_ACKNOWLEDGE 1u
#define S_DRIVER 2u
#define S_DRIVER_OK 4u
#define S_FEATURES_OK 8u
#define S_NEEDS_RESET 0x40u
#define S_FAILED 0x80u

#define INT_VRING 1u
#define INT_CONFIG 2u

struct mmio_queue {
    uint32_t num;
    uint64_t desc, driver, device;
};

struct virtio_mmio {
    struct vmm_vm *vm;
    struct vdev *d;
    uint64_t base;
    int irq;
    /* Under d->lock. */
    uint32_t status;
    uint32_t dev_features_sel, drv_features_sel, queue_sel;
    uint64_t drv_features;
    struct mmio_queue q[VDEV_MAX_QUEUES];
    /* Atomic. */
    uint32_t isr;
    uint64_t notify_exits, notify_events, irqs, bad_accesses;
    /* Fixed after attach. */
    int kick[VDEV_MAX_QUEUES]; /* eventfds the I/O thread waits on, one per queue ... */
    bool device_kick[VDEV_MAX_QUEUES]; /* ... except the device's own (d->kick_fd): not ours
                                          to wait on or close */
    bool ioeventfd;            /* kick[] are registered with KVM on QueueNotify */
    int irqfd;                 /* eventfd registered with KVM_IRQFD, or -1 */
};

/* ---- interrupts ---- */

static void raise_edge(struct virtio_mmio *t, uint32_t why)
{
    __atomic_fetch_or(&t->isr, why, __ATOMIC_SEQ_CST);
    __atomic_fetch_add(&t->irqs, 1, __ATOMIC_RELAXED);
    if (t->irqfd >= 0 && eventfd_write(t->irqfd, 1) == 0)
        return;
    vm_irq_line(t->vm, t->irq, 1);
    vm_irq_line(t->vm, t->irq, 0);
}

/* The device's interrupt callback (d->lock held). */
static void mmio_irq(void *opaque, int qi)
{
    raise_edge(opaque, INT_VRING);
}

/* The device cannot go on until the driver resets it: say so in Status, keep the reason
 * for the user (d->broken) and tell the driver through a configuration-change interrupt,
 * as the spec asks. d->lock held. */
static void needs_reset(struct virtio_mmio *t, const char *fmt, ...)
{
    struct vdev *d = t->d;
    if (!d->broken[0]) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(d->broken, sizeof(d->broken), fmt, ap);
        va_end(ap);
        /* Rate-limited per device: a driver that breaks and resets the device in a loop
         * must not flood the host's log. */
        vdev_log(d, "at 0x%llx: %s; the device needs a reset", (unsigned long long)t->base, d->broken);
    }
    if (t->status & S_NEEDS_RESET)
        return;
    t->status |= S_NEEDS_RESET;
    if (t->status & S_DRIVER_OK)
        raise_edge(t, INT_CONFIG);
}

/* After a device op: a device that failed as a whole (vdev_fail) needs a reset. The
 * reason is in d->broken and logged already. d->lock held. */
static void check_failed(struct virtio_mmio *t)
{
    if (t->d->failed)
        needs_reset(t, "%s", t->d->broken);
}

/* ---- status and reset ---- */

static void transport_reset(struct virtio_mmio *t)
{
    vdev_reset(t->d); /* tears the queues down, forgets features and the broken reason */
    t->status = 0;
    t->dev_features_sel = t->drv_features_sel = t->queue_sel = 0;
    t->drv_features = 0;
    memset(t->q, 0, sizeof(t->q));
    __atomic_store_n(&t->isr, 0, __ATOMIC_SEQ_CST);
}

/* FEATURES_OK sticks only for a subset of what we offer that includes VERSION_1 (this
 * transport has no legacy interface); the driver reads Status back to find out. */
static bool features_acceptable(struct virtio_mmio *t)
{
    uint64_t f = t->drv_features;
    return !(f & ~t->d->features) && (f & (1ull << VIRTIO_F_VERSION_1));
}

static void write_status(struct virtio_mmio *t, uint32_t v)
{
    if (v == 0) {
        transport_reset(t);
        return;
    }
    uint32_t added = v & ~t->status;
    if (added & S_FEATURES_OK) {
        if (features_acceptable(t))
            t->d->acked = t->drv_features;
        else
            v &= ~S_FEATURES_OK;
    }
    /* The driver only sets bits (clearing them is a reset); NEEDS_RESET is ours to set. */
    t->status |= v & ~S_NEEDS_RESET;
    if ((added & S_DRIVER_OK) && (t->status & S_DRIVER_OK)) {
        if (t->d->ops->driver_ok)
            t->d->ops->driver_ok(t->d);
        check_failed(t);
        /* Buffers queued before DRIVER_OK (vsock fills its rx ring first) get served. */
        for (int i = 0; i < t->d->nqueues; i++)
            if (t->d->vq[i].ready)
                eventfd_write(t->kick[i], 1);
    }
}

/* ---- queues ---- */

static struct mmio_queue *selected(struct virtio_mmio *t)
{
    return t->queue_sel < (uint32_t)t->d->nqueues ? &t->q[t->queue_sel] : NULL;
}

static void queue_enable(struct virtio_mmio *t)
{
    struct vdev *d = t->d;
    int qi = (int)t->queue_sel;
    struct mmio_queue *q = &t->q[qi];
    if (!(t->status & S_FEATURES_OK)) {
        needs_reset(t, "queue %d enabled before the driver set FEATURES_OK", qi);
        return;
    }
    if (q->num == 0 || q->num > d->queue_max || (q->num & (q->num - 1))) {
        needs_reset(t, "queue %d size %u is not a power of 2 in 1..%u", qi, q->num, d->queue_max);
        return;
    }
    char why[160];
    d->vq[qi].last_avail = 0;
    if (vq_setup(&d->vq[qi], d->mem, (uint16_t)q->num, q->desc, q->driver, q->device, d->acked,
                 why, sizeof(why)) < 0)
        needs_reset(t, "queue %d: %s", qi, why);
}

static void queue_disable(struct virtio_mmio *t)
{
    struct vq *vq = &t->d->vq[t->queue_sel];
    t->d->c.rejected += vq->rejected;
    vq_teardown(vq);
    vq->last_avail = 0;
}

static void set_half(uint64_t *v, bool high, uint32_t x)
{
    *v = high ? (*v & 0xffffffffull) | (uint64_t)x << 32 : (*v & ~0xffffffffull) | x;
}

/* Writes to a queue's set-up registers; ignored while the queue is live (the spec
 * forbids them then, and a live ring must not move under the device). */
static void write_queue_reg(struct virtio_mmio *t, uint64_t off, uint32_t v)
{
    struct mmio_queue *q = selected(t);
    if (!q) {
        __atomic_fetch_add(&t->bad_accesses, 1, __ATOMIC_RELAXED);
        return;
    }
    bool live = t->d->vq[t->queue_sel].ready;
    if (off == R_QUEUE_READY) {
        if (v && !live)
            queue_enable(t);
        else if (!v && live)
            queue_disable(t);
        return;
    }
    if (live) {
        __atomic_fetch_add(&t->bad_accesses, 1, __ATOMIC_RELAXED);
        return;
    }
    switch (off) {
    case R_QUEUE_NUM: q->num = v; break;
    case R_QUEUE_DESC_LOW: case R_QUEUE_DESC_HIGH: set_half(&q->desc, off & 4, v); break;
    case R_QUEUE_DRIVER_LOW: case R_QUEUE_DRIVER_HIGH: set_half(&q->driver, off & 4, v); break;
    case R_QUEUE_DEVICE_LOW: case R_QUEUE_DEVICE_HIGH: set_half(&q->device, off & 4, v); break;
    }
}

/* Queues the device left unfinished for lack of budget (vdev_budget_spent) get a kick of
 * their own: the loop serves every other ready fd (other devices' queues, backends)
 * before it comes back to them. I/O thread, d->lock not held. */
static void rearm(struct virtio_mmio *t)
{
    uint32_t more = vdev_take_more(t->d);
    for (int qi = 0; qi < t->d->nqueues; qi++)
        if ((more & (1u << qi)) && t->kick[qi] >= 0)
            eventfd_write(t->kick[qi], 1);
}

/* The device's backend fd (d->poll_fd) is ready, on the I/O thread. */
static void backend_ready(void *opaque, int fd)
{
    struct virtio_mmio *t = opaque;
    t->d->ops->poll(t->d);
    pthread_mutex_lock(&t->d->lock);
    check_failed(t);
    pthread_mutex_unlock(&t->d->lock);
    rearm(t);
}

/* A queue notify, on the I/O thread: our eventfd was written by KVM (ioeventfd), by
 * the QueueNotify exit handler, or by rearm(). */
static void kick_ready(void *opaque, int fd)
{
    struct virtio_mmio *t = opaque;
    eventfd_t n;
    if (eventfd_read(fd, &n) < 0)
        return;
    int qi = 0;
    while (qi < VDEV_MAX_QUEUES && t->kick[qi] != fd)
        qi++;
    struct vdev *d = t->d;
    __atomic_fetch_add(&t->notify_events, 1, __ATOMIC_RELAXED);
    pthread_mutex_lock(&d->lock);
    if (qi < d->nqueues && d->vq[qi].ready && !(t->status & S_NEEDS_RESET)) {
        d->ops->notify(d, qi);
        if (d->vq[qi].broken)
            needs_reset(t, "queue %d: %s", qi, d->vq[qi].reason);
        check_failed(t);
    }
    pthread_mutex_unlock(&d->lock);
    rearm(t);
}

/* ---- the register file ---- */

static uint32_t read_reg(struct virtio_mmio *t, uint64_t off)
{
    struct vdev *d = t->d;
    struct mmio_queue *q = selected(t);
    switch (off) {
    case R_MAGIC: return MMIO_MAGIC;
    case R_VERSION: return MMIO_VERSION;
    case R_DEVICE_ID: return d->device_id;
    case R_VENDOR_ID: return MMIO_VENDOR;
    case R_DEVICE_FEATURES:
        return t->dev_features_sel < 2 ? (uint32_t)(d->features >> (32 * t->dev_features_sel)) : 0;
    case R_QUEUE_NUM_MAX: return q ? d->queue_max : 0;
    case R_QUEUE_READY: return q ? d->vq[t->queue_sel].ready : 0;
    case R_STATUS: return t->status;
    case R_SHM_LEN_LOW: case R_SHM_LEN_HIGH: return 0xffffffffu; /* no shared memory regions */
    case R_CONFIG_GENERATION: return 0; /* our config space never changes under the driver */
    default: return 0;
    }
}

static void write_reg(struct virtio_mmio *t, uint64_t off, uint32_t v)
{
    switch (off) {
    case R_DEVICE_FEATURES_SEL: t->dev_features_sel = v; break;
    case R_DRIVER_FEATURES:
        if (t->status & S_FEATURES_OK)
            break; /* negotiation is over */
        if (t->drv_features_sel < 2)
            set_half(&t->drv_features, t->drv_features_sel, v);
        break;
    case R_DRIVER_FEATURES_SEL: t->drv_features_sel = v; break;
    case R_QUEUE_SEL: t->queue_sel = v; break;
    case R_STATUS: write_status(t, v); break;
    case R_QUEUE_NUM: case R_QUEUE_READY:
    case R_QUEUE_DESC_LOW: case R_QUEUE_DESC_HIGH:
    case R_QUEUE_DRIVER_LOW: case R_QUEUE_DRIVER_HIGH:
    case R_QUEUE_DEVICE_LOW: case R_QUEUE_DEVICE_HIGH:
        write_queue_reg(t, off, v);
        break;
    default:
        __atomic_fetch_add(&t->bad_accesses, 1, __ATOMIC_RELAXED); /* read-only or unknown */
    }
}

static void config_access(struct virtio_mmio *t, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
    struct vdev *d = t->d;
    bool inside = off < d->config_len && len <= d->config_len - off;
    if (!is_write) {
        if (inside)
            memcpy(data, d->config + off, len);
        else
            memset(data, 0, len);
        return;
    }
    if (!inside || !d->ops->config_write) {
        __atomic_fetch_add(&t->bad_accesses, 1, __ATOMIC_RELAXED);
        return;
    }
    memcpy(d->config + off, data, len);
    d->ops->config_write(d, (uint32_t)off, len);
}

/* The MMIO bus handler (vCPU threads). */
static void mmio_access(void *opaque, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
    struct virtio_mmio *t = opaque;
    /* The interrupt handler's registers without the lock: the I/O thread may hold it for
     * the length of a disk request, and the guest's handler must not wait for that. */
    if (off == R_INTERRUPT_STATUS && len == 4 && !is_write) {
        put32(data, __atomic_load_n(&t->isr, __ATOMIC_SEQ_CST));
        return;
    }
    if (off == R_INTERRUPT_ACK && len == 4 && is_write) {
        __atomic_fetch_and(&t->isr, ~le32(data), __ATOMIC_SEQ_CST);
        return;
    }
    /* QueueNotify without the lock too: it only wakes the I/O thread (when KVM could not
     * take the write as an ioeventfd: a queue index it does not match, or no ioeventfd). */
    if (is_write && off == R_QUEUE_NOTIFY && len == 4) {
        uint32_t qi = le32(data);
        __atomic_fetch_add(&t->notify_exits, 1, __ATOMIC_RELAXED);
        if (qi < VDEV_MAX_QUEUES && t->kick[qi] >= 0)
            eventfd_write(t->kick[qi], 1);
        else
            __atomic_fetch_add(&t->bad_accesses, 1, __ATOMIC_RELAXED);
        return;
    }
    pthread_mutex_lock(&t->d->lock);
    if (off >= R_CONFIG) {
        config_access(t, off - R_CONFIG, data, len, is_write);
    } else if (len != 4 || (off & 3)) {
        /* The register file takes aligned 32-bit accesses only (4.2.2.2). */
        __atomic_fetch_add(&t->bad_accesses, 1, __ATOMIC_RELAXED);
        if (!is_write)
            memset(data, 0xff, len);
    } else if (is_write) {
        write_reg(t, off, le32(data));
    } else {
        put32(data, read_reg(t, off));
    }
    pthread_mutex_unlock(&t->d->lock);
}

/* ---- attach and detach ---- */

static int ioeventfd(struct virtio_mmio *t, int qi, bool assign)
{
    struct kvm_ioeventfd io = {
        .datamatch = (uint64_t)qi,
        .addr = t->base + R_QUEUE_NOTIFY,
        .len = 4,
        .fd = t->kick[qi],
        .flags = KVM_IOEVENTFD_FLAG_DATAMATCH | (assign ? 0 : KVM_IOEVENTFD_FLAG_DEASSIGN),
    };
    return ioctl(t->vm->vm_fd, KVM_IOEVENTFD, &io);
}

static int irqfd(struct virtio_mmio *t, bool assign)
{
    struct kvm_irqfd f = { .fd = (uint32_t)t->irqfd, .gsi = (uint32_t)t->irq,
                           .flags = assign ? 0 : KVM_IRQFD_FLAG_DEASSIGN };
    return ioctl(t->vm->vm_fd, KVM_IRQFD, &f);
}

/* Notify path: an eventfd per queue, handed to KVM as an ioeventfd when we may; and the
 * device's backend fds, so one loop serves everything the device waits for. */
static int wire_notify(struct virtio_mmio *t, struct ioloop *io, bool use_ioeventfd, char *err, size_t errlen)
{
    if (t->d->poll_fd >= 0 && ioloop_add(io, t->d->poll_fd, backend_ready, t, err, errlen) < 0)
        return -1;
    for (int i = 0; i < t->d->nqueues; i++) {
        if (t->d->kick_fd[i] >= 0) {
            t->kick[i] = t->d->kick_fd[i];
            t->device_kick[i] = true;
            continue;
        }
        t->kick[i] = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (t->kick[i] < 0)
            return errf(err, errlen, "eventfd: %s", strerror(errno));
        if (ioloop_add(io, t->kick[i], kick_ready, t, err, errlen) < 0)
            return -1;
    }
    if (!use_ioeventfd)
        return 0;
    int i;
    for (i = 0; i < t->d->nqueues; i++)
        if (ioeventfd(t, i, true) < 0)
            break;
    if (i == t->d->nqueues) {
        t->ioeventfd = true;
        return 0;
    }
    fprintf(stderr, "vmm: virtio-%s: KVM_IOEVENTFD failed (%s); queue notifies will exit to the VMM\n",
            t->d->name, strerror(errno));
    while (i-- > 0)
        ioeventfd(t, i, false);
    return 0;
}

static void wire_irq(struct virtio_mmio *t, bool use_irqfd)
{
    if (!use_irqfd)
        return;
    t->irqfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (t->irqfd >= 0 && irqfd(t, true) == 0)
        return;
    fprintf(stderr, "vmm: virtio-%s: KVM_IRQFD failed (%s); interrupts go through KVM_IRQ_LINE\n",
            t->d->name, strerror(errno));
    if (t->irqfd >= 0)
        close(t->irqfd);
    t->irqfd = -1;
}

static void release_fds(struct virtio_mmio *t)
{
    for (int i = 0; i < VDEV_MAX_QUEUES; i++) {
        if (t->kick[i] < 0)
            continue;
        if (t->ioeventfd)
            ioeventfd(t, i, false);
        if (!t->device_kick[i])
            close(t->kick[i]);
        t->kick[i] = -1;
        t->device_kick[i] = false;
    }
    t->ioeventfd = false;
    if (t->irqfd >= 0) {
        irqfd(t, false);
        close(t->irqfd);
        t->irqfd = -1;
    }
}

struct virtio_mmio *virtio_mmio_attach(struct vmm_vm *vm, struct ioloop *io, struct vdev *d,
                                       uint64_t base, int irq, int flags, char *err, size_t errlen)
{
    struct virtio_mmio *t = calloc(1, sizeof(*t));
    if (!t) {
        errf(err, errlen, "out of memory");
        return NULL;
    }
    t->vm = vm, t->d = d, t->base = base, t->irq = irq, t->irqfd = -1;
    for (int i = 0; i < VDEV_MAX_QUEUES; i++)
        t->kick[i] = -1;
    /* Bind first: a device serving another transport must not get this window's fds. */
    if (vdev_bind(d, &vm->mem, mmio_irq, t, "a VM (virtio-mmio)", NULL, err, errlen) < 0) {
        free(t);
        return NULL;
    }
    if (wire_notify(t, io, !(flags & VMM_VDEV_NO_IOEVENTFD), err, errlen) < 0 ||
        bus_register(&vm->mmio, d->name, base, VIRTIO_MMIO_WINDOW, mmio_access, t, err, errlen) < 0) {
        for (int i = 0; i < VDEV_MAX_QUEUES; i++)
            if (t->kick[i] >= 0 && !t->device_kick[i])
                ioloop_del(io, t->kick[i]);
        if (d->poll_fd >= 0)
            ioloop_del(io, d->poll_fd);
        vdev_unbind(d);
        release_fds(t);
        free(t);
        return NULL;
    }
    wire_irq(t, !(flags & VMM_VDEV_NO_IRQFD));
    return t;
}

void virtio_mmio_detach(struct virtio_mmio *t)
{
    if (!t)
        return;
    vdev_unbind(t->d);
    release_fds(t);
    free(t);
}

void virtio_mmio_info(struct virtio_mmio *t, struct vmm_virtio_mmio_info *out)
{
    memset(out, 0, sizeof(*out));
    out->base = t->base;
    out->size = VIRTIO_MMIO_WINDOW;
    out->irq = t->irq;
    out->ioeventfd = t->ioeventfd;
    out->irqfd = t->irqfd >= 0;
    pthread_mutex_lock(&t->d->lock);
    out->status = t->status;
    pthread_mutex_unlock(&t->d->lock);
    out->interrupt_status = __atomic_load_n(&t->isr, __ATOMIC_SEQ_CST);
    out->notify_exits = __atomic_load_n(&t->notify_exits, __ATOMIC_RELAXED);
    out->notify_events = __atomic_load_n(&t->notify_events, __ATOMIC_RELAXED);
    out->interrupts = __atomic_load_n(&t->irqs, __ATOMIC_RELAXED);
    out->bad_accesses = __atomic_load_n(&t->bad_accesses, __ATOMIC_RELAXED);
}
