/* See ioloop.h. */
#include "ioloop.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util.h"

#define IOLOOP_MAX 64

struct handler {
    int fd;
    ioloop_fn fn;
    void *opaque;
};

struct ioloop {
    int epfd, stop_fd;
    int n;
    struct handler h[IOLOOP_MAX];
    pthread_t thread;
    bool started;
};

struct ioloop *ioloop_new(char *err, size_t errlen)
{
    struct ioloop *l = calloc(1, sizeof(*l));
    if (!l) {
        errf(err, errlen, "out of memory");
        return NULL;
    }
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL }; /* NULL: stop */
    if (l->epfd < 0 || l->stop_fd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->stop_fd, &ev) < 0) {
        errf(err, errlen, "cannot create the device I/O loop: %s", strerror(errno));
        ioloop_free(l);
        return NULL;
    }
    return l;
}

int ioloop_add(struct ioloop *l, int fd, ioloop_fn fn, void *opaque, char *err, size_t errlen)
{
    if (l->started)
        return errf(err, errlen, "cannot add to the device I/O loop after it started");
    if (l->n >= IOLOOP_MAX)
        return errf(err, errlen, "too many device event sources (limit %d)", IOLOOP_MAX);
    struct handler *h = &l->h[l->n];
    *h = (struct handler){ fd, fn, opaque };
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = h };
    if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return errf(err, errlen, "epoll_ctl on fd %d: %s", fd, strerror(errno));
    l->n++;
    return 0;
}

void ioloop_del(struct ioloop *l, int fd)
{
    for (int i = 0; i < l->n; i++) {
        if (l->h[i].fd != fd)
            continue;
        epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
        l->h[i].fd = -1; /* the slot stays: epoll may hold pointers to its neighbours */
        return;
    }
}

static void *loop_thread(void *arg)
{
    struct ioloop *l = arg;
    for (;;) {
        struct epoll_event evs[16];
        int n = epoll_wait(l->epfd, evs, 16, -1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return NULL;
        for (int i = 0; i < n; i++) {
            struct handler *h = evs[i].data.ptr;
            if (!h)
                return NULL;
            h->fn(h->opaque, h->fd);
        }
    }
}

int ioloop_start(struct ioloop *l, char *err, size_t errlen)
{
    if (l->started || l->n == 0)
        return 0; /* nothing to wait for: no thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int e = pthread_create(&l->thread, NULL, loop_thread, l);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0)
        return errf(err, errlen, "cannot start the device I/O thread: %s", strerror(e));
    l->started = true;
    return 0;
}

void ioloop_free(struct ioloop *l)
{
    if (!l)
        return;
    if (l->started) {
        eventfd_write(l->stop_fd, 1);
        pthread_join(l->thread, NULL);
    }
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->stop_fd >= 0)
        close(l->stop_fd);
    free(l);
}
