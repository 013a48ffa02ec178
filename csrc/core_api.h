/* The C core's interface to Python (vmm._core). Only what sits between the cffi markers is
 * visible to Python; keep it plain C declarations (no macros, no includes). */
#ifndef VMM_CORE_API_H
#define VMM_CORE_API_H
#include <stdint.h>
#include <stddef.h>

/* cffi-begin */
const char *vmm_core_version(void);
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
/* Test transport: guest memory is the caller's buffer mem (size bytes at guest address
 * gpa); features are what the "driver" accepts; notify runs the device in the caller's
 * thread; interrupts are counted per queue. */
int vmm_vdev_test_attach(struct vmm_vdev *dev, uint8_t *mem, uint64_t gpa, uint64_t size, uint64_t features, char *err, size_t errlen);
int vmm_vdev_test_queue(struct vmm_vdev *dev, int qi, uint32_t size, uint64_t desc, uint64_t avail, uint64_t used, char *err, size_t errlen);
int vmm_vdev_test_notify(struct vmm_vdev *dev, int qi);
uint64_t vmm_vdev_test_irqs(struct vmm_vdev *dev, int qi);
/* vhost-user backend server for one device on a Unix socket path, on its own thread. */
struct vmm_vhost_user;
struct vmm_vhost_user *vmm_vhost_user_start(struct vmm_vdev *dev, const char *path, char *err, size_t errlen);
/* 1 while a front-end (QEMU) is connected. */
int vmm_vhost_user_connected(struct vmm_vhost_user *srv);
/* Last protocol error that closed a connection, or NULL. */
const char *vmm_vhost_user_error(struct vmm_vhost_user *srv);
void vmm_vhost_user_stop(struct vmm_vhost_user *srv);
/* end virtio */
/* cffi-end */

#endif
