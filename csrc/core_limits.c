/* The core's fixed limits and layout facts, for Python (vmm_core_limits in core_api.h).
 * Python validates a request before any VM exists and must not copy these numbers from
 * the headers: each is read here from the constant the C code itself uses. */
#include "boot_params.h"
#include "core_api.h"
#include "guest_mem.h"
#include "layout.h"
#include "virtio/mmio.h"
#include "vm.h"

void vmm_core_limits(struct vmm_core_limits *out)
{
    *out = (struct vmm_core_limits){
        .max_cpus = VMM_MAX_CPUS,
        .max_devices = VMM_MAX_VDEVS,
        .min_memory_bytes = GUEST_MEM_MIN_BYTES,
        .mmio_hole = LAYOUT_MMIO_HOLE,
        .high_ram_base = LAYOUT_4G,
        .kernel_min = LAYOUT_KERNEL_MIN,
        .cmdline_size = LINUX_CMDLINE_MAX,
        .virtio_mmio_base = LAYOUT_VIRTIO_MMIO,
        .virtio_mmio_window = VIRTIO_MMIO_WINDOW,
    };
}
