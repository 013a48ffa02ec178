/* Guest memory as seen by device code: a few regions {gpa, size, host pointer}.
 *
 * Every address a guest hands us goes through vm_mem_ptr(), which answers with a host
 * pointer only when the whole range [gpa, gpa+len) lies inside one region. Devices never
 * do their own pointer arithmetic on guest addresses. */
#ifndef VIRTIO_MEM_H
#define VIRTIO_MEM_H
#include <stdint.h>
#include <stddef.h>

#define VM_MEM_MAX_REGIONS 8

struct vm_mem_region {
    uint64_t gpa;
    uint64_t size;
    uint8_t *host;
};

struct vm_mem {
    int nregions;
    struct vm_mem_region r[VM_MEM_MAX_REGIONS];
};

void vm_mem_init(struct vm_mem *m);
/* Adds a region; fails (-1) on a full table, a zero size, a wrapping range or an overlap. */
int vm_mem_add(struct vm_mem *m, uint64_t gpa, uint64_t size, void *host);
/* Host pointer for [gpa, gpa+len) if it lies within one region, else NULL.
 * len 0 is allowed (answers for the single address gpa, which must be inside a region
 * or at its very end). */
void *vm_mem_ptr(const struct vm_mem *m, uint64_t gpa, uint64_t len);

#endif
