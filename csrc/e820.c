#include "e820.h"

#include "layout.h"

static void add(struct e820_table *t, uint64_t addr, uint64_t size, uint32_t type)
{
    if (size == 0 || t->n >= E820_MAX)
        return;
    t->e[t->n++] = (struct vmm_e820_entry){ .addr = addr, .size = size, .type = type };
}

/* RAM below 640 KiB up to the MP table; from there to 1 MiB one reserved range (MP table,
 * the VGA hole and the BIOS area: Linux's PVH entry adds 0xa0000-0x100000 as reserved
 * itself, and giving it the same range keeps the map the guest prints identical to this
 * one); RAM from 1 MiB to the MMIO hole; the rest of RAM above 4 GiB. */
void e820_build(struct e820_table *t, const struct guest_mem *m)
{
    t->n = 0;
    add(t, 0, LAYOUT_LOW_RAM_END, E820_RAM);
    add(t, LAYOUT_LOW_RAM_END, LAYOUT_HIGH_RAM - LAYOUT_LOW_RAM_END, E820_RESERVED);
    uint64_t low = guest_mem_low_top(m);
    if (low > LAYOUT_HIGH_RAM)
        add(t, LAYOUT_HIGH_RAM, low - LAYOUT_HIGH_RAM, E820_RAM);
    add(t, LAYOUT_4G, guest_mem_size(m) - low, E820_RAM);
}
