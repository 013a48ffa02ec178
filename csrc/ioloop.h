/* The event loop: one epoll thread that runs device work off the vCPU threads and never
 * touches Python. There is one per VM (the KVM engine's device I/O thread: queue notifies
 * on ioeventfds and every device's backend fds) and one per back-end process for the
 * vhost-user servers (each server's control connection, kicks and its device's backend);
 * no device owns a thread of its own.
 *
 * A handler runs on the loop's thread when its fd is readable and must drain the fd
 * itself (level-triggered). It must not serve a guest-fed source until it runs dry: it
 * does a bounded amount and leaves the fd readable (a queue's kick eventfd written
 * again, see VDEV_BUDGET_* in virtio/device.h); epoll returns ready fds in the order
 * they became ready, so every other ready handler runs before it comes round again.
 * Handlers may be added and removed at any time, from any
 * thread: ioloop_del() returns only once the loop can no longer call the handler, so the
 * caller may free what opaque points to right after (it must not hold a lock that a
 * handler takes: it waits for the handlers of the round in progress). */
#ifndef VMM_IOLOOP_H
#define VMM_IOLOOP_H
#include <stddef.h>

struct ioloop;
typedef void (*ioloop_fn)(void *opaque, int fd);

struct ioloop *ioloop_new(char *err, size_t errlen);
int ioloop_add(struct ioloop *l, int fd, ioloop_fn fn, void *opaque, char *err, size_t errlen);
/* Forgets fd. From another thread while the loop runs, waits for the loop's current round
 * of handlers to finish; from a handler on the loop's own thread, the handler is simply
 * not called again. */
void ioloop_del(struct ioloop *l, int fd);
/* Starts the thread (with every signal blocked: signals stay with Python and the vCPUs),
 * unless there is nothing to wait for yet (no handler): then no thread is made. */
int ioloop_start(struct ioloop *l, char *err, size_t errlen);
/* Stops and joins the thread if it runs, closes the loop's own fds, frees l (NULL is ok).
 * The handlers' fds belong to whoever added them. */
void ioloop_free(struct ioloop *l);

#endif
