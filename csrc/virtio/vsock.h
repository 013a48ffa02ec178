/* virtio-vsock: what the device's files share (not visible outside csrc/virtio/vsock*.c).
 *
 * virtio-vsock stream sockets (virtio 1.x section 5.10) with a Firecracker-style host side,
 * in four files, one concept each:
 *   vsock.c         the device: construction, reset, teardown
 *   vsock_packet.c  packets: the tx queue (from the guest) and the rx queue (to it)
 *   vsock_conn.c    the connection table and the credit scheme on the host socket side
 *   vsock_host.c    the host side: the Unix listener, "CONNECT <port>" / "OK <port>", guest
 *                   connections to "<path>_<port>", and their events (vsock_poll)
 *
 * Host side: one Unix listening socket per VM at `path`. A host program connects, writes
 * "CONNECT <port>\n" and, once the guest accepts, reads "OK <hostport>\n" followed by the
 * byte stream. A guest connection to CID 2 port P is connected to the Unix socket
 * "<path>_P", or reset if nothing listens there.
 *
 * Budget: the guest's connections (its REQUESTs) and the host's (clients of the listener,
 * including ones still saying CONNECT) have separate caps, MAX_GUEST_CONNS and
 * MAX_HOST_CONNS, so a guest that opens connections until refused cannot take the slots the
 * host needs to reach its own agent. Each connection holds one fd and, only while data waits
 * for a slow host socket, a tx buffer sized to what waits (freed once drained).
 *
 * Flow control is the spec's credit scheme in both directions. Guest -> host: we tell the
 * guest we have CONN_BUF bytes of buffer; data is written to the Unix socket at once and
 * only what the socket does not take is kept, so a guest that respects credit never makes
 * us hold more than CONN_BUF per connection, and one that does not is reset. Host -> guest:
 * we read from the Unix socket only as much as the guest's advertised buffer has room for,
 * and only when the guest gave us an rx buffer; otherwise the socket is left unread (the
 * host program blocks on its own socket buffer).
 *
 * Threads: none of our own. The transport calls notify (tx queue: packets from the guest;
 * rx queue: new buffers) with d->lock held; its event loop calls vsock_poll when a Unix
 * socket is ready (d->poll_fd), which takes d->lock too. All connection state is touched
 * only under d->lock. Writes to the Unix sockets use send(MSG_NOSIGNAL): a host program
 * that closed its end is an error for that connection, never a SIGPIPE for the process
 * (which need not ignore the signal). */
#ifndef VIRTIO_VSOCK_H
#define VIRTIO_VSOCK_H
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/un.h>

#include "device.h"

#define VSOCK_HOST_CID 2
#define VSOCK_TYPE_STREAM 1
enum { OP_REQUEST = 1, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST };
#define SHUT_F_RCV 1
#define SHUT_F_SEND 2

#define Q_RX 0
#define Q_TX 1
#define Q_EVENT 2
#define VSOCK_QUEUE_MAX 1024

#define CONN_BUF (256u * 1024)      /* our receive buffer per connection (buf_alloc) */
#define MAX_PAYLOAD (64u * 1024)    /* largest packet payload either way (Linux's limit) */
#define MAX_GUEST_CONNS 768         /* connections the guest opened (REQUEST to CID 2) */
#define MAX_HOST_CONNS 256          /* host clients of the listener: never taken by the guest */
#define MAX_CONNS (MAX_GUEST_CONNS + MAX_HOST_CONNS)
#define TX_MIN_BUF 4096u            /* smallest tx buffer; it grows by doubling to CONN_BUF */
#define MAX_LONE_RST 128            /* resets for unknown connections waiting for rx buffers */
#define LINE_MAX_LEN 32             /* "CONNECT 4294967295\n" fits */
#define FIRST_HOST_PORT (1u << 30)  /* host-initiated connections get local ports from here */

struct vsock_hdr {
    uint64_t src_cid, dst_cid;
    uint32_t src_port, dst_port, len;
    uint16_t type, op;
    uint32_t flags, buf_alloc, fwd_cnt;
} __attribute__((packed));

enum conn_state {
    C_LINE,        /* host client: waiting for "CONNECT <port>\n" */
    C_REQUESTED,   /* host client: REQUEST sent to the guest, waiting for RESPONSE */
    C_OPEN,        /* established */
};

/* Control packets a connection owes the guest, sent as rx buffers allow. */
#define P_REQUEST 1u
#define P_RESPONSE 2u
#define P_CREDIT_UPDATE 4u
#define P_CREDIT_REQUEST 8u
#define P_SHUTDOWN 16u
#define P_RST 32u

struct conn {
    int fd;
    uint32_t gen;
    bool from_guest;         /* counts against MAX_GUEST_CONNS, else MAX_HOST_CONNS */
    enum conn_state state;
    uint32_t local_port, peer_port;
    char line[LINE_MAX_LEN + 1];
    unsigned line_len;
    /* guest -> host */
    uint8_t *tx;             /* tx_cap bytes while data waits for the socket, else NULL */
    uint32_t tx_cap;
    uint32_t tx_off, tx_len; /* pending bytes tx[tx_off .. tx_off+tx_len) */
    uint32_t fwd_cnt, fwd_told;
    bool guest_shut_send;    /* no more data from the guest: SHUT_WR once drained */
    bool shut_wr_done;
    bool rst_when_drained;   /* the guest closed: answer with RST once its data is out */
    /* host -> guest */
    uint32_t rx_cnt;
    uint32_t peer_buf_alloc, peer_fwd_cnt;
    bool readable;           /* the socket may have data or EOF for us */
    bool host_eof;           /* the host closed its side; SHUTDOWN sent or owed */
    bool guest_shut_rcv;     /* the guest takes no more data */
    bool credit_asked;
    bool hup;                /* the host closed both directions; no longer polled */
    uint32_t pending;        /* P_* */
    uint32_t events;         /* epoll interest now registered */
};

struct lone_rst {
    uint32_t local_port, peer_port;
};

struct vsock {
    struct vdev d;
    uint64_t cid;
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int listen_fd, epfd;     /* epfd: the listener and every connection; d.poll_fd */
    struct conn *conns[MAX_CONNS];
    uint32_t gens[MAX_CONNS];
    int nslots;              /* slots in use are below this */
    int nguest, nhost;       /* connections per side, against MAX_GUEST_CONNS / MAX_HOST_CONNS */
    uint32_t next_host_port;
    struct lone_rst rst[MAX_LONE_RST];
    int nrst;
    struct iovec *scratch;   /* rx payload view */
};

#define TAG_LISTEN (~0ull - 1)

/* vsock_conn.c: the connection table and credit. */
uint64_t conn_tag(struct vsock *v, int slot);
struct conn *conn_find(struct vsock *v, uint32_t local_port, uint32_t peer_port);
bool local_port_used(struct vsock *v, uint32_t port);
/* Registers fd as a new connection of the guest (from_guest) or the host; NULL (fd closed)
 * when that side has all its slots. */
struct conn *conn_new(struct vsock *v, int fd, enum conn_state st, bool from_guest);
void conn_free(struct vsock *v, struct conn *c);
/* Which socket events we want now, from the connection's state. */
void conn_rearm(struct vsock *v, struct conn *c);
/* Bytes the guest can still take on c. */
uint32_t peer_credit(const struct conn *c);
/* Ends a connection from our side: RST to the guest (if it knows it), then forget it. */
void conn_reset(struct vsock *v, struct conn *c);
void queue_lone_rst(struct vsock *v, uint32_t local_port, uint32_t peer_port);
/* Writes as much of the pending guest data as the socket takes. -1: the socket is dead. */
int drain_tx(struct vsock *v, struct conn *c);
/* Takes len payload bytes of a RW packet (payload after the header in r). -1 = reset. */
int take_rw(struct vsock *v, struct conn *c, const struct vq_req *r, uint32_t len);
void close_all(struct vsock *v);

/* vsock_packet.c: the queues. */
/* Fills rx buffers with everything owed to the guest, as far as buffers last. */
void pump_rx(struct vsock *v);
/* The device's notify op: tx packets from the guest, or new rx buffers. */
void vsock_notify(struct vdev *d, int qi);

/* vsock_host.c: the Unix socket side. */
/* Guest REQUEST to host port local_port: a connection on "<path>_<local_port>", or NULL
 * (and an RST queued for the guest) if nothing listens there. */
struct conn *host_dial(struct vsock *v, uint32_t local_port, uint32_t peer_port);
/* The guest accepted a host client's CONNECT: "OK <port>\n", then the stream. */
void host_established(struct vsock *v, struct conn *c);
/* Listens on v->path; the listener goes into the device's socket set (d.poll_fd). */
int host_start(struct vsock *v, char *err, size_t errlen);
/* Closes every connection and the listener (removing its file). */
void host_stop(struct vsock *v);
/* The device's poll op: serves the host sockets that are ready. */
void vsock_poll(struct vdev *d);

#endif
