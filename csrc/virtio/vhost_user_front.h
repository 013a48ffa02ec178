/* vhost-user front end: what its two files share (not visible outside them).
 *
 *   vhost_user_front_wire.c  the connection: sending a request (with fds), waiting for
 *                            and checking its reply, a deadline on both
 *   vhost_user_front.c       the device: negotiation at open, the rings' start (DRIVER_OK)
 *                            and stop (reset), kicks out and calls in
 *
 * The device is a struct vdev like ours, driven by the in-process virtio-mmio transport,
 * whose queues an external vhost-user back end (virtiofsd, our own vhost_user.c) serves
 * in guest memory it maps from the VM's memfd. Wire format and request codes are the back
 * end's (vhost_user.h). The back end is untrusted: every reply is read with a deadline
 * (f->timeout_ms), must answer the request just sent (code, REPLY flag, version) with
 * exactly the payload that request expects and no fds (fds that arrive anyway are
 * closed), and anything it sends unasked (back-end requests are never negotiated) or its
 * hang-up ends the connection: the device is then failed (DEVICE_NEEDS_RESET, the reason in
 * d->broken) for good, the VM goes on.
 *
 * Threads: the negotiation runs on the opener's thread before the device is attached;
 * after that every message is sent from poll (the VM's device I/O thread), which the
 * transport's vCPU-side ops (driver_ok, reset) only ask for through the work eventfd: a
 * vCPU thread never waits for the back end, and needs no socket calls in its seccomp
 * filter. Connection state (sock, started, running) belongs to the messaging thread; want
 * and gen, what the driver asked for last, are under d->lock. */
#ifndef VIRTIO_VHOST_USER_FRONT_H
#define VIRTIO_VHOST_USER_FRONT_H
#include <stdbool.h>
#include <stdint.h>

#include "device.h"
#include "vhost_user.h"

/* A reply (and sending a request) waits at most this long by default: a back end that
 * does not answer holds the VM's device I/O thread for one such wait, then is cut off. */
#define VUF_REPLY_TIMEOUT_MS 3000
#define VUF_REPLY_TIMEOUT_MAX_MS 60000

struct vuf {
    struct vdev d; /* first: the transport knows only this */
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int sock;      /* the connection, -1 once it is gone */
    int epfd;      /* d.poll_fd: work, sock, call fds */
    int work;      /* eventfd: driver_ok/reset ask poll to sync the back end */
    int kick[VDEV_MAX_QUEUES], call[VDEV_MAX_QUEUES];
    int timeout_ms;
    uint64_t backend_features; /* what GET_FEATURES answered */
    bool proto;                /* VHOST_USER_F_PROTOCOL_FEATURES offered: acked with the rest */
    uint64_t protocol;         /* protocol features in use (REPLY_ACK or none) */
    /* Under d.lock: what the driver asked for last. */
    bool want;                 /* DRIVER_OK set, no reset since */
    uint32_t gen;              /* bumped by every driver_ok and reset */
    /* The messaging thread's. */
    bool running;              /* rings started for running_gen */
    uint32_t running_gen;
    uint32_t started;          /* rings the back end runs (bit per ring) */
    bool mem_sent;
    char dead[200];            /* why the connection ended, "" while it works */
};

/* vhost_user_front_wire.c. Each returns 0 or, on any failure, closes the connection
 * (vuf_die) and returns -1. */
/* Records the first reason, closes the socket; returns -1. */
int vuf_die(struct vuf *f, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* A request with its payload and fds; need_reply sets VU_FLAG_NEED_REPLY. */
int vuf_send(struct vuf *f, uint32_t req, bool need_reply, const void *payload, uint32_t len,
             const int *fds, int nfds);
/* Waits for the reply to req: exactly len payload bytes into out. */
int vuf_reply(struct vuf *f, uint32_t req, void *out, uint32_t len);
/* A request whose reply is a u64 (GET_FEATURES, GET_PROTOCOL_FEATURES). */
int vuf_get_u64(struct vuf *f, uint32_t req, uint64_t *v);
/* A request without a reply of its own: with REPLY_ACK in use, waits for the ack and
 * fails on a non-zero one (the back end refused it). */
int vuf_set(struct vuf *f, uint32_t req, const void *payload, uint32_t len, const int *fds, int nfds);
/* The socket is readable outside a request: the back end hung up or sent a message it
 * may not send. Always ends the connection. */
void vuf_unasked(struct vuf *f);

#endif
