/* Port I/O and MMIO ranges -> device handlers.
 *
 * Devices register (base, len, handler, opaque) before the vCPUs start; after that the
 * table is read-only, so lookups from vCPU threads need no lock. An access nobody claims
 * is counted by the caller and ignored (reads see all-ones), never fatal. */
#ifndef VMM_BUS_H
#define VMM_BUS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* data holds len (1..8) bytes, little-endian; a read handler fills it. */
typedef void (*bus_handler)(void *opaque, uint64_t offset, uint8_t *data, uint32_t len, bool is_write);

struct bus_range {
    uint64_t base, len;
    bus_handler fn;
    void *opaque;
    const char *name;
};

#define BUS_MAX_RANGES 64

struct bus {
    const char *what;  /* "port" or "MMIO", for error messages */
    int n;
    bool sealed;       /* set when vCPUs start */
    struct bus_range r[BUS_MAX_RANGES];
};

int bus_register(struct bus *b, const char *name, uint64_t base, uint64_t len, bus_handler fn,
                 void *opaque, char *err, size_t errlen);
/* Dispatch one access; false if no range covers [addr, addr + len). */
bool bus_access(const struct bus *b, uint64_t addr, uint8_t *data, uint32_t len, bool is_write);

#endif
