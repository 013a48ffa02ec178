/* Checked guest-physical -> host translation. See mem.h. */
#include "mem.h"

#include <string.h>

void vm_mem_init(struct vm_mem *m) { memset(m, 0, sizeof(*m)); }

/* True if [a, a+alen) and [b, b+blen) intersect; both ranges already known not to wrap. */
static int ranges_overlap(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
    return a < b + blen && b < a + alen;
}

int vm_mem_add(struct vm_mem *m, uint64_t gpa, uint64_t size, void *host)
{
    if (m->nregions >= VM_MEM_MAX_REGIONS || size == 0 || host == NULL)
        return -1;
    if (gpa + size < gpa) /* wraps the 64-bit space */
        return -1;
    for (int i = 0; i < m->nregions; i++)
        if (ranges_overlap(gpa, size, m->r[i].gpa, m->r[i].size))
            return -1;
    m->r[m->nregions++] = (struct vm_mem_region){ .gpa = gpa, .size = size, .host = host };
    return 0;
}

void *vm_mem_ptr(const struct vm_mem *m, uint64_t gpa, uint64_t len)
{
    if (m == NULL)
        return NULL;
    for (int i = 0; i < m->nregions; i++) {
        const struct vm_mem_region *r = &m->r[i];
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
