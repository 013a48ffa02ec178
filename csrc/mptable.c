/* Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI learns its CPUs,
 * its IOAPIC and how ISA interrupts reach it. The floating pointer sits in the last KiB
 * below 640 KiB (one of the places Linux scans); the configuration table just below it. */
#include <string.h>

#include "layout.h"
#include "util.h"
#include "vm.h"

#define MP_SPEC_REV      4
#define APIC_VERSION     0x14
#define IOAPIC_VERSION   0x11
#define CPU_ENABLED      1
#define CPU_BSP          2

enum { MP_PROCESSOR = 0, MP_BUS = 1, MP_IOAPIC = 2, MP_INTSRC = 3, MP_LINTSRC = 4 };
enum { MP_INT = 0, MP_NMI = 1, MP_EXTINT = 3 };

static uint8_t checksum(const uint8_t *p, size_t n)
{
    uint8_t sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += p[i];
    return (uint8_t)(0 - sum);
}

static uint8_t *add_intsrc(uint8_t *e, int type, int irqtype, int bus_irq, int apic, int pin)
{
    memset(e, 0, 8);
    e[0] = type;
    e[1] = irqtype;
    put16(e + 2, 0);  /* polarity and trigger: conform to the bus (ISA: edge, high) */
    e[4] = 0;         /* source bus: ISA, id 0 */
    e[5] = bus_irq;
    e[6] = apic;
    e[7] = pin;
    return e + 8;
}

int mptable_write(struct guest_mem *m, int ncpus, char *err, size_t errlen)
{
    const size_t size = 44 + 20 * ncpus + 8 + 8 + 16 * 8 + 2 * 8;
    uint8_t *fp = guest_mem_ptr(m, LAYOUT_MPFP, 16);
    uint8_t *t = guest_mem_ptr(m, LAYOUT_MPTABLE, size);
    if (!fp || !t || LAYOUT_MPTABLE + size > LAYOUT_MPFP)
        return errf(err, errlen, "no room for the MP table (%d vCPUs)", ncpus);
    memset(t, 0, size);
    const int ioapic_id = ncpus; /* APIC ids 0..ncpus-1 belong to the CPUs */
    uint8_t *e = t + 44;
    for (int i = 0; i < ncpus; i++, e += 20) {
        e[0] = MP_PROCESSOR;
        e[1] = i;
        e[2] = APIC_VERSION;
        e[3] = CPU_ENABLED | (i == 0 ? CPU_BSP : 0);
        put32(e + 4, 0x600);        /* signature: family 6 */
        put32(e + 8, 0x201);        /* features: FPU, APIC */
    }
    e[0] = MP_BUS;
    memcpy(e + 2, "ISA   ", 6);
    e += 8;
    e[0] = MP_IOAPIC;
    e[1] = ioapic_id;
    e[2] = IOAPIC_VERSION;
    e[3] = 1;                       /* enabled */
    put32(e + 4, LAYOUT_IOAPIC);
    e += 8;
    /* The in-kernel irqchip routes ISA IRQ n to IOAPIC pin n (KVM's default routing). */
    for (int irq = 0; irq < 16; irq++)
        e = add_intsrc(e, MP_INTSRC, MP_INT, irq, ioapic_id, irq);
    e = add_intsrc(e, MP_LINTSRC, MP_EXTINT, 0, 0xff, 0); /* LINT0 of every CPU: ExtINT */
    e = add_intsrc(e, MP_LINTSRC, MP_NMI, 0, 0xff, 1);    /* LINT1: NMI */

    memcpy(t, "PCMP", 4);
    put16(t + 4, (uint16_t)size);
    t[6] = MP_SPEC_REV;
    memcpy(t + 8, "VMM     ", 8);
    memcpy(t + 16, "MICROVM     ", 12);
    put16(t + 34, (uint16_t)(ncpus + 2 + 16 + 2));
    put32(t + 36, LAYOUT_LAPIC);
    t[7] = checksum(t, size);

    memset(fp, 0, 16);
    memcpy(fp, "_MP_", 4);
    put32(fp + 4, LAYOUT_MPTABLE);
    fp[8] = 1;                      /* length in 16-byte units */
    fp[9] = MP_SPEC_REV;
    fp[10] = checksum(fp, 16);
    return 0;
}
