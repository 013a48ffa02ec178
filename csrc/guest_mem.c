/* Checked guest-physical -> host translation, and a VM's RAM mapping. See guest_mem.h. */
#include "guest_mem.h"

#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "layout.h"
#include "util.h"

#define HUGE_2M (2 * MiB)

void guest_mem_init(struct guest_mem *m) { memset(m, 0, sizeof(*m)); }

/* True if [a, a+alen) and [b, b+blen) intersect; both ranges already known not to wrap. */
static int ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

int guest_mem_add(struct guest_mem *m, uint64_t gpa, uint64_t size, void *host)
{
    if (m->nregions >= GUEST_MEM_MAX_REGIONS || size == 0 || host == NULL)
        return -1;
    if (gpa + size < gpa) /* wraps the 64-bit space */
        return -1;
    for (int i = 0; i < m->nregions; i++)
        if (ranges_overlap(gpa, size, m->r[i].gpa, m->r[i].size))
            return -1;
    m->r[m->nregions++] = (struct guest_mem_region){ .gpa = gpa, .size = size, .host = host };
    return 0;
}

void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len)
{
    if (m == NULL)
        return NULL;
    for (int i = 0; i < m->nregions; i++) {
        const struct guest_mem_region *r = &m->r[i];
        if (gpa < r->gpa)
            continue;
        uint64_t off = gpa - r->gpa;
        /* Written so that nothing can overflow: off <= size is checked before size - off. */
        if (off > r->size || len > r->size - off)
            continue;
        return r->host + off;
    }
    return NULL;
}

uint64_t guest_mem_size(const struct guest_mem *m)
{
    uint64_t n = 0;
    for (int i = 0; i < m->nregions; i++)
        n += m->r[i].size;
    return n;
}

uint64_t guest_mem_low_top(const struct guest_mem *m)
{
    for (int i = 0; i < m->nregions; i++)
        if (m->r[i].gpa == 0)
            return m->r[i].size;
    return 0;
}

int guest_mem_map(struct guest_mem *m, uint64_t bytes, bool hugepages, char *err, size_t errlen)
{
    guest_mem_init(m);
    if (bytes < GUEST_MEM_MIN_BYTES)
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
    /* Plain RAM is mapped 2 MiB-aligned and marked for transparent huge pages (as QEMU does
     * with its RAM): loading an 18 MB vmlinux, and the guest's first touches of its memory,
     * then cost a few 2 MiB faults instead of thousands of 4 KiB ones. Nested under SVM a
     * host fault is expensive (the kvm engine's kernel load took 0.2-1 s in the nested
     * tier's L1 before this). */
    size_t slack = hugepages ? 0 : HUGE_2M;
    void *p = mmap(NULL, len + slack, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (p != MAP_FAILED && slack) {
        uintptr_t start = ((uintptr_t)p + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1);
        size_t head = start - (uintptr_t)p;
        if (head)
            munmap(p, head);
        if (slack - head)
            munmap((uint8_t *)start + len, slack - head);
        p = (void *)start;
    }
    if (p == MAP_FAILED) {
        if (hugepages)
            return errf(err, errlen, "cannot map %llu MiB of guest memory with huge pages (%s): "
                        "reserve 2 MiB pages in /proc/sys/vm/nr_hugepages or run without hugepages",
                        (unsigned long long)(len / MiB), strerror(errno));
        return errf(err, errlen, "cannot map %llu MiB of guest memory: %s",
                    (unsigned long long)(len / MiB), strerror(errno));
    }
    if (!hugepages)
        madvise(p, len, MADV_HUGEPAGE); /* a hint: where THP is off it changes nothing */
    m->map = p;
    m->map_len = len;
    uint64_t low = len < LAYOUT_MMIO_HOLE ? len : LAYOUT_MMIO_HOLE;
    guest_mem_add(m, 0, low, m->map);
    if (len > low)
        guest_mem_add(m, LAYOUT_4G, len - low, m->map + low);
    return 0;
}

void guest_mem_unmap(struct guest_mem *m)
{
    if (m->map)
        munmap(m->map, m->map_len);
    guest_mem_init(m);
}
