/* Byte offsets in struct boot_params (the "zero page") and in a bzImage's first sectors,
 * which share the setup header layout (Documentation/arch/x86/boot.rst). Offsets rather
 * than a packed struct: both are read from untrusted bytes and written into guest memory. */
#ifndef VMM_BOOT_PARAMS_H
#define VMM_BOOT_PARAMS_H

#define BP_E820_ENTRIES     0x1e8
#define BP_SENTINEL         0x1ef
#define BP_HDR              0x1f1  /* setup header starts here */
#define BP_E820_TABLE       0x2d0
#define BP_E820_MAX         128
#define HDR_SETUP_SECTS     0x1f1
#define HDR_BOOT_FLAG       0x1fe
#define HDR_JUMP            0x200
#define HDR_MAGIC           0x202
#define HDR_VERSION         0x206
#define HDR_TYPE_OF_LOADER  0x210
#define HDR_LOADFLAGS       0x211
#define HDR_RAMDISK_IMAGE   0x218
#define HDR_RAMDISK_SIZE    0x21c
#define HDR_CMD_LINE_PTR    0x228
#define HDR_INITRD_ADDR_MAX 0x22c
#define HDR_KERNEL_ALIGN    0x230
#define HDR_XLOADFLAGS      0x236
#define HDR_CMDLINE_SIZE    0x238
#define HDR_PREF_ADDRESS    0x258
#define HDR_INIT_SIZE       0x260
#define HDR_END_MAX         0x290  /* we never copy more header than this */

#define HDR_MAGIC_VALUE     0x53726448u /* "HdrS" */
#define LOADED_HIGH         0x01
#define XLF_KERNEL_64       0x01
#define LINUX_CMDLINE_MAX   2048        /* x86 COMMAND_LINE_SIZE, for ELF kernels */

#endif
