/* Constructors of the concrete devices; each returns its struct vdev or NULL with a
 * one-line reason in err. Freed with vdev_free() (device.h). */
#ifndef VIRTIO_DEVICES_H
#define VIRTIO_DEVICES_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "device.h"

struct vdev *blk_new(const char *path, bool read_only, const char *serial, char *err, size_t errlen);
struct vdev *vsock_new(uint64_t guest_cid, const char *uds_path, char *err, size_t errlen);
/* backend_fd is owned by the device from then on; kind is NET_BACKEND_*. */
struct vdev *net_new(int backend_fd, int kind, const uint8_t mac[6], char *err, size_t errlen);
void net_set_policy(struct vdev *d, struct vmm_net_policy *policy);

#define NET_BACKEND_STREAM 0 /* Unix stream socket, 4-byte big-endian length framing */
#define NET_BACKEND_TAP 1    /* /dev/net/tun in IFF_TAP|IFF_NO_PI mode: one frame per read */

#endif
