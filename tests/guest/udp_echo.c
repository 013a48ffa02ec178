/* Guest side of the published UDP port test (static, musl): Debian's busybox has no UDP
 * server applet (no nc -u, udpsvd or ntpd), so this echoes every datagram to its sender.
 *
 *   udp_echo PORT     bind 0.0.0.0:PORT, print "UDP_ECHO ready", echo until killed */
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
    if (argc != 2) {
        fprintf(stderr, "usage: udp_echo PORT\n");
        return 2;
    }
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_ANY) };
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
        printf("UDP_ECHO_FAIL bind %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    printf("UDP_ECHO ready\n");
    fflush(stdout);
    static unsigned char buf[65536];
    for (;;) {
        struct sockaddr_in peer;
        socklen_t plen = sizeof(peer);
        ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            printf("UDP_ECHO_FAIL recvfrom: %s\n", strerror(errno));
            return 1;
        }
        if (sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, plen) < 0)
            printf("UDP_ECHO_FAIL sendto: %s\n", strerror(errno));
    }
}
