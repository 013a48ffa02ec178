/* The device I/O thread: one epoll loop per VM that runs device work (queue notifies
 * arriving on ioeventfds) off the vCPU threads and never touches Python.
 *
 * Handlers are added before the loop starts (the VM's devices are fixed by then); each
 * runs on the loop's thread when its fd is readable and must drain the fd itself. */
#ifndef VMM_IOLOOP_H
#define VMM_IOLOOP_H
#include <stddef.h>

struct ioloop;
typedef void (*ioloop_fn)(void *opaque, int fd);

struct ioloop *ioloop_new(char *err, size_t errlen);
int ioloop_add(struct ioloop *l, int fd, ioloop_fn fn, void *opaque, char *err, size_t errlen);
/* Forgets fd (before the loop starts, for a set-up that failed half-way). */
void ioloop_del(struct ioloop *l, int fd);
/* Starts the thread (with every signal blocked: signals stay with Python and the vCPUs). */
int ioloop_start(struct ioloop *l, char *err, size_t errlen);
/* Stops and joins the thread if it runs, closes the loop's own fds, frees l (NULL is ok).
 * The handlers' fds belong to whoever added them. */
void ioloop_free(struct ioloop *l);

#endif
