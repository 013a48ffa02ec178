/* The C core's interface to Python (vmm._core). Only what sits between the cffi markers is
 * visible to Python; keep it plain C declarations (no macros, no includes).
 *
 * Lifecycle of a VM:  vmm_vm_create -> [vmm_vm_add_python_device | vmm_vm_add_device]*
 *   -> vmm_vm_load_kernel
 *   -> vmm_vm_start -> vmm_vm_wait / vmm_vm_stop / vmm_vm_serial_input -> vmm_vm_destroy.
 * Functions that can fail return 0 (or a pointer) on success and -1 (or NULL) on failure
 * with a one-line message in err[errlen]. Every call is thread-safe against the vCPU
 * threads; vmm_vm_destroy must be the last call on a VM. */
#ifndef VMM_CORE_API_H
#define VMM_CORE_API_H
#include <stdint.h>
#include <stddef.h>

/* cffi-begin */
const char *vmm_core_version(void);

/* --- /dev/kvm probe ---------------------------------------------------------------- */
struct vmm_kvm_cap {
    char name[32];     /* e.g. "IRQCHIP" (KVM_CAP_IRQCHIP) */
    int required;      /* 1 if vmm_vm_create refuses to run without it */
    int value;         /* KVM_CHECK_EXTENSION result (0 = absent) */
};

struct vmm_kvm_info {
    int api_version;   /* KVM_GET_API_VERSION; must be 12 */
    int vcpu_mmap_size;
    int ncaps;
    struct vmm_kvm_cap caps[24];
};

/* 0 if /dev/kvm is usable (every required capability present), else -1 and err names the
 * first problem. info is filled as far as the probe got. */
int vmm_kvm_probe(struct vmm_kvm_info *info, char *err, size_t errlen);

/* --- a VM -------------------------------------------------------------------------- */
struct vmm_vm;

struct vmm_vm_config {
    uint32_t cpus;          /* 1..64 */
    uint64_t memory_bytes;  /* guest RAM; above 3 GiB the rest is mapped from 4 GiB up */
    int hugepages;          /* back RAM with MAP_HUGETLB (2 MiB pages) */
    int console_fd;         /* serial output is written here (the core dup()s it and closes
                               its copy when the last vCPU thread ends); -1 = discard */
    int seccomp;            /* enum vmm_seccomp_threads: which threads run under seccomp
                               filters once they start (csrc/seccomp.h); a forbidden call
                               ends the process with a one-line message on stderr */
    int shared_memory;      /* RAM is a sealed memfd mapped MAP_SHARED (a vhost-user back
                               end maps it too); 0: private anonymous memory */
};

enum vmm_seccomp_threads {
    VMM_SECCOMP_VCPU = 1,   /* the vCPU threads (not with Python devices: they run Python) */
    VMM_SECCOMP_IO = 2      /* the device I/O thread */
};

enum vmm_exit_kind {
    VMM_EXIT_RUNNING = 0,   /* not ended (yet) */
    VMM_EXIT_SHUTDOWN = 1,  /* the guest reset (i8042 0xFE) or powered off */
    VMM_EXIT_HOST_STOP = 2, /* vmm_vm_stop() */
    VMM_EXIT_ERROR = 3      /* KVM error, emulation failure, triple fault, failed entry */
};

struct vmm_exit_info {
    int kind;               /* enum vmm_exit_kind */
    int code;               /* KVM exit reason for errors, else 0 */
    char message[1024];     /* what happened; for errors with the vCPU's registers */
};

/* Exit counts by reason (cumulative over all vCPUs). */
struct vmm_exit_stats {
    uint64_t io;
    uint64_t mmio;
    uint64_t hlt;
    uint64_t shutdown;
    uint64_t internal_error;
    uint64_t fail_entry;
    uint64_t system_event;
    uint64_t intr;
    uint64_t other;
    uint64_t unclaimed_io;
    uint64_t unclaimed_mmio;
};

/* CLOCK_MONOTONIC ns; 0 = not reached. */
struct vmm_timeline {
    int64_t vm_created;
    int64_t kernel_loaded;
    int64_t first_vcpu_entry;
    int64_t boot_timer;
    int64_t exit;
};

struct vmm_e820_entry {
    uint64_t addr;
    uint64_t size;
    uint32_t type;          /* 1 = RAM, 2 = reserved */
};

/* Where vmm_vm_load_kernel put things. */
struct vmm_boot_info {
    char kind[16];          /* "elf-pvh", "elf-64" or "bzimage" */
    uint64_t entry;         /* guest-physical entry point */
    uint64_t boot_arg;      /* zero page (rsi) or PVH start info (ebx) */
    uint64_t kernel_end;
    uint64_t initrd_addr;
    uint64_t initrd_size;
};

struct vmm_vm *vmm_vm_create(const struct vmm_vm_config *cfg, char *err, size_t errlen);
/* kernel: ELF vmlinux (PVH note -> 32-bit PVH entry, else 64-bit entry) or bzImage.
 * initrd may be NULL. cmdline is passed as is. */
int vmm_vm_load_kernel(struct vmm_vm *vm, const char *kernel, const char *initrd,
                       const char *cmdline, char *err, size_t errlen);
int vmm_vm_start(struct vmm_vm *vm, char *err, size_t errlen);
/* 1 once every vCPU thread has ended, 0 after timeout_ms (-1 = no timeout). */
int vmm_vm_wait(struct vmm_vm *vm, int timeout_ms);
/* Ask the VM to end (host stop); returns at once; vmm_vm_wait tells when it has. */
void vmm_vm_stop(struct vmm_vm *vm);
/* paused=1: stop running guest code; returns once every vCPU is out of the guest.
 * paused=0: let them run again. Devices keep serving host-side I/O meanwhile. */
int vmm_vm_pause(struct vmm_vm *vm, int paused, char *err, size_t errlen);
void vmm_vm_exit_info(struct vmm_vm *vm, struct vmm_exit_info *out);
void vmm_vm_stats(struct vmm_vm *vm, struct vmm_exit_stats *out);
void vmm_vm_timeline(struct vmm_vm *vm, struct vmm_timeline *out);
/* The exit counts as they stood when the guest first wrote the boot timer (timeline
 * boot_timer), that write's own exit included: 0, or -1 (out zeroed) if it has not. */
int vmm_vm_stats_at_boot_timer(struct vmm_vm *vm, struct vmm_exit_stats *out);
/* -1 if no kernel is loaded yet. */
int vmm_vm_boot_info(struct vmm_vm *vm, struct vmm_boot_info *out);
/* The e820 map the VMM gave the guest; returns the number of entries (<= max). */
int vmm_vm_e820(struct vmm_vm *vm, struct vmm_e820_entry *out, int max);
/* Queue bytes for the guest's serial console; returns how many fit in the RX FIFO. */
int vmm_vm_serial_input(struct vmm_vm *vm, const uint8_t *data, size_t len);
/* Stop (if running), join every thread, close every fd, unmap memory, free vm. */
void vmm_vm_destroy(struct vmm_vm *vm);

/* A port (is_mmio = 0) or MMIO range served by Python: accesses call
 * vmm_python_device_access(handle, ...) on the vCPU thread. Only before vmm_vm_start. */
int vmm_vm_add_python_device(struct vmm_vm *vm, int is_mmio, uint64_t base, uint64_t len,
                             void *handle, char *err, size_t errlen);
/* Implemented in Python (cffi extern "Python+C"): offset is relative to the range base;
 * for a read, return the value (little-endian, size bytes); for a write, value holds it. */
/* python-callback */ uint64_t vmm_python_device_access(void *handle, uint64_t offset, uint32_t size,
                                                        int is_write, uint64_t value);

/* Tests only: a port whose writes make the vCPU thread (on_io_thread = 0) or the device
 * I/O thread (1) issue system call nr with zero arguments, to see the seccomp filter end
 * the process. Only before vmm_vm_start. */
int vmm_vm_add_seccomp_probe(struct vmm_vm *vm, uint16_t port, int on_io_thread, long nr,
                             char *err, size_t errlen);
/* The x86_64 name of system call nr as the seccomp report gives it; NULL if unknown. */
const char *vmm_seccomp_syscall_name(long nr);

/* --- kernel files and the core's limits (the one source Python reads them from) ------- */
struct vmm_kernel_info {
    char kind[16];            /* "elf-pvh", "elf-64" or "bzimage" */
    uint64_t entry;           /* guest-physical entry point */
    uint64_t load_start;      /* lowest guest-physical byte loaded */
    uint64_t load_end;        /* highest guest-physical byte the kernel needs + 1 */
    uint64_t cmdline_max;     /* longest command line the kernel takes, without the NUL */
    uint64_t initrd_addr_max; /* highest address the initrd may end at (inclusive) */
};
/* What the loader would learn from a kernel file, without loading it (no KVM, no guest
 * memory): the same parser and the same errors ("<path> is not a kernel: ..."). */
int vmm_kernel_inspect(const char *path, struct vmm_kernel_info *out, char *err, size_t errlen);

struct vmm_core_limits {
    uint32_t max_cpus;            /* vCPUs per VM (the core's fixed table; KVM may allow fewer) */
    uint32_t max_devices;         /* virtio-mmio devices per VM (one per free ISA IRQ) */
    uint64_t min_memory_bytes;    /* smallest guest RAM vmm_vm_create takes */
    uint64_t mmio_hole;           /* RAM below 4 GiB ends here (the 32-bit MMIO hole starts) */
    uint64_t high_ram_base;       /* RAM beyond mmio_hole continues from here (4 GiB) */
    uint64_t kernel_min;          /* no kernel segment may load below this */
    uint64_t cmdline_size;        /* Linux's COMMAND_LINE_SIZE, with the NUL */
    uint64_t virtio_mmio_base;    /* device i's window is at base + i * window */
    uint64_t virtio_mmio_window;
};
void vmm_core_limits(struct vmm_core_limits *out);

/* The host's TSC frequency in kHz, measured over three windows of window_us (1000 to
 * 1000000) microseconds (csrc/host_tsc.c says why the qemu engine wants it); 0 if the
 * window is out of range or the TSC went backwards. */
uint64_t vmm_host_tsc_khz(uint32_t window_us);

/* Load kernel (+initrd, cmdline) into a scratch memory of memory_bytes without KVM:
 * the same loader and checks as vmm_vm_load_kernel, for tests with hostile files. */
int vmm_kernel_load_check(const char *kernel, const char *initrd, const char *cmdline,
                          uint64_t memory_bytes, char *err, size_t errlen);

/* virtio */
/* Devices (csrc/virtio/). Every constructor returns NULL and writes a one-line reason
 * into err on failure. A device is freed with vmm_vdev_free(), after any server using it
 * has been stopped. */
struct vmm_vdev;
struct vmm_vdev_counters {
    uint64_t requests;      /* blk: requests; vsock: packets from the guest; net: frames out */
    uint64_t bytes_read;    /* blk: read from the disk; vsock/net: bytes delivered to the guest */
    uint64_t bytes_written; /* blk: written to the disk; vsock/net: bytes taken from the guest */
    uint64_t frames_in;     /* net: frames to the guest; vsock: packets to the guest */
    uint64_t frames_out;    /* net: frames from the guest */
    uint64_t errors;        /* requests that failed (IOERR, UNSUPP, dropped frames, ...) */
    uint64_t rejected;      /* descriptor chains returned unused because they were invalid */
    uint64_t interrupts;    /* interrupts raised to the guest */
    uint64_t connections;   /* vsock: connections established */
    uint64_t resets;        /* vsock: RST packets sent to the guest */
    uint64_t budget_yields; /* notifies/polls that stopped at the work budget and re-armed */
};
struct vmm_vdev *vmm_blk_new(const char *path, int read_only, const char *serial, char *err, size_t errlen);
struct vmm_vdev *vmm_vsock_new(uint64_t guest_cid, const char *uds_path, char *err, size_t errlen);
/* kind 0: Unix stream socket with 4-byte big-endian length framing; 1: tap fd. The device
 * owns backend_fd from then on (also on failure). mac: 6 bytes. */
struct vmm_vdev *vmm_net_new(int backend_fd, int kind, const uint8_t *mac, char *err, size_t errlen);
int vmm_net_open_tap(const char *name, char *err, size_t errlen);
void vmm_vdev_free(struct vmm_vdev *dev);
const char *vmm_vdev_name(struct vmm_vdev *dev);
void vmm_vdev_counters(struct vmm_vdev *dev, struct vmm_vdev_counters *out);
const char *vmm_vdev_broken(struct vmm_vdev *dev);
uint64_t vmm_vdev_features(struct vmm_vdev *dev);
uint32_t vmm_vdev_config_read(struct vmm_vdev *dev, uint32_t off, uint8_t *buf, uint32_t len);
void vmm_vdev_reset(struct vmm_vdev *dev);
/* A device serves one transport at a time (the test transport, a vhost-user server or a
 * VM's virtio-mmio): each refuses a device bound to another, with a message naming both.
 * Test transport (csrc/virtio/test_transport.c): guest memory is the caller's buffer mem
 * (size bytes at guest address gpa); features are what the "driver" accepts; notify runs
 * the device in the caller's thread; interrupts are counted per queue. Attaching again to
 * a device it already holds starts over with the new memory. test_add_memory adds one
 * more region (up to 8 in all) to the attached memory, for layouts with holes. */
int vmm_vdev_test_attach(struct vmm_vdev *dev, uint8_t *mem, uint64_t gpa, uint64_t size, uint64_t features, char *err, size_t errlen);
int vmm_vdev_test_add_memory(struct vmm_vdev *dev, uint8_t *mem, uint64_t gpa, uint64_t size, char *err, size_t errlen);
int vmm_vdev_test_queue(struct vmm_vdev *dev, int qi, uint32_t size, uint64_t desc, uint64_t avail, uint64_t used, char *err, size_t errlen);
int vmm_vdev_test_notify(struct vmm_vdev *dev, int qi);
uint64_t vmm_vdev_test_irqs(struct vmm_vdev *dev, int qi);
/* vhost-user backend server for one device on a Unix socket path. Every server of the
 * process (the back-ends of a VM) is served by one event loop thread, which also serves
 * the devices' own backend fds (vsock's sockets, net's socket); it exists while a server
 * does. */
struct vmm_vhost_user;
struct vmm_vhost_user *vmm_vhost_user_start(struct vmm_vdev *dev, const char *path, char *err, size_t errlen);
/* 1 while a front-end (QEMU) is connected. */
int vmm_vhost_user_connected(struct vmm_vhost_user *srv);
/* Last protocol error that closed a connection, or NULL. */
const char *vmm_vhost_user_error(struct vmm_vhost_user *srv);
void vmm_vhost_user_stop(struct vmm_vhost_user *srv);
/* vhost-user front end (csrc/virtio/vhost_user_front.c): a device whose queues an external
 * vhost-user back end serves, attached to a VM with vmm_vm_add_device like any other (the
 * VM needs shared_memory). Connects to the back end listening at path and negotiates
 * features now (each reply waited for at most reply_timeout_ms; 0: the default); the
 * driver sees device_id, config (config_len <= 256 bytes, ours: the back end's is not
 * asked), num_queues (1..4) queues of at most queue_size (a power of 2 <= 32768). */
struct vmm_vdev *vmm_vhost_user_front_new(uint32_t device_id, const char *path, const uint8_t *config,
                                          uint32_t config_len, int num_queues, uint32_t queue_size,
                                          int reply_timeout_ms, char *err, size_t errlen);
/* Tests and fuzzers, with no VM: binds dev to guest memory from mem_fd (mem_size bytes at
 * guest address 0, mapped shared), sets every queue up (queue_size entries, rings at
 * fixed places), then runs what the transport's DRIVER_OK and a reset make the front end
 * do, on the caller's thread, and unbinds. 0, or -1 with the reason the device broke. */
int vmm_vhost_user_front_test_cycle(struct vmm_vdev *dev, int mem_fd, uint64_t mem_size, uint64_t features,
                                    uint32_t queue_size, char *err, size_t errlen);
/* end virtio */

/* --- virtio devices of a KVM VM (virtio-mmio transport, csrc/virtio/mmio.c) -------------- */
enum vmm_vdev_flags {
    VMM_VDEV_NO_IOEVENTFD = 1,  /* queue notifies as MMIO exits (tests; KVM without ioeventfd) */
    VMM_VDEV_NO_IRQFD = 2       /* interrupts through KVM_IRQ_LINE (tests; KVM without irqfd) */
};
struct vmm_virtio_mmio_info {
    uint64_t base;            /* the device's MMIO window, guest-physical */
    uint64_t size;            /* 4 KiB */
    int irq;                  /* its ISA IRQ (= GSI) */
    int ioeventfd;            /* 1: QueueNotify writes are ioeventfds (no exit to the VMM) */
    int irqfd;                /* 1: interrupts through KVM_IRQFD; 0: KVM_IRQ_LINE */
    uint32_t status;          /* the driver's Status register */
    uint32_t interrupt_status;
    uint64_t notify_exits;    /* QueueNotify writes that exited to the VMM */
    uint64_t notify_events;   /* notifies the device I/O thread served */
    uint64_t interrupts;      /* edges raised */
    uint64_t bad_accesses;    /* ignored guest accesses (bad width, read-only, bad queue) */
};
/* Attaches dev to vm behind a virtio-mmio window (before vmm_vm_start); the device must
 * not be served by anything else, and must outlive vm. Devices get windows and IRQs in
 * the order they are added; the guest learns them from `virtio_mmio.device=4K@<base>:<irq>`
 * on its command line, which the caller builds from out. flags: enum vmm_vdev_flags. */
int vmm_vm_add_device(struct vmm_vm *vm, struct vmm_vdev *dev, int flags,
                      struct vmm_virtio_mmio_info *out, char *err, size_t errlen);
/* Where the index-th added device will sit (base, size, irq; the rest zero), without a VM:
 * what the kernel command line announces. -1 past the core's device limit. */
int vmm_virtio_mmio_slot(int index, struct vmm_virtio_mmio_info *out);
/* The index-th added device's transport state; -1 if there is none. */
int vmm_vm_device_info(struct vmm_vm *vm, int index, struct vmm_virtio_mmio_info *out);
/* --- egress policy of virtio-net (csrc/virtio/net_policy.c) --------------------------- */
/* One rule: frames whose IP destination is in addr/prefix (and, if proto is set, whose
 * transport is proto with a destination port in [port_lo, port_hi]) get action. Rules are
 * tried in order, the first match decides, and a frame no rule matches is denied. */
enum vmm_net_action { VMM_NET_DENY = 0, VMM_NET_ALLOW = 1 };
struct vmm_net_rule {
    uint8_t action;       /* enum vmm_net_action */
    uint8_t family;       /* 4 or 6 */
    uint8_t prefix;       /* 0..32 or 0..128 */
    uint8_t proto;        /* 0 = any transport; 6 = TCP, 17 = UDP */
    uint8_t addr[16];     /* network address, big-endian; IPv4 in the first 4 bytes */
    uint16_t port_lo;     /* with proto set: destination ports port_lo..port_hi */
    uint16_t port_hi;
    /* NULL: a CIDR rule. Else a domain rule ("name" or "*.suffix": lower case, punycode,
     * no trailing dot; copied): its addresses are those DNS answers for a matching name
     * taught the policy (vmm_net_policy_observe), and family, prefix and addr are unused. */
    const char *domain;
};
enum vmm_net_verdict {
    VMM_NET_PASS = 0,      /* send the frame on */
    VMM_NET_DENIED = 1,    /* drop it (and inject the reply, if one was built) */
    VMM_NET_MALFORMED = 2  /* drop it: truncated or inconsistent headers */
};
struct vmm_net_policy_stats {
    uint64_t passed;        /* frames a rule allowed */
    uint64_t infra;         /* ARP, DHCP, DHCPv6, ICMPv6 ND passed without rules */
    uint64_t denied;        /* frames a rule or the default denied, or not IP at all */
    uint64_t default_denied;/* ... of which no rule matched */
    uint64_t port_unknown;  /* ... of which were non-first fragments a port rule needed */
    uint64_t other_ethertype; /* ... of which were neither ARP, IPv4 nor IPv6 */
    uint64_t malformed;     /* frames dropped as truncated or malformed */
    uint64_t resets;        /* TCP RSTs built for denied segments */
    uint64_t dns_answers;   /* DNS responses from a resolver seen on the receive path */
    uint64_t dns_malformed; /* ... of which were truncated or malformed (still delivered) */
    uint64_t dns_learned;   /* addresses recorded or refreshed for domain rules */
    uint64_t dns_evicted;   /* learned addresses pushed out of a full table */
    uint64_t dns_expired;   /* learned addresses whose (clamped) TTL ran out */
    uint64_t dns_entries;   /* learned addresses held now */
    uint64_t replies;       /* guest frames passed as replies on a tracked inbound flow */
    uint64_t flows_opened;  /* inbound flows recorded (a SYN or a datagram to a published port) */
    uint64_t flows_closed;  /* ... ended by an RST, or by FIN both ways and a short linger */
    uint64_t flows_expired; /* ... idle too long (TCP 5 min, UDP 60 s) */
    uint64_t flows_evicted; /* ... pushed out of a full table, least recently used first */
    uint64_t flows;         /* inbound flows tracked now */
};
/* Where domain rules learn from: DNS responses (UDP source port 53) from these resolvers
 * only, kept in a table of max_entries addresses whose TTLs are clamped to
 * [ttl_min, ttl_max] seconds. Zeros mean the defaults: 4096 entries, 30 s .. 3600 s. */
#define VMM_NET_MAX_RESOLVERS 8
struct vmm_net_dns_config {
    uint32_t nresolvers;
    uint8_t family[8];    /* 4 or 6, per resolver */
    uint8_t addr[8][16];
    uint32_t max_entries;
    uint32_t ttl_min;
    uint32_t ttl_max;
};
struct vmm_net_policy;
/* Copies the table (nrules <= 4096); NULL and err on a bad rule (named by its index). */
struct vmm_net_policy *vmm_net_policy_new(const struct vmm_net_rule *rules, size_t nrules,
                                          char *err, size_t errlen);
void vmm_net_policy_free(struct vmm_net_policy *p);
/* Decides one guest-transmitted Ethernet frame (no virtio header): enum vmm_net_verdict.
 * reply (capacity *reply_len, 96 bytes is always enough; may be NULL) receives a TCP RST
 * frame for the guest when a TCP segment other than an RST is denied; *reply_len is set
 * to its length, 0 when there is none. Safe to call from one thread while another reads
 * the counters. */
int vmm_net_policy_check(struct vmm_net_policy *p, const uint8_t *frame, size_t len,
                         uint8_t *reply, size_t *reply_len);
void vmm_net_policy_stats(struct vmm_net_policy *p, struct vmm_net_policy_stats *out);
/* Sets the resolvers and the table's limits (before the policy is in use; the table is
 * emptied). -1 and err on a bad value. */
int vmm_net_policy_set_dns(struct vmm_net_policy *p, const struct vmm_net_dns_config *cfg,
                           char *err, size_t errlen);
/* Shows the policy one Ethernet frame the backend sends the guest (receive path), so
 * domain rules learn from DNS answers and inbound flows are tracked. The frame is not
 * judged and is always delivered. Returns the addresses learned, 0 (not a DNS response
 * from a resolver, or nothing to learn), or -1 for a DNS response it could not parse (counted in dns_malformed). */
int vmm_net_policy_observe(struct vmm_net_policy *p, const uint8_t *frame, size_t len);
/* Inbound flows (csrc/virtio/net_flows.c): the guest ports published to the outside
 * (proto 6 or 17, port 1..65535 each). A TCP SYN (without ACK) or a UDP datagram the
 * backend sends to one of them opens a flow (vmm_net_policy_observe), and the guest's
 * frames on that flow's exact reversed tuple pass whatever the rules say (counted in
 * `replies`); a TCP SYN without ACK from the guest is never a reply. At most max_flows
 * flows (0: 4096; at most 1048576); when full, the least recently used flow the guest has
 * not answered is evicted, else the least recently used one. Before the policy is in
 * use; the table is emptied. -1 and err on a bad value. */
struct vmm_net_inbound_port {
    uint8_t proto;
    uint16_t port;
};
int vmm_net_policy_set_inbound(struct vmm_net_policy *p, const struct vmm_net_inbound_port *ports,
                               size_t nports, uint32_t max_flows, char *err, size_t errlen);
/* Tests: the policy's clock reads now_ms from now on (-1: the monotonic clock again). */
void vmm_net_policy_set_clock(struct vmm_net_policy *p, int64_t now_ms);
/* Copies min(n, nrules) per-rule hit counters into hits; returns nrules. */
size_t vmm_net_policy_hits(struct vmm_net_policy *p, uint64_t *hits, size_t n);
/* The virtio-net device checks every frame the guest sends against `policy` (NULL: none)
 * from now on. The caller keeps the policy alive until the device is freed. */
int vmm_net_set_policy(struct vmm_vdev *dev, struct vmm_net_policy *policy, char *err, size_t errlen);
/* cffi-end */

#endif
