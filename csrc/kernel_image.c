/* Kernel files are untrusted input: every offset and size read from one is checked
 * against the file length and guest memory before use; a bad file is an error string. */
#include "kernel_image.h"

#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "boot_params.h"
#include "core_api.h"
#include "guest_mem.h"
#include "layout.h"
#include "util.h"
#include "x86_boot.h"

#define XEN_ELFNOTE_PHYS32_ENTRY 18 /* PVH entry point note (Xen's elfnote.h) */

int kimage_too_small(const struct guest_mem *m, const struct kimage *k, char *err, size_t errlen)
{
    return errf(err, errlen, "memory %llu MiB is too small for kernel %s (needs at least %llu MiB)",
                (unsigned long long)(guest_mem_size(m) / MiB), k->path,
                (unsigned long long)(align_up(k->load_end, MiB) / MiB));
}

/* ---- ELF vmlinux ------------------------------------------------------------------- */

/* Look for XEN_ELFNOTE_PHYS32_ENTRY in one PT_NOTE segment; 1 if found. */
static int find_pvh_note(const uint8_t *p, uint64_t n, uint64_t *entry)
{
    uint64_t off = 0;
    while (n - off >= sizeof(Elf64_Nhdr)) {
        Elf64_Nhdr nh;
        memcpy(&nh, p + off, sizeof(nh));
        off += sizeof(nh);
        uint64_t name_sz = align_up(nh.n_namesz, 4), desc_sz = align_up(nh.n_descsz, 4);
        if (name_sz > n - off || desc_sz > n - off - name_sz)
            return 0; /* truncated note: stop, the ELF may still boot through 64-bit entry */
        const uint8_t *name = p + off, *desc = p + off + name_sz;
        off += name_sz + desc_sz;
        if (nh.n_type != XEN_ELFNOTE_PHYS32_ENTRY || nh.n_namesz != 4 || memcmp(name, "Xen", 4) != 0)
            continue;
        if (nh.n_descsz == 4)
            *entry = le32(desc);
        else if (nh.n_descsz == 8)
            *entry = le64(desc);
        else
            return 0;
        return 1;
    }
    return 0;
}

static bool in_some_load(const uint8_t *buf, const Elf64_Ehdr *eh, uint64_t addr)
{
    for (int i = 0; i < eh->e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, buf + eh->e_phoff + (uint64_t)i * sizeof(ph), sizeof(ph));
        if (ph.p_type == PT_LOAD && addr >= ph.p_paddr && addr - ph.p_paddr < ph.p_memsz)
            return true;
    }
    return false;
}

static int parse_elf(struct kimage *k, char *err, size_t errlen)
{
    Elf64_Ehdr eh;
    if (k->len < sizeof(eh))
        return errf(err, errlen, "%s is not a kernel: truncated ELF header", k->path);
    memcpy(&eh, k->buf, sizeof(eh));
    if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
        return errf(err, errlen, "%s is not a kernel: not a 64-bit little-endian ELF", k->path);
    if (eh.e_machine != EM_X86_64)
        return errf(err, errlen, "%s is not a kernel: ELF machine %u is not x86-64", k->path, eh.e_machine);
    if (eh.e_type != ET_EXEC)
        return errf(err, errlen, "%s is not a kernel: ELF type %u is not an executable", k->path, eh.e_type);
    if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum == 0 || eh.e_phnum > 256 ||
        eh.e_phoff > k->len || (uint64_t)eh.e_phnum * sizeof(Elf64_Phdr) > k->len - eh.e_phoff)
        return errf(err, errlen, "%s is not a kernel: bad ELF program header table", k->path);

    uint64_t pvh_entry = 0;
    bool pvh = false, any_load = false;
    k->load_end = 0;
    k->load_start = UINT64_MAX;
    for (int i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, k->buf + eh.e_phoff + (uint64_t)i * sizeof(ph), sizeof(ph));
        if (ph.p_offset > k->len || ph.p_filesz > k->len - ph.p_offset)
            return errf(err, errlen, "%s is not a kernel: segment %d lies outside the file", k->path, i);
        if (ph.p_type == PT_NOTE && !pvh)
            pvh = find_pvh_note(k->buf + ph.p_offset, ph.p_filesz, &pvh_entry);
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
            continue;
        if (ph.p_filesz > ph.p_memsz || ph.p_paddr + ph.p_memsz < ph.p_paddr)
            return errf(err, errlen, "%s is not a kernel: segment %d has bad sizes", k->path, i);
        if (ph.p_paddr < LAYOUT_KERNEL_MIN)
            return errf(err, errlen, "%s is not a kernel: segment %d loads at 0x%llx, below 1 MiB",
                        k->path, i, (unsigned long long)ph.p_paddr);
        any_load = true;
        if (ph.p_paddr < k->load_start)
            k->load_start = ph.p_paddr;
        if (ph.p_paddr + ph.p_memsz > k->load_end)
            k->load_end = ph.p_paddr + ph.p_memsz;
    }
    if (!any_load)
        return errf(err, errlen, "%s is not a kernel: no loadable segments", k->path);
    k->entry = pvh ? pvh_entry : eh.e_entry;
    if (!in_some_load(k->buf, &eh, k->entry))
        return errf(err, errlen, "%s is not a kernel: entry point 0x%llx is outside its segments",
                    k->path, (unsigned long long)k->entry);
    k->kind = pvh ? "elf-pvh" : "elf-64";
    k->mode = pvh ? BOOT_PVH32 : BOOT_LONG64;
    k->initrd_addr_max = 0x7fffffff; /* what every 64-bit Linux accepts */
    k->cmdline_max = LINUX_CMDLINE_MAX - 1;
    return 0;
}

/* Copy file bytes [off, off+len) into guest memory. From the fd with pread where there is
 * one: the kernel copies page-cache pages straight into guest RAM, where a memcpy from the
 * mapping would take a page fault per 4 KiB of file (thousands for a vmlinux, each costly
 * when nested under SVM). Parsing already checked the range lies inside the file. */
static int kimage_copy(const struct kimage *k, uint8_t *dst, uint64_t off, uint64_t len,
                       char *err, size_t errlen)
{
    if (k->fd < 0) {
        memcpy(dst, k->buf + off, len);
        return 0;
    }
    uint64_t got = 0;
    while (got < len) {
        ssize_t r = pread(k->fd, dst + got, len - got, (off_t)(off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return errf(err, errlen, "cannot read kernel %s: %s", k->path,
                        r < 0 ? strerror(errno) : "the file shrank while loading");
        got += (uint64_t)r;
    }
    return 0;
}

static int load_elf(struct guest_mem *m, const struct kimage *k, char *err, size_t errlen)
{
    Elf64_Ehdr eh;
    memcpy(&eh, k->buf, sizeof(eh));
    for (int i = 0; i < eh.e_phnum; i++) {
        Elf64_Phdr ph;
        memcpy(&ph, k->buf + eh.e_phoff + (uint64_t)i * sizeof(ph), sizeof(ph));
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
            continue;
        uint8_t *dst = guest_mem_ptr(m, ph.p_paddr, ph.p_memsz);
        if (!dst)
            return kimage_too_small(m, k, err, errlen);
        if (kimage_copy(k, dst, ph.p_offset, ph.p_filesz, err, errlen) < 0)
            return -1;
        memset(dst + ph.p_filesz, 0, ph.p_memsz - ph.p_filesz);
    }
    return 0;
}

/* ---- bzImage ------------------------------------------------------------------------ */

static int parse_bzimage(struct kimage *k, char *err, size_t errlen)
{
    const uint8_t *b = k->buf;
    if (k->len < HDR_CMDLINE_SIZE + 4)
        return errf(err, errlen, "%s is not a kernel: too short for a bzImage header", k->path);
    uint16_t version = le16(b + HDR_VERSION);
    if (version < 0x206)
        return errf(err, errlen, "%s: boot protocol %u.%02u is too old (need 2.06 or later)",
                    k->path, version >> 8, version & 0xff);
    unsigned setup_sects = b[HDR_SETUP_SECTS] ? b[HDR_SETUP_SECTS] : 4;
    k->pm_offset = (uint64_t)(setup_sects + 1) * 512;
    if (k->pm_offset >= k->len)
        return errf(err, errlen, "%s is not a kernel: bzImage ends inside its setup code", k->path);
    if (!(b[HDR_LOADFLAGS] & LOADED_HIGH))
        return errf(err, errlen, "%s: bzImage is not loadable at 1 MiB (zImage?)", k->path);
    if (version >= 0x20c && !(le16(b + HDR_XLOADFLAGS) & XLF_KERNEL_64))
        return errf(err, errlen, "%s: bzImage has no 64-bit entry point (xloadflags)", k->path);
    k->kind = "bzimage";
    k->mode = BOOT_LONG64;
    k->entry = LAYOUT_KERNEL_MIN + 0x200;
    k->load_start = LAYOUT_KERNEL_MIN;
    k->load_end = LAYOUT_KERNEL_MIN + (k->len - k->pm_offset);
    if (version >= 0x20a && k->len >= HDR_INIT_SIZE + 4) {
        /* The decompressor runs at pref_address and needs init_size bytes there. */
        uint64_t pref = le64(b + HDR_PREF_ADDRESS), init = le32(b + HDR_INIT_SIZE);
        if (pref > 64 * GiB)
            return errf(err, errlen, "%s is not a kernel: pref_address 0x%llx is absurd", k->path,
                        (unsigned long long)pref);
        if (pref + init > k->load_end)
            k->load_end = pref + init;
    }
    k->initrd_addr_max = le32(b + HDR_INITRD_ADDR_MAX);
    k->cmdline_max = le32(b + HDR_CMDLINE_SIZE);
    return 0;
}

static int load_bzimage(struct guest_mem *m, const struct kimage *k, char *err, size_t errlen)
{
    uint64_t size = k->len - k->pm_offset;
    uint8_t *dst = guest_mem_ptr(m, LAYOUT_KERNEL_MIN, size);
    if (!dst)
        return kimage_too_small(m, k, err, errlen);
    return kimage_copy(k, dst, k->pm_offset, size, err, errlen);
}

static bool is_bzimage(const uint8_t *b, uint64_t len)
{
    return len >= HDR_MAGIC + 4 && le16(b + HDR_BOOT_FLAG) == 0xaa55 && le32(b + HDR_MAGIC) == HDR_MAGIC_VALUE;
}

int kimage_parse(struct kimage *k, char *err, size_t errlen)
{
    if (k->len >= SELFMAG && memcmp(k->buf, ELFMAG, SELFMAG) == 0)
        return parse_elf(k, err, errlen);
    if (is_bzimage(k->buf, k->len))
        return parse_bzimage(k, err, errlen);
    return errf(err, errlen, "%s is not a kernel: neither an ELF vmlinux nor a bzImage", k->path);
}

int kimage_load(struct guest_mem *m, const struct kimage *k, char *err, size_t errlen)
{
    if (k->load_end > guest_mem_low_top(m))
        return kimage_too_small(m, k, err, errlen);
    return strcmp(k->kind, "bzimage") == 0 ? load_bzimage(m, k, err, errlen) : load_elf(m, k, err, errlen);
}

/* ---- inspection without loading (Python's vmm.kernel_image) ------------------------- */

/* The file is mapped, not read: parsing touches only the headers, so inspecting a 20 MiB
 * vmlinux before every boot costs a few page faults, not a copy. (A file truncated while
 * it is inspected would fault; kernels are not rewritten under a starting VM.) */
int vmm_kernel_inspect(const char *path, struct vmm_kernel_info *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errf(err, errlen, "cannot read kernel %s: %s", path, strerror(errno));
    struct stat st;
    int e = fstat(fd, &st) < 0 ? errno : S_ISDIR(st.st_mode) ? EISDIR : !S_ISREG(st.st_mode) ? EINVAL : 0;
    if (e) {
        close(fd);
        return errf(err, errlen, "cannot read kernel %s: %s", path, strerror(e));
    }
    void *map = NULL;
    if (st.st_size > 0) {
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED) {
            int e = errno;
            close(fd);
            return errf(err, errlen, "cannot read kernel %s: %s", path, strerror(e));
        }
    }
    close(fd);
    struct kimage k = { .buf = map, .len = (uint64_t)st.st_size, .path = path, .fd = -1 };
    int rc = kimage_parse(&k, err, errlen);
    if (map)
        munmap(map, (size_t)st.st_size);
    if (rc < 0)
        return -1;
    snprintf(out->kind, sizeof(out->kind), "%s", k.kind);
    out->entry = k.entry;
    out->load_start = k.load_start;
    out->load_end = k.load_end;
    out->cmdline_max = k.cmdline_max;
    out->initrd_addr_max = k.initrd_addr_max;
    return 0;
}
