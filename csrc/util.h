/* Small helpers every C file of the core uses: error strings, clocks, file reading. */
#ifndef VMM_UTIL_H
#define VMM_UTIL_H
#include <stddef.h>
#include <stdint.h>

#define MiB (1024ULL * 1024ULL)
#define GiB (1024ULL * MiB)

/* Write a one-line error into err (may be NULL); always returns -1 so callers can
 * `return errf(err, errlen, "...")`. */
int errf(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* CLOCK_MONOTONIC in ns: the same clock as Python's time.monotonic_ns(). */
int64_t now_ns(void);

/* Map a file read-only (MAP_PRIVATE) and keep it open: *out (NULL when empty), *len, *fd. */
int map_file(const char *path, uint64_t max_bytes, void **out, uint64_t *len, int *fd_out,
             char *err, size_t errlen);

/* write() all of buf, retrying on EINTR unless *abort becomes true (a host stop). */
int write_all(int fd, const void *buf, size_t len, const volatile int *abort);

/* a must be a power of two. */
static inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) & ~(a - 1); }

/* Little-endian accessors for byte buffers that may be unaligned. */
static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline uint32_t le32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static inline uint64_t le64(const uint8_t *p) { return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32; }
static inline void put16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static inline void put32(uint8_t *p, uint32_t v) { put16(p, v); put16(p + 2, v >> 16); }
static inline void put64(uint8_t *p, uint64_t v) { put32(p, v); put32(p + 4, v >> 32); }

#endif
