/* A test-only port that makes a confined thread break its filter, so tests can see the
 * filter end the process and name the call (vmm_vm_add_seccomp_probe in core_api.h).
 * A write of any byte to the port makes the vCPU thread that serves it, or (on_io_thread)
 * the device I/O thread woken through an eventfd, issue system call nr with zero
 * arguments. Nothing adds the port unless a test asks for it. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ioloop.h"
#include "seccomp.h"
#include "util.h"
#include "vm.h"

struct seccomp_probe {
    long nr;
    int efd;    /* on_io_thread: the vCPU's write wakes the I/O thread here; else -1 */
};

static void issue(long nr)
{
    long r = syscall(nr, 0L, 0L, 0L, 0L, 0L, 0L);
    (void)r; /* without the filter the call just fails or does nothing harmful to a test */
}

static void probe_io(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write)
{
    struct seccomp_probe *p = opaque;
    if (!is_write) {
        memset(data, 0, len);
        return;
    }
    if (p->efd >= 0)
        eventfd_write(p->efd, 1);
    else
        issue(p->nr);
}

static void probe_ready(void *opaque, int fd)
{
    struct seccomp_probe *p = opaque;
    eventfd_t v;
    if (eventfd_read(fd, &v) == 0)
        issue(p->nr);
}

int vmm_vm_add_seccomp_probe(struct vmm_vm *vm, uint16_t port, int on_io_thread, long nr,
                             char *err, size_t errlen)
{
    if (vm->started)
        return errf(err, errlen, "cannot add a probe to a running VM");
    if (vm->seccomp_probe)
        return errf(err, errlen, "the VM has a seccomp probe already");
    struct seccomp_probe *p = calloc(1, sizeof(*p));
    if (!p)
        return errf(err, errlen, "out of memory");
    p->nr = nr;
    p->efd = -1;
    vm->seccomp_probe = p; /* freed with the VM from here on, whatever fails below */
    if (on_io_thread) {
        if (!vm->io && !(vm->io = ioloop_new(err, errlen)))
            return -1;
        p->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (p->efd < 0)
            return errf(err, errlen, "eventfd: %s", strerror(errno));
        if (ioloop_add(vm->io, p->efd, probe_ready, p, err, errlen) < 0)
            return -1;
    }
    return bus_register(&vm->pio, "seccomp-probe", port, 1, probe_io, p, err, errlen);
}

void seccomp_probe_free(struct vmm_vm *vm)
{
    struct seccomp_probe *p = vm->seccomp_probe;
    if (!p)
        return;
    if (p->efd >= 0)
        close(p->efd); /* after vm_virtio_destroy(): the loop is gone */
    free(p);
    vm->seccomp_probe = NULL;
}
