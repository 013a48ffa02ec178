/* vmm-boot: boot one kernel on the kvm engine from a compiled process, no Python.
 *
 *   vmm-boot --kernel K [--initrd I] [--mem MIB] [--cpus N] [--cmdline C]
 *            [--timeout SECONDS] [--timeline]
 *
 * Why it exists: a fresh `python -m vmm boot` spends ~30 ms in CPython's own start-up
 * before Machine() runs, as long as QEMU's whole run of a tiny guest. This program links
 * the same C core as vmm._core (csrc/, built by setup.py next to the extension) and drives
 * it through the same API (core_api.h), so a boot measured from spawn is the core's own.
 *
 * The guest's serial console goes to stdout as it comes. The end is one line on stderr,
 * `exit: <kind>[: message]`, as `python -m vmm boot` prints it. With --timeline, stdout
 * then gets the phases (the same names as vmm/timeline.py) as a table whose every row is
 * four whitespace-separated fields: phase, ms since process_start, delta ms ("-" on the
 * first row), CLOCK_MONOTONIC ns (system-wide, so a parent can set it against its spawn),
 * followed by the exit counts by reason and, if the guest wrote the boot timer, the
 * counts as they stood at that write ("exits to boot_timer": the core's exact split).
 *
 * Exit status: 0 the guest shut down (reset or power-off), 1 it did not (a KVM error, a
 * triple fault, the timeout) or the VM could not be made, 2 bad arguments or input files
 * (one `vmm-boot: error: ...` line on stderr). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core_api.h"

/* What the kvm engine puts before every command line (vmm/engines/kvm.py CMDLINE_PREFIX;
 * tests/test_launcher.py checks the two agree): console on our UART, reset through the
 * i8042 (the clean "shutdown"), a panic resets at once instead of hanging. */
#define CMDLINE_PREFIX "console=ttyS0 reboot=k panic=-1 "

#define EXIT_GUEST_FAILED 1
#define EXIT_USAGE 2

static const char usage_text[] =
    "usage: vmm-boot --kernel K [--initrd I] [--mem MIB] [--cpus N] [--cmdline C]\n"
    "                [--timeout SECONDS] [--timeline]\n"
    "Boot a kernel on the kvm engine (the vmm C core, no Python); the guest's console goes\n"
    "to stdout. Exit status: 0 the guest shut down, 1 it did not, 2 bad arguments.\n"
    "  --kernel K         vmlinux (PVH or 64-bit ELF) or bzImage\n"
    "  --initrd I         initramfs\n"
    "  --mem MIB          guest RAM in MiB (default 128; also --memory)\n"
    "  --cpus N           vCPUs (default 1)\n"
    "  --cmdline C        kernel command line, after the engine's own\n"
    "                     (\"" CMDLINE_PREFIX "\")\n"
    "  --timeout SECONDS  stop the guest after this long (default 120)\n"
    "  --timeline         print the boot phases and exit counts after the guest ends\n";

struct options {
    const char *kernel, *initrd, *cmdline;
    unsigned long mem_mib, cpus;
    double timeout_s;
    int timeline;
};

static int usage_error(const char *fmt, const char *what)
{
    fputs("vmm-boot: error: ", stderr);
    fprintf(stderr, fmt, what);
    fputs(" (see vmm-boot --help)\n", stderr);
    return -1;
}

static int parse_count(const char *flag, const char *s, unsigned long max, unsigned long *out)
{
    char *end;
    errno = 0;
    unsigned long v = strtoul(s, &end, 10);
    if (*s < '0' || *s > '9' || *end || errno || v == 0 || v > max) {
        fprintf(stderr, "vmm-boot: error: %s takes a whole number from 1 to %lu, got '%s'\n",
                flag, max, s);
        return -1;
    }
    *out = v;
    return 0;
}

/* 0 to run, 1 to exit 0 at once (--help), -1 on a bad command line (message printed). */
static int parse_args(int argc, char **argv, struct options *o)
{
    *o = (struct options){ .cmdline = "", .mem_mib = 128, .cpus = 1, .timeout_s = 120.0 };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 1;
        }
        if (!strcmp(a, "--timeline")) {
            o->timeline = 1;
            continue;
        }
        /* Every other flag takes a value, as the next argument or after '='. */
        const char *value = NULL;
        char flag[32];
        const char *eq = strchr(a, '=');
        size_t flen = eq ? (size_t)(eq - a) : strlen(a);
        if (strncmp(a, "--", 2) != 0 || flen >= sizeof(flag))
            return usage_error("unexpected argument '%s'", a);
        memcpy(flag, a, flen);
        flag[flen] = 0;
        if (eq)
            value = eq + 1;
        else if (i + 1 < argc)
            value = argv[++i];
        int known = !strcmp(flag, "--kernel") || !strcmp(flag, "--initrd") ||
                    !strcmp(flag, "--mem") || !strcmp(flag, "--memory") ||
                    !strcmp(flag, "--cpus") || !strcmp(flag, "--cmdline") ||
                    !strcmp(flag, "--timeout");
        if (!known)
            return usage_error("unknown option '%s'", flag);
        if (!value)
            return usage_error("%s needs a value", flag);
        if (!strcmp(flag, "--kernel"))
            o->kernel = value;
        else if (!strcmp(flag, "--initrd"))
            o->initrd = value;
        else if (!strcmp(flag, "--cmdline"))
            o->cmdline = value;
        else if (!strcmp(flag, "--cpus")) {
            if (parse_count(flag, value, UINT_MAX, &o->cpus) < 0)
                return -1;
        } else if (!strcmp(flag, "--timeout")) {
            char *end;
            o->timeout_s = strtod(value, &end);
            if (!*value || *end || !(o->timeout_s > 0) || o->timeout_s > 2e6) {
                fprintf(stderr, "vmm-boot: error: --timeout takes seconds above 0, got '%s'\n", value);
                return -1;
            }
        } else if (parse_count(flag, value, 1UL << 30, &o->mem_mib) < 0)
            return -1;
    }
    if (!o->kernel)
        return usage_error("%s is required", "--kernel");
    return 0;
}

/* The checks that make a bad request a usage error (2) before any VM exists, with the
 * core's own limits and kernel parser: the same messages `python -m vmm boot` gives. */
static int check_request(const struct options *o)
{
    struct vmm_core_limits lim;
    vmm_core_limits(&lim);
    if (o->cpus > lim.max_cpus) {
        fprintf(stderr, "vmm-boot: error: --cpus must be between 1 and %u, got %lu\n",
                lim.max_cpus, o->cpus);
        return -1;
    }
    if ((uint64_t)o->mem_mib << 20 < lim.min_memory_bytes) {
        fprintf(stderr, "vmm-boot: error: --mem must be at least %llu MiB, got %lu\n",
                (unsigned long long)(lim.min_memory_bytes >> 20), o->mem_mib);
        return -1;
    }
    const char *files[2][2] = { { "kernel", o->kernel }, { "initrd", o->initrd } };
    for (int i = 0; i < 2; i++) {
        struct stat st;
        if (files[i][1] && (stat(files[i][1], &st) < 0 || !S_ISREG(st.st_mode))) {
            fprintf(stderr, "vmm-boot: error: %s not found: %s\n", files[i][0], files[i][1]);
            return -1;
        }
    }
    return 0;
}

/* This process's start on CLOCK_MONOTONIC, as vmm/timeline.py computes it for Python:
 * /proc/self/stat's starttime (clock ticks since boot on CLOCK_BOOTTIME, truncated to a
 * tick) moved to CLOCK_MONOTONIC by reading both clocks now. 0 if /proc cannot be read. */
static int64_t process_start_ns(void)
{
    char buf[1024];
    FILE *f = fopen("/proc/self/stat", "re");
    if (!f)
        return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = 0;
    char *p = strrchr(buf, ')'); /* comm may hold spaces and ')': fields count from the last */
    if (!p)
        return 0;
    p += 2; /* field 3 */
    for (int field = 3; field < 22 && p; field++) {
        p = strchr(p, ' ');
        if (p)
            p++;
    }
    long hz = sysconf(_SC_CLK_TCK);
    if (!p || hz <= 0)
        return 0;
    unsigned long long ticks = strtoull(p, NULL, 10);
    struct timespec boot, mono;
    clock_gettime(CLOCK_BOOTTIME, &boot);
    clock_gettime(CLOCK_MONOTONIC, &mono);
    int64_t boot_ns = (int64_t)boot.tv_sec * 1000000000LL + boot.tv_nsec;
    int64_t mono_ns = (int64_t)mono.tv_sec * 1000000000LL + mono.tv_nsec;
    int64_t age = boot_ns - (int64_t)(ticks * (1000000000ULL / (unsigned long long)hz));
    return mono_ns - age;
}

static int64_t monotonic_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const char *exit_kind_name(int kind)
{
    switch (kind) {
    case VMM_EXIT_SHUTDOWN: return "shutdown";
    case VMM_EXIT_HOST_STOP: return "host-stop";
    case VMM_EXIT_ERROR: return "error";
    default: return "running";
    }
}

struct phase {
    const char *name;
    int64_t ns;
};

/* A header, then one "reason count" row per nonzero count. */
static void print_counts(const char *header, const struct vmm_exit_stats *s)
{
    const struct { const char *name; uint64_t n; } counts[] = {
        { "io", s->io }, { "mmio", s->mmio }, { "hlt", s->hlt }, { "shutdown", s->shutdown },
        { "internal_error", s->internal_error }, { "fail_entry", s->fail_entry },
        { "system_event", s->system_event }, { "intr", s->intr }, { "other", s->other },
        { "unclaimed_io", s->unclaimed_io }, { "unclaimed_mmio", s->unclaimed_mmio },
    };
    printf("\n%s\n", header);
    for (size_t i = 0; i < sizeof(counts) / sizeof(counts[0]); i++)
        if (counts[i].n)
            printf("%-20s %8llu\n", counts[i].name, (unsigned long long)counts[i].n);
}

static void print_timeline(int64_t process_start, int64_t main_entered, struct vmm_vm *vm)
{
    struct vmm_timeline t;
    vmm_vm_timeline(vm, &t);
    /* Already in time order for this engine (a kvm boot passes them in this order); a
     * phase not reached is left out, never printed as zero. */
    const struct phase phases[] = {
        { "process_start", process_start }, { "machine_created", main_entered },
        { "vm_created", t.vm_created }, { "kernel_loaded", t.kernel_loaded },
        { "first_vcpu_entry", t.first_vcpu_entry }, { "boot_timer", t.boot_timer },
        { "exit", t.exit },
    };
    int64_t base = process_start ? process_start : main_entered, prev = 0;
    printf("\nphase                 ms since start   delta ms   monotonic ns\n");
    for (size_t i = 0; i < sizeof(phases) / sizeof(phases[0]); i++) {
        if (!phases[i].ns)
            continue;
        double ms = (phases[i].ns - base) / 1e6;
        if (prev)
            printf("%-20s %15.3f %10.3f %14lld\n", phases[i].name, ms, (phases[i].ns - prev) / 1e6,
                   (long long)phases[i].ns);
        else
            printf("%-20s %15.3f %10s %14lld\n", phases[i].name, ms, "-", (long long)phases[i].ns);
        prev = phases[i].ns;
    }
    struct vmm_exit_stats s;
    vmm_vm_stats(vm, &s);
    print_counts("exit reason           count", &s);
    if (vmm_vm_stats_at_boot_timer(vm, &s) == 0)
        print_counts("exits to boot_timer   count", &s);
    fflush(stdout);
}

/* The core declares this for devices served by Python (vmm._core supplies it through
 * cffi). This program adds none, so no vCPU can reach it; if one ever did, stopping
 * loudly beats inventing a value for the guest. */
uint64_t vmm_python_device_access(void *handle, uint64_t offset, uint32_t size, int is_write,
                                  uint64_t value)
{
    fputs("vmm-boot: internal error: a Python device was accessed\n", stderr);
    abort();
}

int main(int argc, char **argv)
{
    int64_t main_entered = monotonic_ns();
    struct options o;
    int rc = parse_args(argc, argv, &o);
    if (rc != 0)
        return rc > 0 ? 0 : EXIT_USAGE;
    if (check_request(&o) < 0)
        return EXIT_USAGE;

    char err[1024] = "";
    struct vmm_vm_config cfg = {
        .cpus = (uint32_t)o.cpus, .memory_bytes = (uint64_t)o.mem_mib << 20,
        .hugepages = 0, .console_fd = STDOUT_FILENO,
        /* confined as the Python engine's VMs are (it has no Python devices to exempt) */
        .seccomp = VMM_SECCOMP_VCPU | VMM_SECCOMP_IO,
    };
    struct vmm_vm *vm = vmm_vm_create(&cfg, err, sizeof(err));
    if (!vm) {
        fprintf(stderr, "vmm-boot: error: %s\n", err);
        return EXIT_GUEST_FAILED;
    }
    char *cmdline = malloc(sizeof(CMDLINE_PREFIX) + strlen(o.cmdline));
    if (!cmdline) {
        fputs("vmm-boot: error: out of memory\n", stderr);
        return EXIT_GUEST_FAILED;
    }
    strcpy(cmdline, CMDLINE_PREFIX);
    strcat(cmdline, o.cmdline);
    if (vmm_vm_load_kernel(vm, o.kernel, o.initrd, cmdline, err, sizeof(err)) < 0) {
        /* The file is not a kernel, or does not fit: the input is what must change. */
        fprintf(stderr, "vmm-boot: error: %s\n", err);
        return EXIT_USAGE;
    }
    if (vmm_vm_start(vm, err, sizeof(err)) < 0) {
        fprintf(stderr, "vmm-boot: error: %s\n", err);
        return EXIT_GUEST_FAILED;
    }
    int timed_out = 0;
    if (!vmm_vm_wait(vm, (int)(o.timeout_s * 1000))) {
        timed_out = 1;
        vmm_vm_stop(vm);
        vmm_vm_wait(vm, -1);
    }
    struct vmm_exit_info ex;
    vmm_vm_exit_info(vm, &ex);
    if (o.timeline)
        print_timeline(process_start_ns(), main_entered, vm);
    if (timed_out)
        fprintf(stderr, "exit: %s: timed out after %g s\n", exit_kind_name(ex.kind), o.timeout_s);
    else
        fprintf(stderr, "exit: %s%s%s\n", exit_kind_name(ex.kind), ex.message[0] ? ": " : "",
                ex.message);
    /* Every vCPU thread has ended and the console is written: the process's exit releases
     * the VM, its memory and fds at once, so vmm_vm_destroy's orderly teardown (which a
     * long-lived Python process needs) would only add to the measured exit. */
    return ex.kind == VMM_EXIT_SHUTDOWN ? 0 : EXIT_GUEST_FAILED;
}
