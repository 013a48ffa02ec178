/* The host's TSC frequency, measured.
 *
 * Under TCG, QEMU's rdtsc gives the guest the host's own TSC plus an offset, so a TCG
 * guest's TSC runs at the host's TSC frequency. The guest kernel cannot learn that
 * frequency itself there (no HPET or PM timer to calibrate against, and the PIT loop
 * fails on a busy host), marks its TSC unstable and keeps time with jiffies, which lose
 * every timer tick the vCPU thread was not scheduled for: the guest's clock fell 12-35%
 * behind under load. The qemu engine measures the frequency here once and hands it to the
 * guest (tsc_early_khz=), which then keeps time with its TSC.
 *
 * The TSC and CLOCK_MONOTONIC_RAW are read together at both ends of a busy window; being
 * preempted inside the window stretches both alike, and each end is the best of a few
 * tries, so only the reads' own latency (tens of ns against milliseconds) is error. The
 * median of three windows is returned. */
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <x86intrin.h>

#include "core_api.h"

static uint64_t raw_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC_RAW, &t);
    return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

/* One TSC reading with the time it was taken: of a few tries, the one whose two clock
 * reads were closest together (a try preempted between them is worthless), stamped with
 * their midpoint. */
static void stamp(uint64_t *ns, uint64_t *tsc)
{
    uint64_t best = UINT64_MAX;
    for (int i = 0; i < 16; i++) {
        uint64_t a = raw_ns();
        uint64_t c = __rdtsc();
        uint64_t b = raw_ns();
        if (b - a < best) {
            best = b - a;
            *ns = a + (b - a) / 2;
            *tsc = c;
        }
        if (best < 200)
            break;
    }
}

static uint64_t one_window(uint64_t window_ns)
{
    uint64_t t0, c0, t1, c1;
    stamp(&t0, &c0);
    do
        t1 = raw_ns();
    while (t1 - t0 < window_ns);
    stamp(&t1, &c1);
    if (c1 <= c0 || t1 <= t0)
        return 0;
    /* cycles per ns x 10^6 = kHz; (c1 - c0) < 2^40 for any window below minutes */
    return (c1 - c0) * 1000000ull / (t1 - t0);
}

uint64_t vmm_host_tsc_khz(uint32_t window_us)
{
    if (window_us < 1000 || window_us > 1000000)
        return 0;
    uint64_t k[3];
    for (int i = 0; i < 3; i++)
        k[i] = one_window((uint64_t)window_us * 1000);
    /* median of three */
    if (k[0] > k[1]) { uint64_t t = k[0]; k[0] = k[1]; k[1] = t; }
    if (k[1] > k[2]) { uint64_t t = k[1]; k[1] = k[2]; k[2] = t; }
    if (k[0] > k[1]) { uint64_t t = k[0]; k[0] = k[1]; k[1] = t; }
    return k[1];
}
