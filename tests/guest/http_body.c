/* Guest side of the published-port load test and benchmarks (static, musl): a minimal
 * HTTP/1.0 server that answers every request with one file.
 *
 *   http_body PORT FILE     listen on 0.0.0.0:PORT (backlog 1024), print "HTTP_BODY ready";
 *                           per connection (a forked child): read the request head up to
 *                           the blank line, send "200" with FILE as the body, close.
 *   http_body PORT -        an upload sink for throughput benchmarks: per connection, read
 *                           an 8-byte big-endian length, then that many bytes, and answer
 *                           "bytes=<n>\n" (no half-close: Debian's passt of 2023-03 can
 *                           mishandle one).
 *
 * Why not busybox httpd: it listens with a backlog of 9, and passt (which completes a
 * forwarded connection's handshake only with its first data frame, and does not resend a
 * SYN the guest dropped) then loses connections beyond that when many arrive at once. A
 * real server's backlog (nginx and node use 511) is what the load test is about. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read until the end of the request head ("\r\n\r\n"); 0 on success. */
static int read_head(int fd)
{
    char buf[4096];
    size_t have = 0;
    while (have < sizeof(buf)) {
        ssize_t n = read(fd, buf + have, sizeof(buf) - have);
        if (n <= 0)
            return -1;
        have += (size_t)n;
        for (size_t i = 3; i < have; i++)
            if (!memcmp(buf + i - 3, "\r\n\r\n", 4))
                return 0;
    }
    return -1;
}

static void serve_file(int c, const char *body, size_t len)
{
    char head[128];
    if (read_head(c) < 0)
        return;
    int n = snprintf(head, sizeof(head), "HTTP/1.0 200 OK\r\nContent-Length: %zu\r\n\r\n", len);
    if (write_all(c, head, (size_t)n) == 0)
        write_all(c, body, len);
}

static void sink(int c)
{
    static unsigned char buf[1 << 16];
    uint64_t want = 0, total = 0;
    size_t have = 0;
    while (have < 8) {
        ssize_t n = read(c, buf + have, 8 - have);
        if (n <= 0)
            return;
        have += (size_t)n;
    }
    for (int i = 0; i < 8; i++)
        want = want << 8 | buf[i];
    while (total < want) {
        size_t ask = want - total < sizeof(buf) ? (size_t)(want - total) : sizeof(buf);
        ssize_t n = read(c, buf, ask);
        if (n <= 0)
            break;
        total += (uint64_t)n;
    }
    char reply[64];
    int m = snprintf(reply, sizeof(reply), "bytes=%llu\n", (unsigned long long)total);
    write_all(c, reply, (size_t)m);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: http_body PORT FILE|-\n");
        return 2;
    }
    char *body = NULL;
    size_t len = 0;
    int upload = !strcmp(argv[2], "-");
    if (!upload) {
        int f = open(argv[2], O_RDONLY);
        struct stat st;
        if (f < 0 || fstat(f, &st) < 0) {
            printf("HTTP_BODY_FAIL %s: %s\n", argv[2], strerror(errno));
            return 1;
        }
        len = (size_t)st.st_size;
        body = malloc(len ? len : 1);
        for (size_t got = 0; got < len;) {
            ssize_t n = read(f, body + got, len - got);
            if (n <= 0) {
                printf("HTTP_BODY_FAIL reading %s\n", argv[2]);
                return 1;
            }
            got += (size_t)n;
        }
        close(f);
    }
    signal(SIGCHLD, SIG_IGN); /* children reap themselves */
    int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_ANY) };
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 1024) < 0) {
        printf("HTTP_BODY_FAIL listen %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    printf("HTTP_BODY ready\n");
    fflush(stdout);
    for (;;) {
        int c = accept(fd, NULL, NULL);
        if (c < 0)
            continue;
        pid_t pid = fork();
        if (pid == 0) {
            close(fd);
            if (upload)
                sink(c);
            else
                serve_file(c, body, len);
            close(c);
            _exit(0);
        }
        close(c);
    }
}
