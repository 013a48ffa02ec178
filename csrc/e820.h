/* The guest's physical memory map (e820), built once from the RAM layout and handed to
 * the guest by every boot path (zero page, PVH memmap) and to Python for comparison. */
#ifndef VMM_E820_H
#define VMM_E820_H
#include "core_api.h"
#include "guest_mem.h"

#define E820_RAM      1
#define E820_RESERVED 2
#define E820_MAX      8

struct e820_table {
    int n;
    struct vmm_e820_entry e[E820_MAX];
};

void e820_build(struct e820_table *t, const struct guest_mem *m);

#endif
