/* Guest RAM: one host mapping, one or two KVM memory slots around the 32-bit MMIO hole. */
#ifndef VMM_GUEST_MEM_H
#define VMM_GUEST_MEM_H
#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

struct guest_mem {
    uint8_t *host;       /* start of the host mapping */
    size_t map_len;
    uint64_t size;       /* guest RAM bytes */
    uint64_t low_size;   /* RAM at [0, low_size), low_size <= 3 GiB */
    uint64_t high_size;  /* RAM at [4 GiB, 4 GiB + high_size) */
};

int guest_mem_map(struct guest_mem *m, uint64_t bytes, bool hugepages, char *err, size_t errlen);
void guest_mem_unmap(struct guest_mem *m);
/* Host pointer for [gpa, gpa + len) if the whole range is RAM, else NULL. */
void *gpa_ptr(const struct guest_mem *m, uint64_t gpa, uint64_t len);
/* Highest RAM address + 1 below the MMIO hole. */
static inline uint64_t guest_low_top(const struct guest_mem *m) { return m->low_size; }

#endif
