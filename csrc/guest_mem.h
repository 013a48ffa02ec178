/* Guest memory: the one description of guest-physical memory that the loader (x86_boot,
 * kernel_image, e820, mptable) and the virtio devices share, as a few checked regions
 * {gpa, size, host pointer}.
 *
 * Every guest address goes through guest_mem_ptr(), which answers with a host pointer
 * only when the whole range [gpa, gpa+len) lies inside one region: nothing in the core
 * does its own pointer arithmetic on a guest address, so a hostile kernel file or
 * descriptor cannot reach past RAM. A KVM VM's RAM is one host mapping described as one
 * or two regions split around the 32-bit MMIO hole (guest_mem_map); a vhost-user server
 * describes the front-end's shared memory; the test transport a caller's buffer. */
#ifndef VMM_GUEST_MEM_H
#define VMM_GUEST_MEM_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define GUEST_MEM_MAX_REGIONS 8
#define GUEST_MEM_MIN_BYTES (2ull << 20) /* room for the boot tables and a tiny kernel */

struct guest_mem_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *host;
};

struct guest_mem {
    int nregions;
    struct guest_mem_region r[GUEST_MEM_MAX_REGIONS];
    /* Only for memory from guest_mem_map(): the host mapping behind the regions ... */
    uint8_t *map;
    size_t map_len;
    /* ... and, for shared RAM, the memfd it maps from offset 0 (region i's bytes are at
     * offset r[i].host - map), else -1. A vhost-user front end hands it to its back end. */
    int fd;
};

void guest_mem_init(struct guest_mem *m);
/* Adds a region; fails (-1) on a full table, a zero size, a wrapping range or an overlap. */
int guest_mem_add(struct guest_mem *m, uint64_t gpa, uint64_t size, void *host);
/* Host pointer for [gpa, gpa+len) if it lies within one region, else NULL.
 * len 0 is allowed (answers for the single address gpa, which must be inside a region
 * or at its very end). */
void *guest_mem_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len);
/* Total bytes in every region. */
uint64_t guest_mem_size(const struct guest_mem *m);
/* Highest RAM address + 1 of the region that starts at 0 (RAM below the MMIO hole). */
uint64_t guest_mem_low_top(const struct guest_mem *m);

/* A VM's RAM: maps bytes of memory (2 MiB pages if hugepages) and describes it as
 * [0, min(bytes, MMIO hole)) and, for the rest, [4 GiB, ...). Private anonymous memory,
 * or with shared a memfd (MFD_HUGETLB with hugepages) mapped MAP_SHARED and sealed against
 * shrinking and growing, so another process (a vhost-user back end) can map the same pages
 * and never fault on a truncated file. */
int guest_mem_map(struct guest_mem *m, uint64_t bytes, bool hugepages, bool shared, char *err,
                  size_t errlen);
void guest_mem_unmap(struct guest_mem *m);

#endif
