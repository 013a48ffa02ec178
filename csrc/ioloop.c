/* See ioloop.h.
 *
 * Removal while the loop runs: epoll_wait may already have returned an event for the fd
 * being removed, so the handler must stay valid until that round is over. Each round ends
 * by bumping l->rounds under l->lock; ioloop_del (from another thread) removes the fd from
 * epoll, wakes the loop and waits for the round in progress to end; the next epoll_wait
 * cannot return the fd any more. A handler removed from the loop's own thread is marked
 * dead (skipped for the rest of the round) and freed when the round ends. */
#include "ioloop.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "seccomp.h"
#include "util.h"

#define IOLOOP_MAX 64

struct handler {
    int fd;
    ioloop_fn fn;
    void *opaque;
    bool dead;               /* removed during the round in progress: do not call */
    struct handler *next_dead;
};

struct ioloop {
    int epfd, wake_fd;
    pthread_mutex_t lock;    /* the table, rounds, stopping */
    pthread_cond_t round_done;
    struct handler *h[IOLOOP_MAX];
    int n;
    struct handler *dead;    /* removed on the loop's thread, freed when the round ends */
    uint64_t rounds;
    bool stopping;
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
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->round_done, NULL);
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    l->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL }; /* NULL: wake-up */
    if (l->epfd < 0 || l->wake_fd < 0 || epoll_ctl(l->epfd, EPOLL_CTL_ADD, l->wake_fd, &ev) < 0) {
        errf(err, errlen, "cannot create an event loop: %s", strerror(errno));
        ioloop_free(l);
        return NULL;
    }
    return l;
}

int ioloop_add(struct ioloop *l, int fd, ioloop_fn fn, void *opaque, char *err, size_t errlen)
{
    struct handler *h = calloc(1, sizeof(*h));
    if (!h)
        return errf(err, errlen, "out of memory");
    *h = (struct handler){ .fd = fd, .fn = fn, .opaque = opaque };
    pthread_mutex_lock(&l->lock);
    int rc = 0;
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = h };
    if (l->n >= IOLOOP_MAX)
        rc = errf(err, errlen, "too many event sources on one loop (limit %d)", IOLOOP_MAX);
    else if (epoll_ctl(l->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        rc = errf(err, errlen, "epoll_ctl on fd %d: %s", fd, strerror(errno));
    else
        l->h[l->n++] = h;
    pthread_mutex_unlock(&l->lock);
    if (rc < 0)
        free(h);
    return rc;
}

void ioloop_del(struct ioloop *l, int fd)
{
    pthread_mutex_lock(&l->lock);
    struct handler *h = NULL;
    for (int i = 0; i < l->n; i++) {
        if (l->h[i]->fd != fd)
            continue;
        h = l->h[i];
        l->h[i] = l->h[--l->n];
        break;
    }
    if (!h) {
        pthread_mutex_unlock(&l->lock);
        return;
    }
    epoll_ctl(l->epfd, EPOLL_CTL_DEL, fd, NULL);
    __atomic_store_n(&h->dead, true, __ATOMIC_RELEASE);
    if (l->started && pthread_equal(pthread_self(), l->thread)) {
        h->next_dead = l->dead; /* a handler removing itself or a neighbour */
        l->dead = h;
        pthread_mutex_unlock(&l->lock);
        return;
    }
    if (l->started) {
        uint64_t round = l->rounds;
        eventfd_write(l->wake_fd, 1);
        while (l->rounds == round)
            pthread_cond_wait(&l->round_done, &l->lock);
    }
    pthread_mutex_unlock(&l->lock);
    free(h);
}

/* Ends a round: frees handlers removed during it and lets waiting removers go on. */
static void end_round(struct ioloop *l)
{
    pthread_mutex_lock(&l->lock);
    while (l->dead) {
        struct handler *h = l->dead;
        l->dead = h->next_dead;
        free(h);
    }
    l->rounds++;
    pthread_cond_broadcast(&l->round_done);
    pthread_mutex_unlock(&l->lock);
}

static void *loop_thread(void *arg)
{
    struct ioloop *l = arg;
    seccomp_ioloop_thread(l); /* confines the thread if its VM asked for it */
    for (;;) {
        struct epoll_event evs[16];
        int n = epoll_wait(l->epfd, evs, 16, -1);
        if (n < 0 && errno != EINTR)
            n = 0; /* cannot happen with a valid epfd; do not spin on the lock either */
        for (int i = 0; i < n; i++) {
            struct handler *h = evs[i].data.ptr;
            if (!h) {
                eventfd_t v;
                eventfd_read(l->wake_fd, &v);
                continue;
            }
            /* Read without the lock: only this thread frees a dead handler, and a
             * remover on another thread waits for this round before freeing. */
            if (!__atomic_load_n(&h->dead, __ATOMIC_ACQUIRE))
                h->fn(h->opaque, h->fd);
        }
        end_round(l);
        pthread_mutex_lock(&l->lock);
        bool stop = l->stopping;
        pthread_mutex_unlock(&l->lock);
        if (stop)
            return NULL;
    }
}

int ioloop_start(struct ioloop *l, char *err, size_t errlen)
{
    pthread_mutex_lock(&l->lock);
    bool idle = l->started || l->n == 0;
    pthread_mutex_unlock(&l->lock);
    if (idle)
        return 0; /* running, or nothing to wait for: no thread */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    /* l->started is set before the thread can run a handler that calls ioloop_del. */
    pthread_mutex_lock(&l->lock);
    int e = pthread_create(&l->thread, NULL, loop_thread, l);
    l->started = e == 0;
    pthread_mutex_unlock(&l->lock);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e != 0)
        return errf(err, errlen, "cannot start an event loop thread: %s", strerror(e));
    return 0;
}

void ioloop_free(struct ioloop *l)
{
    if (!l)
        return;
    if (l->started) {
        pthread_mutex_lock(&l->lock);
        l->stopping = true;
        pthread_mutex_unlock(&l->lock);
        eventfd_write(l->wake_fd, 1);
        pthread_join(l->thread, NULL);
    }
    for (int i = 0; i < l->n; i++)
        free(l->h[i]);
    if (l->epfd >= 0)
        close(l->epfd);
    if (l->wake_fd >= 0)
        close(l->wake_fd);
    pthread_cond_destroy(&l->round_done);
    pthread_mutex_destroy(&l->lock);
    free(l);
}
