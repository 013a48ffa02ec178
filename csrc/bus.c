#include "bus.h"

#include "util.h"

int bus_register(struct bus *b, const char *name, uint64_t base, uint64_t len, bus_handler fn,
                 void *opaque, char *err, size_t errlen)
{
    if (b->sealed)
        return errf(err, errlen, "cannot add %s range %s after the VM started", b->what, name);
    if (len == 0 || base + len < base)
        return errf(err, errlen, "bad %s range %s: base 0x%llx length 0x%llx", b->what, name,
                    (unsigned long long)base, (unsigned long long)len);
    if (b->n >= BUS_MAX_RANGES)
        return errf(err, errlen, "too many %s ranges (limit %d)", b->what, BUS_MAX_RANGES);
    for (int i = 0; i < b->n; i++) {
        const struct bus_range *o = &b->r[i];
        if (base < o->base + o->len && o->base < base + len)
            return errf(err, errlen, "%s range %s [0x%llx, 0x%llx) overlaps %s [0x%llx, 0x%llx)",
                        b->what, name, (unsigned long long)base, (unsigned long long)(base + len),
                        o->name, (unsigned long long)o->base, (unsigned long long)(o->base + o->len));
    }
    b->r[b->n++] = (struct bus_range){ base, len, fn, opaque, name };
    return 0;
}

/* A linear scan: a handful of ranges, and the exit itself costs microseconds. */
static const struct bus_range *find(const struct bus *b, uint64_t addr, uint32_t len)
{
    for (int i = 0; i < b->n; i++) {
        const struct bus_range *r = &b->r[i];
        if (addr >= r->base && addr - r->base < r->len && len <= r->len - (addr - r->base))
            return r;
    }
    return NULL;
}

bool bus_access(const struct bus *b, uint64_t addr, uint8_t *data, uint32_t len, bool is_write)
{
    const struct bus_range *r = find(b, addr, len);
    if (!r)
        return false;
    r->fn(r->opaque, addr - r->base, data, len, is_write);
    return true;
}
