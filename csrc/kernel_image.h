/* Parsing a kernel file (ELF vmlinux or bzImage) and copying it into guest memory.
 * Python inspects a file through vmm_kernel_inspect() (the same parser) before a VM exists. */
#ifndef VMM_KERNEL_IMAGE_H
#define VMM_KERNEL_IMAGE_H
#include <stddef.h>
#include <stdint.h>

struct guest_mem;

/* What the parser learned about a kernel file before anything is written. */
struct kimage {
    const uint8_t *buf;       /* the whole file (mapped) */
    uint64_t len;
    int fd;                   /* the open file, or -1: loading preads from it when >= 0 */
    const char *path;
    const char *kind;         /* "elf-pvh", "elf-64", "bzimage" */
    int mode;                 /* enum boot_mode */
    uint64_t entry;
    uint64_t load_start;      /* lowest guest-physical byte loaded */
    uint64_t load_end;        /* highest guest-physical byte needed + 1 */
    uint64_t initrd_addr_max; /* inclusive */
    uint64_t cmdline_max;     /* bytes, without the NUL */
    uint64_t pm_offset;       /* bzImage: file offset of the protected-mode part */
};

/* k->buf, k->len and k->path set; fills the rest or returns -1 with err. */
int kimage_parse(struct kimage *k, char *err, size_t errlen);
/* Copy the kernel into guest memory (after kimage_parse). */
int kimage_load(struct guest_mem *m, const struct kimage *k, char *err, size_t errlen);
/* The "memory N MiB is too small for kernel X (needs at least M MiB)" error. */
int kimage_too_small(const struct guest_mem *m, const struct kimage *k, char *err, size_t errlen);

#endif
