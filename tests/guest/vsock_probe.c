/* Guest side of the virtio end-to-end tests (static, musl): vsock stream traffic with
 * checksummed data, and one TCP request for the network test.
 *
 *   vsock_probe echo PORT NCONN       accept NCONN connections on PORT (concurrently) and
 *                                     echo each until the peer closes its side
 *   vsock_probe send PORT NCONN BYTES open NCONN connections to the host (CID 2) PORT at
 *                                     once, each sending BYTES of a per-connection pattern
 *                                     and checking that the same bytes come back
 *   vsock_probe http IP PORT          GET / over TCP from IP:PORT; prints "HTTP <body>"
 *                                     (busybox's static wget is not usable here)
 *   vsock_probe tcpget IP PORT        connect over TCP, read to EOF; prints bytes and time
 *   vsock_probe sink PORT             accept one vsock connection, read to EOF, answer "OK"
 *   vsock_probe source PORT BYTES     connect to the host PORT, write BYTES, close
 *   vsock_probe now                   CLOCK_MONOTONIC in ns (busybox's dd prints no time)
 *
 * Prints one line per finished connection and a summary line the host test looks for. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* <linux/vm_sockets.h>, which musl's headers do not carry. */
#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#define VMADDR_CID_ANY 0xffffffffu
#define VMADDR_CID_HOST 2u
struct sockaddr_vm {
    unsigned short svm_family;
    unsigned short svm_reserved1;
    unsigned int svm_port;
    unsigned int svm_cid;
    unsigned char svm_zero[4];
};

static uint8_t pattern(uint64_t i, unsigned conn) { return (uint8_t)((i * 2654435761u) >> 13) ^ (uint8_t)conn; }

static int echo_one(int fd)
{
    static char buf[65536];
    uint64_t total = 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n == 0)
            break;
        if (n < 0) {
            printf("ECHO_FAIL read after %llu bytes: %s\n", (unsigned long long)total, strerror(errno));
            return -1;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w <= 0) {
                printf("ECHO_FAIL write after %llu bytes: %s\n", (unsigned long long)total, strerror(errno));
                return -1;
            }
            off += w;
        }
        total += (uint64_t)n;
    }
    printf("ECHO_DONE bytes=%llu\n", (unsigned long long)total);
    fflush(stdout);
    close(fd);
    return 0;
}

static int do_echo(unsigned port, int nconn)
{
    int l = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY };
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 64) < 0) {
        printf("ECHO_FAIL listen: %s\n", strerror(errno));
        return 1;
    }
    printf("VSOCK_LISTENING %u\n", port);
    fflush(stdout);
    for (int i = 0; i < nconn; i++) {
        int c = accept(l, NULL, NULL);
        if (c < 0)
            return 1;
        if (fork() == 0)
            _exit(echo_one(c) ? 1 : 0);
        close(c);
    }
    int bad = 0, st;
    while (wait(&st) > 0)
        bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    printf("ECHO_ALL %s\n", bad ? "FAIL" : "OK");
    return bad != 0;
}

/* Sends `bytes` of the pattern and checks the echo, interleaving with poll. */
static int send_one(unsigned port, unsigned conn, uint64_t bytes)
{
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_HOST };
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        printf("SEND_FAIL conn=%u connect: %s\n", conn, strerror(errno));
        return 1;
    }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    static uint8_t out[65536], in[65536];
    uint64_t sent = 0, got = 0;
    while (got < bytes) {
        struct pollfd p = { .fd = fd, .events = POLLIN | (sent < bytes ? POLLOUT : 0) };
        if (poll(&p, 1, 30000) <= 0) {
            printf("SEND_FAIL conn=%u timeout sent=%llu got=%llu\n", conn, (unsigned long long)sent,
                   (unsigned long long)got);
            return 1;
        }
        if ((p.revents & POLLOUT) && sent < bytes) {
            size_t n = bytes - sent < sizeof(out) ? (size_t)(bytes - sent) : sizeof(out);
            for (size_t i = 0; i < n; i++)
                out[i] = pattern(sent + i, conn);
            ssize_t w = write(fd, out, n);
            if (w > 0)
                sent += (uint64_t)w;
            if (sent == bytes)
                shutdown(fd, SHUT_WR);
        }
        if (p.revents & (POLLIN | POLLHUP)) {
            ssize_t r = read(fd, in, sizeof(in));
            if (r == 0)
                break;
            for (ssize_t i = 0; i < r; i++)
                if (in[i] != pattern(got + (uint64_t)i, conn)) {
                    printf("SEND_FAIL conn=%u mismatch at %llu\n", conn, (unsigned long long)(got + (uint64_t)i));
                    return 1;
                }
            if (r > 0)
                got += (uint64_t)r;
        }
    }


    close(fd);
    if (got != bytes) {
        printf("SEND_FAIL conn=%u got %llu of %llu\n", conn, (unsigned long long)got, (unsigned long long)bytes);
        return 1;
    }
    printf("SEND_DONE conn=%u bytes=%llu\n", conn, (unsigned long long)got);
    fflush(stdout);
    return 0;
}

static int do_send(unsigned port, int nconn, uint64_t bytes)
{
    for (int i = 0; i < nconn; i++)
        if (fork() == 0)
            _exit(send_one(port, (unsigned)i, bytes));
    int bad = 0, st;
    while (wait(&st) > 0)
        bad += !WIFEXITED(st) || WEXITSTATUS(st) != 0;
    printf("SEND_ALL %s\n", bad ? "FAIL" : "OK");
    return bad != 0;
}

static int do_http(const char *ip, unsigned port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1 || fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        printf("HTTP_FAIL connect %s:%u: %s\n", ip, port, strerror(errno));
        return 1;
    }
    const char req[] = "GET /guest HTTP/1.0\r\n\r\n";
    if (write(fd, req, sizeof(req) - 1) != (ssize_t)sizeof(req) - 1)
        return 1;
    static char buf[65536];
    size_t n = 0;
    for (ssize_t r; n < sizeof(buf) - 1 && (r = read(fd, buf + n, sizeof(buf) - 1 - n)) > 0;)
        n += (size_t)r;
    buf[n] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    printf("HTTP %s\n", body ? body + 4 : "(no body)");
    return body ? 0 : 1;
}

static uint64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int do_tcpget(const char *ip, unsigned port)
{
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    uint64_t t0 = now_ns(), total = 0;
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1 || fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        printf("TCPGET_FAIL %s\n", strerror(errno));
        return 1;
    }
    static char buf[1 << 16];
    for (ssize_t r; (r = read(fd, buf, sizeof(buf))) > 0;)
        total += (uint64_t)r;
    printf("TCPGET bytes=%llu ns=%llu\n", (unsigned long long)total, (unsigned long long)(now_ns() - t0));
    return 0;
}

static int do_sink(unsigned port)
{
    int l = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_ANY };
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(l, 4) < 0)
        return 1;
    printf("VSOCK_LISTENING %u\n", port);
    int c = accept(l, NULL, NULL);
    static char buf[1 << 16];
    uint64_t total = 0;
    for (ssize_t r; (r = read(c, buf, sizeof(buf))) > 0;)
        total += (uint64_t)r;
    if (write(c, "OK", 2) != 2)
        return 1;
    close(c);
    printf("SINK bytes=%llu\n", (unsigned long long)total);
    return 0;
}

static int do_source(unsigned port, uint64_t bytes)
{
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    struct sockaddr_vm a = { .svm_family = AF_VSOCK, .svm_port = port, .svm_cid = VMADDR_CID_HOST };
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        printf("SOURCE_FAIL %s\n", strerror(errno));
        return 1;
    }
    static char buf[1 << 16];
    memset(buf, 'v', sizeof(buf));
    for (uint64_t sent = 0; sent < bytes;) {
        size_t n = bytes - sent < sizeof(buf) ? (size_t)(bytes - sent) : sizeof(buf);
        ssize_t w = write(fd, buf, n);
        if (w <= 0)
            return 1;
        sent += (uint64_t)w;
    }
    close(fd);
    printf("SOURCE done\n");
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 4 && !strcmp(argv[1], "echo"))
        return do_echo((unsigned)atoi(argv[2]), atoi(argv[3]));
    if (argc == 5 && !strcmp(argv[1], "send"))
        return do_send((unsigned)atoi(argv[2]), atoi(argv[3]), strtoull(argv[4], NULL, 0));
    if (argc == 2 && !strcmp(argv[1], "now")) {
        printf("%llu\n", (unsigned long long)now_ns());
        return 0;
    }
    if (argc == 4 && !strcmp(argv[1], "tcpget"))
        return do_tcpget(argv[2], (unsigned)atoi(argv[3]));
    if (argc == 3 && !strcmp(argv[1], "sink"))
        return do_sink((unsigned)atoi(argv[2]));
    if (argc == 4 && !strcmp(argv[1], "source"))
        return do_source((unsigned)atoi(argv[2]), strtoull(argv[3], NULL, 0));
    if (argc == 4 && !strcmp(argv[1], "http"))
        return do_http(argv[2], (unsigned)atoi(argv[3]));
    fprintf(stderr, "usage: vsock_probe echo PORT NCONN | send PORT NCONN BYTES | http IP PORT | tcpget IP PORT | sink PORT | source PORT BYTES | now\n");
    return 2;
}
