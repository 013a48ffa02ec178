/* Guest side of the network tests and benchmark (static, musl):
 *
 *   tcp_sink IP PORT [nohash]   connect over TCP, read until the server closes, print
 *                               "TCP_SINK bytes=<n> fnv=<hash>" (FNV-1a 64 of every byte
 *                               read; with nohash the benchmark skips it, fnv=0)
 *
 * The host server picks the size; the hash lets the host check the bytes arrived intact. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3 && !(argc == 4 && !strcmp(argv[3], "nohash"))) {
        fprintf(stderr, "usage: tcp_sink IP PORT [nohash]\n");
        return 2;
    }
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2])) };
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (inet_pton(AF_INET, argv[1], &a.sin_addr) != 1 || fd < 0 ||
        connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        printf("TCP_SINK_FAIL connect %s:%s: %s\n", argv[1], argv[2], strerror(errno));
        return 1;
    }
    static unsigned char buf[1 << 16];
    int hash = argc == 3;
    uint64_t total = 0, h = hash ? 0xcbf29ce484222325ull : 0;
    for (;;) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n == 0)
            break;
        if (n < 0) {
            printf("TCP_SINK_FAIL read after %llu bytes: %s\n", (unsigned long long)total, strerror(errno));
            return 1;
        }
        for (ssize_t i = 0; hash && i < n; i++)
            h = (h ^ buf[i]) * 0x100000001b3ull;
        total += (uint64_t)n;
    }
    printf("TCP_SINK bytes=%llu fnv=%016llx\n", (unsigned long long)total, (unsigned long long)h);
    return 0;
}
