/* One x86 vCPU's state at the kernel entry: CPUID, MSRs, FPU, LAPIC, segment and control
 * registers for either the 64-bit boot protocol or the PVH 32-bit entry. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>

#include "layout.h"
#include "util.h"
#include "vm.h"

#define CR0_PE 0x1ULL
#define CR0_ET 0x10ULL
#define CR0_NE 0x20ULL
#define CR0_PG 0x80000000ULL
#define CR4_PAE 0x20ULL
#define EFER_LME 0x100ULL
#define EFER_LMA 0x400ULL

#define CPUID_HYPERVISOR (1u << 31)
#define CPUID_TSC_DEADLINE (1u << 24)

/* ---- CPUID ------------------------------------------------------------------------ */

static int set_cpuid(struct vmm_vm *vm, struct vcpu *c, char *err, size_t errlen)
{
    size_t size = sizeof(struct kvm_cpuid2) + vm->cpuid->nent * sizeof(struct kvm_cpuid_entry2);
    struct kvm_cpuid2 *cp = malloc(size);
    if (!cp)
        return errf(err, errlen, "out of memory");
    memcpy(cp, vm->cpuid, size);
    uint32_t apic_id = c->index;
    for (uint32_t i = 0; i < cp->nent; i++) {
        struct kvm_cpuid_entry2 *e = &cp->entries[i];
        switch (e->function) {
        case 1:
            e->ebx = (e->ebx & 0x0000ffff) | (vm->ncpus << 16) | (apic_id << 24);
            e->ecx |= CPUID_HYPERVISOR;
            if (vm->tsc_deadline)
                e->ecx |= CPUID_TSC_DEADLINE;
            break;
        case 0xb:
        case 0x1f:
            e->edx = apic_id; /* x2APIC id, every sub-leaf */
            break;
        }
    }
    int rc = ioctl(c->fd, KVM_SET_CPUID2, cp);
    free(cp);
    if (rc < 0)
        return errf(err, errlen, "KVM_SET_CPUID2 on vCPU %d: %s", c->index, strerror(errno));
    return 0;
}

/* ---- MSRs ------------------------------------------------------------------------- */

static bool msr_supported(const struct vmm_vm *vm, uint32_t index)
{
    for (uint32_t i = 0; i < vm->msrs->nmsrs; i++)
        if (vm->msrs->indices[i] == index)
            return true;
    return false;
}

static int set_msrs(struct vmm_vm *vm, struct vcpu *c, char *err, size_t errlen)
{
    static const struct { uint32_t index; uint64_t value; } wanted[] = {
        { 0x174, 0 }, { 0x175, 0 }, { 0x176, 0 },       /* SYSENTER_CS/ESP/EIP */
        { 0xc0000081, 0 }, { 0xc0000082, 0 },           /* STAR, LSTAR */
        { 0xc0000083, 0 }, { 0xc0000084, 0 },           /* CSTAR, SYSCALL_MASK */
        { 0xc0000102, 0 },                              /* KERNEL_GS_BASE */
        { 0x10, 0 },                                    /* TSC */
        { 0x1a0, 1 },                                   /* MISC_ENABLE: fast strings */
        { 0x2ff, (1 << 11) | 6 },                       /* MTRRdefType: on, write-back */
    };
    struct {
        struct kvm_msrs hdr;
        struct kvm_msr_entry e[sizeof(wanted) / sizeof(wanted[0])];
    } msrs;
    memset(&msrs, 0, sizeof(msrs));
    uint32_t n = 0;
    /* Only MSRs KVM says it handles: setting others fails (QEMU -cpu host trips on 0x10a). */
    for (size_t i = 0; i < sizeof(wanted) / sizeof(wanted[0]); i++) {
        if (!msr_supported(vm, wanted[i].index))
            continue;
        msrs.e[n].index = wanted[i].index;
        msrs.e[n].data = wanted[i].value;
        n++;
    }
    msrs.hdr.nmsrs = n;
    int rc = ioctl(c->fd, KVM_SET_MSRS, &msrs);
    if (rc < 0)
        return errf(err, errlen, "KVM_SET_MSRS on vCPU %d: %s", c->index, strerror(errno));
    if ((uint32_t)rc != n)
        return errf(err, errlen, "KVM refused to set MSR 0x%x on vCPU %d", msrs.e[rc].index, c->index);
    return 0;
}

/* ---- registers -------------------------------------------------------------------- */

static struct kvm_segment segment(uint16_t sel, uint16_t flags, uint64_t base, uint32_t limit)
{
    bool g = (flags >> 15) & 1;
    return (struct kvm_segment){
        .base = base,
        .limit = g ? (limit << 12) | 0xfff : limit,
        .selector = sel,
        .type = flags & 0xf,
        .present = (flags >> 7) & 1,
        .dpl = (flags >> 5) & 3,
        .db = (flags >> 14) & 1,
        .s = (flags >> 4) & 1,
        .l = (flags >> 13) & 1,
        .g = g,
        .avl = (flags >> 12) & 1,
    };
}

static int set_sregs(struct vmm_vm *vm, struct vcpu *c, char *err, size_t errlen)
{
    struct kvm_sregs s;
    if (ioctl(c->fd, KVM_GET_SREGS, &s) < 0)
        return errf(err, errlen, "KVM_GET_SREGS: %s", strerror(errno));
    bool pvh = vm->boot.mode == BOOT_PVH32;
    /* Same descriptors as the GDT x86_boot.c wrote, so a reload of a selector is a no-op. */
    s.cs = segment(SEL_CODE, pvh ? 0xc09b : 0xa09b, 0, 0xfffff);
    s.ds = s.es = s.fs = s.gs = s.ss = segment(SEL_DATA, 0xc093, 0, 0xfffff);
    s.tr = segment(SEL_TSS, 0x808b, 0, 0x67);
    s.gdt.base = LAYOUT_GDT;
    s.gdt.limit = 8 * LAYOUT_GDT_ENTRIES - 1;
    s.idt.base = LAYOUT_IDT;
    s.idt.limit = 7;
    if (pvh) {
        /* PVH ABI: protected mode, paging off. */
        s.cr0 = CR0_PE | CR0_ET;
        s.cr4 = 0;
        s.efer = 0;
        s.cr3 = 0;
    } else {
        /* 64-bit boot protocol: long mode, identity-mapped page tables. */
        s.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG;
        s.cr3 = LAYOUT_PML4;
        s.cr4 = CR4_PAE;
        s.efer = EFER_LME | EFER_LMA;
    }
    if (ioctl(c->fd, KVM_SET_SREGS, &s) < 0)
        return errf(err, errlen, "KVM_SET_SREGS on vCPU %d: %s", c->index, strerror(errno));
    return 0;
}

static int set_regs(struct vmm_vm *vm, struct vcpu *c, char *err, size_t errlen)
{
    struct kvm_regs r;
    memset(&r, 0, sizeof(r));
    r.rflags = 0x2; /* bit 1 is always set; interrupts off */
    r.rip = vm->boot.entry;
    r.rsp = r.rbp = LAYOUT_STACK_TOP;
    if (vm->boot.mode == BOOT_PVH32)
        r.rbx = vm->boot.boot_arg;
    else
        r.rsi = vm->boot.boot_arg;
    if (ioctl(c->fd, KVM_SET_REGS, &r) < 0)
        return errf(err, errlen, "KVM_SET_REGS on vCPU %d: %s", c->index, strerror(errno));
    return 0;
}

static int set_fpu(struct vcpu *c, char *err, size_t errlen)
{
    struct kvm_fpu f;
    memset(&f, 0, sizeof(f));
    f.fcw = 0x37f;    /* x87 reset value */
    f.mxcsr = 0x1f80; /* SSE reset value: all exceptions masked */
    if (ioctl(c->fd, KVM_SET_FPU, &f) < 0)
        return errf(err, errlen, "KVM_SET_FPU on vCPU %d: %s", c->index, strerror(errno));
    return 0;
}

/* LINT0 as ExtINT (the 8259 PIC's output) and LINT1 as NMI, as a PC's BIOS leaves them. */
static int set_lapic(struct vcpu *c, char *err, size_t errlen)
{
    struct kvm_lapic_state l;
    if (ioctl(c->fd, KVM_GET_LAPIC, &l) < 0)
        return errf(err, errlen, "KVM_GET_LAPIC: %s", strerror(errno));
    uint32_t lint0, lint1;
    memcpy(&lint0, l.regs + 0x350, 4);
    memcpy(&lint1, l.regs + 0x360, 4);
    lint0 = (lint0 & ~0x700u) | (7u << 8);
    lint1 = (lint1 & ~0x700u) | (4u << 8);
    memcpy(l.regs + 0x350, &lint0, 4);
    memcpy(l.regs + 0x360, &lint1, 4);
    if (ioctl(c->fd, KVM_SET_LAPIC, &l) < 0)
        return errf(err, errlen, "KVM_SET_LAPIC on vCPU %d: %s", c->index, strerror(errno));
    return 0;
}

int x86_setup_vcpu(struct vmm_vm *vm, struct vcpu *c, char *err, size_t errlen)
{
    if (set_cpuid(vm, c, err, errlen) < 0 || set_msrs(vm, c, err, errlen) < 0 ||
        set_sregs(vm, c, err, errlen) < 0 || set_regs(vm, c, err, errlen) < 0 ||
        set_fpu(c, err, errlen) < 0 || set_lapic(c, err, errlen) < 0)
        return -1;
    return 0;
}

void x86_describe_vcpu(struct vcpu *c, char *buf, size_t len)
{
    struct kvm_regs r;
    struct kvm_sregs s;
    if (ioctl(c->fd, KVM_GET_REGS, &r) < 0 || ioctl(c->fd, KVM_GET_SREGS, &s) < 0) {
        snprintf(buf, len, "(registers unavailable: %s)", strerror(errno));
        return;
    }
    /* On AMD SVM, KVM resets the vCPU (clears the VMCB) before it reports a triple fault,
     * so what it hands back is the power-on state, not the faulting one. Printing those
     * registers would point the user at 0xfff0 for a fault that happened elsewhere. */
    if (r.rip == 0xfff0 && s.cs.selector == 0xf000 && s.cs.base == 0xffff0000 && !(s.cr0 & 1)) {
        snprintf(buf, len, "registers unavailable (KVM had already reset the vCPU, as it does "
                 "on AMD SVM)");
        return;
    }
    snprintf(buf, len,
             "rip=0x%llx rsp=0x%llx rflags=0x%llx rax=0x%llx cr0=0x%llx cr2=0x%llx cr3=0x%llx "
             "cr4=0x%llx efer=0x%llx cs=0x%x(base=0x%llx l=%u db=%u) ss=0x%x",
             (unsigned long long)r.rip, (unsigned long long)r.rsp, (unsigned long long)r.rflags,
             (unsigned long long)r.rax, (unsigned long long)s.cr0, (unsigned long long)s.cr2,
             (unsigned long long)s.cr3, (unsigned long long)s.cr4, (unsigned long long)s.efer,
             s.cs.selector, (unsigned long long)s.cs.base, s.cs.l, s.cs.db, s.ss.selector);
}
