/* Checked guest-physical -> host translation, and a VM's RAM mapping. See guest_mem.h. */
#define _GNU_SOURCE
#include "guest_mem.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "layout.h"
#include "util.h"

#define HUGE_2M (2 * MiB)

void guest_mem_init(struct guest_mem *m)
{
    memset(m, 0, sizeof(*m));
    m->fd = -1;
}

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

/* The memfd behind shared RAM: len bytes, sealed so that neither we nor anyone we hand it
 * to can change its size (a back end that maps it must never find pages cut off under it,
 * and ours refuses a memfd without F_SEAL_SHRINK). */
static int shared_fd(size_t len, bool hugepages, char *err, size_t errlen)
{
    unsigned flags = MFD_CLOEXEC | MFD_ALLOW_SEALING | (hugepages ? MFD_HUGETLB : 0);
    int fd = memfd_create("vmm-guest-ram", flags);
    if (fd < 0)
        return errf(err, errlen, "cannot create a memfd for shared guest memory: %s", strerror(errno));
    if (ftruncate(fd, (off_t)len) < 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
        int e = errno;
        close(fd);
        return errf(err, errlen, "cannot size and seal %llu MiB of shared guest memory: %s",
                    (unsigned long long)(len / MiB), strerror(e));
    }
    return fd;
}

/* len bytes at a 2 MiB-aligned address: private anonymous, or fd's pages shared. Plain
 * RAM is mapped 2 MiB-aligned and marked for transparent huge pages (as QEMU does with its
 * RAM): loading an 18 MB vmlinux, and the guest's first touches of its memory, then cost a
 * few 2 MiB faults instead of thousands of 4 KiB ones. Nested under SVM a host fault is
 * expensive (the kvm engine's kernel load took 0.2-1 s in the nested tier's L1 before
 * this). Huge pages are aligned by the kernel already. */
static void *map_aligned(size_t len, bool hugepages, int fd)
{
    if (hugepages) {
        /* Reserved at mmap time (no NORESERVE): a shortage is an error now, not a SIGBUS later. */
        int flags = fd >= 0 ? MAP_SHARED : MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB;
        return mmap(NULL, len, PROT_READ | PROT_WRITE, flags, fd, 0);
    }
    /* Plain RAM: NORESERVE, pages appear as the guest touches them. */
    size_t slack = HUGE_2M;
    void *p = mmap(NULL, len + slack, fd >= 0 ? PROT_NONE : PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return p;
    uintptr_t start = ((uintptr_t)p + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1);
    size_t head = start - (uintptr_t)p;
    if (head)
        munmap(p, head);
    if (slack - head)
        munmap((uint8_t *)start + len, slack - head);
    if (fd >= 0 && mmap((void *)start, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED | MAP_NORESERVE,
                        fd, 0) == MAP_FAILED) {
        munmap((void *)start, len);
        return MAP_FAILED;
    }
    madvise((void *)start, len, MADV_HUGEPAGE); /* a hint: where THP is off it changes nothing */
    return (void *)start;
}

int guest_mem_map(struct guest_mem *m, uint64_t bytes, bool hugepages, bool shared, char *err,
                  size_t errlen)
{
    guest_mem_init(m);
    if (bytes < GUEST_MEM_MIN_BYTES)
        return errf(err, errlen, "guest memory %llu bytes is too small (minimum 2 MiB)",
                    (unsigned long long)bytes);
    size_t len = bytes;
    if (hugepages)
        len = (bytes + HUGE_2M - 1) & ~(HUGE_2M - 1);
    int fd = -1;
    if (shared && (fd = shared_fd(len, hugepages, err, errlen)) < 0) {
        if (hugepages)
            return errf(err, errlen, "cannot create %llu MiB of shared guest memory with huge pages: "
                        "reserve 2 MiB pages in /proc/sys/vm/nr_hugepages or run without hugepages",
                        (unsigned long long)(len / MiB));
        return -1;
    }
    void *p = map_aligned(len, hugepages, fd);
    if (p == MAP_FAILED) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        if (hugepages)
            return errf(err, errlen, "cannot map %llu MiB of guest memory with huge pages (%s): "
                        "reserve 2 MiB pages in /proc/sys/vm/nr_hugepages or run without hugepages",
                        (unsigned long long)(len / MiB), strerror(e));
        return errf(err, errlen, "cannot map %llu MiB of guest memory: %s",
                    (unsigned long long)(len / MiB), strerror(e));
    }
    m->map = p;
    m->map_len = len;
    m->fd = fd;
    uint64_t low = len < LAYOUT_MMIO_HOLE ? len : LAYOUT_MMIO_HOLE;
    guest_mem_add(m, 0, low, m->map);
    if (len > low)
        guest_mem_add(m, LAYOUT_4G, len - low, m->map + low);
    return 0;
}

void guest_mem_unmap(struct guest_mem *m)
{
    if (m->map) {
        munmap(m->map, m->map_len);
        if (m->fd >= 0)
            close(m->fd);
    }
    guest_mem_init(m);
}
