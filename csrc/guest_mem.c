#include "guest_mem.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "layout.h"
#include "util.h"

#define HUGE_2M (2 * MiB)

int guest_mem_map(struct guest_mem *m, uint64_t bytes, bool hugepages, char *err, size_t errlen)
{
    memset(m, 0, sizeof(*m));
    if (bytes < 2 * MiB)
        return errf(err, errlen, "guest memory %llu bytes is too small (minimum 2 MiB)",
                    (unsigned long long)bytes);
    size_t len = bytes;
    /* Plain RAM: NORESERVE, pages appear as the guest touches them. Huge pages: reserved
     * at mmap time (no NORESERVE), so a shortage is this error, not a SIGBUS later. */
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE;
    if (hugepages) {
        len = (bytes + HUGE_2M - 1) & ~(HUGE_2M - 1);
        flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB;
    }
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p == MAP_FAILED) {
        if (hugepages)
            return errf(err, errlen, "cannot map %llu MiB of guest memory with huge pages (%s): "
                        "reserve 2 MiB pages in /proc/sys/vm/nr_hugepages or run without hugepages",
                        (unsigned long long)(len / MiB), strerror(errno));
        return errf(err, errlen, "cannot map %llu MiB of guest memory: %s",
                    (unsigned long long)(len / MiB), strerror(errno));
    }
    if (!hugepages)
        madvise(p, len, MADV_MERGEABLE); /* harmless where KSM is off */
    m->host = p;
    m->map_len = len;
    m->size = len;
    m->low_size = len < LAYOUT_MMIO_HOLE ? len : LAYOUT_MMIO_HOLE;
    m->high_size = len - m->low_size;
    return 0;
}

void guest_mem_unmap(struct guest_mem *m)
{
    if (m->host)
        munmap(m->host, m->map_len);
    memset(m, 0, sizeof(*m));
}

void *gpa_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
    if (!m->host)
        return NULL;
    /* Written as subtractions so a hostile gpa + len cannot wrap around. */
    if (gpa < m->low_size && len <= m->low_size - gpa)
        return m->host + gpa;
    if (gpa >= LAYOUT_4G && gpa - LAYOUT_4G < m->high_size && len <= m->high_size - (gpa - LAYOUT_4G))
        return m->host + m->low_size + (gpa - LAYOUT_4G);
    return NULL;
}
