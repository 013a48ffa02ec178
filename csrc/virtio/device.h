/* The device side of virtio, as every device implements it and every transport drives it.
 *
 * A device is a struct vdev (embedded first in the device's own struct) plus its ops.
 * It knows guest memory only through d->mem and its queues, and raises interrupts only
 * through d->irq. Both come from the one transport the device is bound to, through
 * vdev_bind() and nothing else: virtio-mmio (in-process, KVM engine), vhost-user (QEMU
 * engine) or the test transport (Python tests). One bind point means one place that
 * refuses a device already serving another transport (two transports driving the same
 * queues would corrupt them). Transports call the ops with d->lock held.
 *
 * A device owns no thread. One with a backend of its own (vsock's Unix sockets, net's
 * socket or tap) keeps its backend fds in an epoll set of its own and exposes that set as
 * d->poll_fd; the transport's event loop (the VM's device I/O loop for virtio-mmio, the
 * server's loop for vhost-user, a small loop for the test transport) waits on it beside
 * the queue notifies and calls ops->poll, which takes d->lock, so a transport replacing
 * guest memory or a queue never races a device using it. Nesting the device's set in the
 * loop keeps the device's per-fd bookkeeping (vsock's connection generations) its own. */
#ifndef VIRTIO_DEVICE_H
#define VIRTIO_DEVICE_H
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core_api.h"
#include "guest_mem.h"
#include "queue.h"

#define VDEV_MAX_QUEUES 4
#define VDEV_CONFIG_MAX 256

/* Work one notify (or poll) may do before it yields the event loop: a guest that keeps a
 * queue full must not keep the loop from every other device's queues and backend fds.
 * A device stops after VDEV_BUDGET_CHAINS chains or VDEV_BUDGET_BYTES bytes of data moved
 * (whichever comes first; at least one chain), between two chains (never holding one);
 * vdev_budget_spent() records the queue, and the transport, taking it with
 * vdev_take_more() after the call, re-arms that queue (writes its kick eventfd) so the
 * rest is served after whatever else the loop has ready. */
#define VDEV_BUDGET_CHAINS 64u
#define VDEV_BUDGET_BYTES (4u << 20)

/* Log lines per device: the first VDEV_LOG_BURST pass, then at most one per
 * VDEV_LOG_INTERVAL_S seconds, which also says how many were suppressed before it. A
 * guest that breaks and resets a device in a loop must not flood the host's log. */
#define VDEV_LOG_BURST 8u
#define VDEV_LOG_INTERVAL_S 10u

#define VIRTIO_ID_NET 1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_ID_VSOCK 19

struct vdev;

/* A transport's interrupt callback: raise the guest interrupt for queue qi. */
typedef void (*vdev_irq_fn)(void *opaque, int qi);

struct vdev_ops {
    /* Queue qi may have new buffers. */
    void (*notify)(struct vdev *d, int qi);
    /* The driver reset the device: drop every connection and in-flight state. Queues are
     * torn down by the transport before this is called. */
    void (*reset)(struct vdev *d);
    /* Optional: the driver set DRIVER_OK; the queues it made ready are set up in d->vq.
     * Called with d->lock held on the thread of the status write (a vCPU's): must not
     * block (a device that has slow work to do hands it to its poll). */
    void (*driver_ok)(struct vdev *d);
    /* Optional: the driver wrote config space (already stored in d->config). */
    void (*config_write)(struct vdev *d, uint32_t off, uint32_t len);
    /* Optional: the device's backend (host sockets, tap) has work; d->poll_fd was readable.
     * Runs on the event loop of the transport the device is bound to, takes d->lock itself
     * and never blocks. */
    void (*poll)(struct vdev *d);
    /* Free everything the device owns (not the struct vdev itself). */
    void (*destroy)(struct vdev *d);
};

struct vdev {
    const char *name;
    uint32_t device_id;
    const struct vdev_ops *ops;
    uint64_t features;  /* offered */
    uint64_t acked;     /* accepted by the driver */
    uint8_t config[VDEV_CONFIG_MAX];
    uint32_t config_len;
    int nqueues;
    uint16_t queue_max;
    struct vq vq[VDEV_MAX_QUEUES];
    pthread_mutex_t lock;
    /* Set by vdev_bind(), cleared by vdev_unbind(); read under d->lock. */
    const struct guest_mem *mem;
    vdev_irq_fn irq;         /* called with d->lock held */
    void *irq_opaque;
    const char *transport;   /* who the device is bound to ("a VM (virtio-mmio)", ...), or NULL */
    void (*release)(void *opaque); /* the transport's clean-up when the binding ends, or NULL */
    int poll_fd;              /* -1, or the device's backend epoll set (see above) */
    /* Per queue: -1, or an eventfd of the device's own that a transport with a notify
     * eventfd (virtio-mmio's ioeventfd) uses as that queue's: the guest's notifies then
     * reach whoever reads it (a vhost-user front end's back end) without a hop through
     * the event loop, and the device's notify op is not called for that queue. */
    int kick_fd[VDEV_MAX_QUEUES];
    struct vmm_vdev_counters c;
    char broken[200]; /* first reason a queue (or the device) broke, for the user */
    bool failed;      /* the device as a whole cannot go on (vdev_fail); under d->lock */
    uint32_t more;    /* queues whose notify ran out of budget (bit per queue; atomic) */
    /* The log rate limit (under log_lock: lines come from vCPU and loop threads). */
    pthread_mutex_t log_lock;
    uint32_t log_lines;       /* lines printed */
    uint64_t log_last_ns;     /* CLOCK_MONOTONIC of the last line after the burst */
    uint64_t log_suppressed;  /* lines dropped since the last one printed */
};

void vdev_init(struct vdev *d, const char *name, uint32_t device_id, const struct vdev_ops *ops,
               uint64_t features, int nqueues, uint16_t queue_max);
/* Interrupts the guest for queue qi if the driver wants one for what was pushed. */
void vdev_signal(struct vdev *d, int qi);
/* Records (and logs once) why queue qi broke. */
void vdev_note_broken(struct vdev *d, int qi);
/* For a device whose backend failed (not one queue): records the reason (the first one,
 * logged once) and sets d->failed, which the transport turns into DEVICE_NEEDS_RESET
 * after the op that called this returns. d->lock held. */
void vdev_fail(struct vdev *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prints one line to stderr, "vmm: virtio-<name>: <message>", within the device's log
 * rate limit (see VDEV_LOG_BURST). */
void vdev_log(struct vdev *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* For a device's notify/poll: true once chains and bytes (counted by the caller) reach the
 * budget; then it marks queue qi as having work left for the transport to re-arm. */
bool vdev_budget_spent(struct vdev *d, int qi, unsigned chains, uint64_t bytes);
/* For a transport, after a notify or poll returned: the queues (bit mask) left unfinished
 * for lack of budget, cleared as they are taken. */
uint32_t vdev_take_more(struct vdev *d);
/* Tears down every queue and calls the device's reset; lock held. */
void vdev_reset(struct vdev *d);

/* Binds d to a transport: resets it, then hands it guest memory and the interrupt
 * callback. transport names the binding for error messages ("a vhost-user server");
 * release (may be NULL) is called with opaque once the binding ends, by vdev_unbind() or
 * vdev_free(). Refuses (-1, err names both) a device that is already bound. Takes d->lock. */
int vdev_bind(struct vdev *d, const struct guest_mem *mem, vdev_irq_fn irq, void *opaque,
              const char *transport, void (*release)(void *opaque), char *err, size_t errlen);
/* Ends the binding (if any): resets the device, which then has no memory and raises no
 * interrupt, and calls the transport's release. Takes d->lock. */
void vdev_unbind(struct vdev *d);
/* True if d is bound to the transport whose interrupt callback is irq. */
bool vdev_bound_to(struct vdev *d, vdev_irq_fn irq);
/* Ends any binding (without a reset: the device is going), frees what the device owns and
 * d itself (NULL is ok). */
void vdev_free(struct vdev *d);

#define counter_add(field, n) __atomic_fetch_add(&(field), (n), __ATOMIC_RELAXED)

#endif
