/* Loading a kernel and laying out what its boot protocol expects in guest memory:
 * initrd, command line, zero page (64-bit entry) or PVH start info, GDT, IDT and the
 * identity page tables. Parsing the kernel file itself is kernel_image.c. */
#include "x86_boot.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "boot_params.h"
#include "e820.h"
#include "guest_mem.h"
#include "kernel_image.h"
#include "layout.h"
#include "util.h"

#define KERNEL_FILE_MAX (512 * MiB)

/* PVH boot ABI (xen/include/public/arch-x86/hvm/start_info.h). */
#define PVH_MAGIC           0x336ec578u
#define PVH_INFO_SIZE       56
#define PVH_MODLIST_SIZE    32
#define PVH_MEMMAP_ENTRY    24

/* ---- initrd and command line ------------------------------------------------------- */

/* As high as possible (Linux's own advice), page aligned, above the kernel. */
static int load_initrd(struct guest_mem *m, const struct kimage *k, const char *path,
                       struct boot_info *bi, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errf(err, errlen, "cannot open initrd %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return errf(err, errlen, "initrd %s is not a regular file", path);
    }
    uint64_t size = st.st_size;
    if (size == 0) {
        close(fd);
        return errf(err, errlen, "initrd %s is empty", path);
    }
    uint64_t top = guest_mem_low_top(m);
    if (k->initrd_addr_max + 1 < top)
        top = k->initrd_addr_max + 1;
    uint64_t floor = align_up(k->load_end, 4096);
    if (size > top || ((top - size) & ~0xfffULL) < floor) {
        close(fd);
        return errf(err, errlen, "initrd %s (%llu MiB) does not fit in guest memory between the kernel "
                    "end 0x%llx and 0x%llx; give the VM more memory", path,
                    (unsigned long long)(align_up(size, MiB) / MiB), (unsigned long long)floor,
                    (unsigned long long)top);
    }
    uint64_t addr = (top - size) & ~0xfffULL;
    uint8_t *dst = guest_mem_ptr(m, addr, size);
    uint64_t got = 0;
    while (dst && got < size) {
        ssize_t r = read(fd, dst + got, size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += r;
    }
    close(fd);
    if (got != size)
        return errf(err, errlen, "cannot read initrd %s: short read", path);
    bi->initrd_addr = addr;
    bi->initrd_size = size;
    return 0;
}

static int load_cmdline(struct guest_mem *m, const struct kimage *k, const char *cmdline,
                        char *err, size_t errlen)
{
    size_t n = strlen(cmdline);
    uint64_t max = k->cmdline_max < LAYOUT_CMDLINE_MAX - 1 ? k->cmdline_max : LAYOUT_CMDLINE_MAX - 1;
    if (n > max)
        return errf(err, errlen, "kernel command line is %zu bytes; %s takes at most %llu", n, k->path,
                    (unsigned long long)max);
    uint8_t *dst = guest_mem_ptr(m, LAYOUT_CMDLINE, n + 1);
    if (!dst)
        return errf(err, errlen, "guest memory too small for the command line");
    memcpy(dst, cmdline, n + 1);
    return 0;
}

/* ---- zero page, PVH start info ------------------------------------------------------ */

static int write_zero_page(struct guest_mem *m, const struct e820_table *e820, const struct kimage *k,
                           const struct boot_info *bi, char *err, size_t errlen)
{
    uint8_t *zp = guest_mem_ptr(m, LAYOUT_ZERO_PAGE, 4096);
    if (!zp)
        return errf(err, errlen, "guest memory too small for the zero page");
    memset(zp, 0, 4096);
    if (strcmp(k->kind, "bzimage") == 0) {
        /* The kernel's own setup header, as far as it says it goes (byte 0x201). */
        uint64_t end = 0x202 + k->buf[0x201];
        if (end > HDR_END_MAX)
            end = HDR_END_MAX;
        memcpy(zp + BP_HDR, k->buf + BP_HDR, end - BP_HDR);
    } else {
        put16(zp + HDR_BOOT_FLAG, 0xaa55);
        put32(zp + HDR_MAGIC, HDR_MAGIC_VALUE);
        put16(zp + HDR_VERSION, 0x20f);
        zp[HDR_LOADFLAGS] = LOADED_HIGH;
        put32(zp + HDR_KERNEL_ALIGN, 0x1000000);
        put32(zp + HDR_INITRD_ADDR_MAX, (uint32_t)k->initrd_addr_max);
        put32(zp + HDR_CMDLINE_SIZE, (uint32_t)k->cmdline_max);
    }
    zp[HDR_TYPE_OF_LOADER] = 0xff; /* "undefined" boot loader */
    put32(zp + HDR_CMD_LINE_PTR, LAYOUT_CMDLINE);
    put32(zp + HDR_RAMDISK_IMAGE, (uint32_t)bi->initrd_addr);
    put32(zp + HDR_RAMDISK_SIZE, (uint32_t)bi->initrd_size);
    zp[BP_E820_ENTRIES] = (uint8_t)e820->n;
    for (int i = 0; i < e820->n && i < BP_E820_MAX; i++) {
        uint8_t *e = zp + BP_E820_TABLE + 20 * i;
        put64(e, e820->e[i].addr);
        put64(e + 8, e820->e[i].size);
        put32(e + 16, e820->e[i].type);
    }
    return 0;
}

static int write_pvh_info(struct guest_mem *m, const struct e820_table *e820, const struct boot_info *bi,
                          char *err, size_t errlen)
{
    uint8_t *si = guest_mem_ptr(m, LAYOUT_PVH_INFO, PVH_INFO_SIZE);
    uint8_t *mod = guest_mem_ptr(m, LAYOUT_PVH_MODLIST, PVH_MODLIST_SIZE);
    uint8_t *mm = guest_mem_ptr(m, LAYOUT_PVH_MEMMAP, PVH_MEMMAP_ENTRY * E820_MAX);
    if (!si || !mod || !mm)
        return errf(err, errlen, "guest memory too small for the PVH start info");
    memset(si, 0, PVH_INFO_SIZE);
    put32(si + 0, PVH_MAGIC);
    put32(si + 4, 1);                       /* version 1: has the memory map */
    put64(si + 24, LAYOUT_CMDLINE);         /* cmdline_paddr */
    put64(si + 40, LAYOUT_PVH_MEMMAP);      /* memmap_paddr */
    put32(si + 48, e820->n);                /* memmap_entries */
    if (bi->initrd_size) {
        put32(si + 12, 1);                  /* nr_modules */
        put64(si + 16, LAYOUT_PVH_MODLIST); /* modlist_paddr */
        memset(mod, 0, PVH_MODLIST_SIZE);
        put64(mod + 0, bi->initrd_addr);
        put64(mod + 8, bi->initrd_size);
    }
    for (int i = 0; i < e820->n; i++) {
        uint8_t *e = mm + PVH_MEMMAP_ENTRY * i;
        memset(e, 0, PVH_MEMMAP_ENTRY);
        put64(e, e820->e[i].addr);
        put64(e + 8, e820->e[i].size);
        put32(e + 16, e820->e[i].type);
    }
    return 0;
}

/* ---- GDT, IDT, page tables ----------------------------------------------------------- */

static uint64_t gdt_entry(uint16_t flags, uint32_t base, uint32_t limit)
{
    return ((uint64_t)(base & 0xff000000) << 32) | ((uint64_t)(base & 0x00ffffff) << 16) |
           (limit & 0xffff) | ((uint64_t)(limit & 0xf0000) << 32) | ((uint64_t)(flags & 0xf0ff) << 40);
}

static int write_tables(struct guest_mem *m, int mode, char *err, size_t errlen)
{
    uint8_t *gdt = guest_mem_ptr(m, LAYOUT_GDT, 8 * LAYOUT_GDT_ENTRIES);
    uint8_t *idt = guest_mem_ptr(m, LAYOUT_IDT, 8);
    if (!gdt || !idt)
        return errf(err, errlen, "guest memory too small for the GDT");
    /* Code: 0xa09b = 64-bit (L), 0xc09b = 32-bit (D/B); data 0xc093; TSS 0x808b (busy). */
    uint16_t code = mode == BOOT_PVH32 ? 0xc09b : 0xa09b;
    put64(gdt + 0, 0);
    put64(gdt + 8, 0);
    put64(gdt + SEL_CODE, gdt_entry(code, 0, 0xfffff));
    put64(gdt + SEL_DATA, gdt_entry(0xc093, 0, 0xfffff));
    put64(gdt + SEL_TSS, gdt_entry(0x808b, 0, 0x67));
    put64(idt, 0);
    if (mode != BOOT_LONG64)
        return 0;
    uint8_t *pml4 = guest_mem_ptr(m, LAYOUT_PML4, 4096), *pdpt = guest_mem_ptr(m, LAYOUT_PDPT, 4096);
    uint8_t *pd = guest_mem_ptr(m, LAYOUT_PD, 4 * 4096);
    if (!pml4 || !pdpt || !pd)
        return errf(err, errlen, "guest memory too small for the page tables");
    memset(pml4, 0, 4096);
    memset(pdpt, 0, 4096);
    put64(pml4, LAYOUT_PDPT | 0x03);                    /* present, writable */
    for (int i = 0; i < 4; i++) {
        put64(pdpt + 8 * i, (LAYOUT_PD + 4096 * i) | 0x03);
        for (int j = 0; j < 512; j++) {
            uint64_t addr = ((uint64_t)i << 30) | ((uint64_t)j << 21);
            put64(pd + 4096 * i + 8 * j, addr | 0x83); /* present, writable, 2 MiB page */
        }
    }
    return 0;
}

/* ---- the whole load ---------------------------------------------------------------- */

int x86_load(struct guest_mem *m, const struct e820_table *e820, const char *kernel,
             const char *initrd, const char *cmdline, struct boot_info *out,
             char *err, size_t errlen)
{
    /* Mapped for parsing (only the headers are touched), read with pread for loading. */
    struct kimage k = { .path = kernel, .fd = -1 };
    void *map = NULL;
    if (map_file(kernel, KERNEL_FILE_MAX, &map, &k.len, &k.fd, err, errlen) < 0)
        return -1;
    k.buf = map;
    struct boot_info bi = { 0 };
    int rc = kimage_parse(&k, err, errlen);
    if (rc == 0)
        rc = kimage_load(m, &k, err, errlen);
    if (rc == 0 && initrd)
        rc = load_initrd(m, &k, initrd, &bi, err, errlen);
    if (rc == 0)
        rc = load_cmdline(m, &k, cmdline ? cmdline : "", err, errlen);
    if (rc == 0)
        rc = k.mode == BOOT_PVH32 ? write_pvh_info(m, e820, &bi, err, errlen)
                                  : write_zero_page(m, e820, &k, &bi, err, errlen);
    if (rc == 0)
        rc = write_tables(m, k.mode, err, errlen);
    if (map)
        munmap(map, k.len);
    close(k.fd);
    if (rc < 0)
        return -1;
    bi.mode = k.mode;
    bi.kind = k.kind;
    bi.entry = k.entry;
    bi.boot_arg = k.mode == BOOT_PVH32 ? LAYOUT_PVH_INFO : LAYOUT_ZERO_PAGE;
    bi.kernel_end = k.load_end;
    *out = bi;
    return 0;
}
