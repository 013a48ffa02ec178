/*
 * The sandbox's network, configured by PID 1 before READY: no DHCP client in the guest,
 * because the host chose every value (vmm/net/network.py) and a DHCP exchange would only
 * cost boot time. One kernel parameter carries it:
 *
 *   vmm.net=ADDR/PREFIX,GATEWAY,MTU,DNS,HOSTALIAS[,ADDR6/PREFIX6,GATEWAY6]
 *   e.g. 10.0.2.15/24,10.0.2.2,1500,10.0.2.3,0,fd76:6d6d:0:2::15/64,fd76:6d6d:0:2::2
 *
 * eth0 gets the address, netmask and MTU and goes up, with a default route via GATEWAY
 * (all with ioctls: no tools in the image are assumed). /etc/resolv.conf and /etc/hosts go
 * into the overlay's upper (writable) layer, never into the image: written into the upper
 * directory itself before the overlay is mounted (net_write_files), where a file simply
 * hides the image's (a symbolic link too). Written through the overlay instead, each
 * would cost a copy-up of /etc, a whiteout and a create over it: ~10 ms of boot under
 * TCG. Where the upper layer's /etc is not a plain directory (a sandbox that replaced or
 * removed its /etc) they are written through the overlay after the switch, as files
 * replaced (never followed). HOSTALIAS=1 adds host.microsandbox.internal for the gateway,
 * which passt maps to the host's loopback.
 *
 * IPv6 (the two optional fields: the host gives them where passt offers IPv6) is static
 * too: before the link goes up, duplicate address detection and SLAAC are turned off for
 * eth0, so the address is usable at once (DAD would hold it tentative for a second or
 * more), and passt's router advertisements may add neither a route nor a prefix (RAs
 * stay accepted: the kernel's router solicitation is harmless).
 *
 * Once eth0 is up the agent announces it (a gratuitous ARP): passt learns the guest's MAC
 * address from the guest's first frame, and until then it cannot deliver a published
 * port's first connection or datagram.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netpacket/packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define NET_IF "eth0"
#define NET_WAIT_MS 2000 /* a virtio-net probed a little after init starts */

struct net_conf {
	struct in_addr addr, mask, gw, dns;
	int prefix, mtu, host_alias;
	int has6, prefix6;
	struct in6_addr addr6, gw6;
};

/* The kernel's struct in6_ifreq (linux/ipv6.h, which does not mix with musl's headers). */
struct in6_ifreq_k {
	struct in6_addr addr;
	uint32_t prefixlen;
	int ifindex;
};

static int parse_addr6(char *addr_prefix, char *gw, struct net_conf *c)
{
	char *slash = strchr(addr_prefix, '/'), *pend;
	if (!slash)
		return -1;
	*slash = 0;
	long prefix = strtol(slash + 1, &pend, 10);
	if (prefix < 1 || prefix > 128 || *pend || inet_pton(AF_INET6, addr_prefix, &c->addr6) != 1 ||
	    inet_pton(AF_INET6, gw, &c->gw6) != 1)
		return -1;
	c->prefix6 = (int)prefix;
	c->has6 = 1;
	return 0;
}

static int parse_conf(const char *spec, struct net_conf *c)
{
	char s[256], *fields[7];
	int n = 0;
	if (strlen(spec) >= sizeof(s))
		return -1;
	strcpy(s, spec);
	for (char *p = s, *tok; n < 7 && (tok = strsep(&p, ",")) != NULL;)
		fields[n++] = tok;
	if (n != 5 && n != 7)
		return -1;
	c->has6 = 0;
	if (n == 7 && parse_addr6(fields[5], fields[6], c) < 0)
		return -1;
	char *slash = strchr(fields[0], '/');
	if (!slash)
		return -1;
	*slash = 0;
	char *pend, *mend;
	long prefix = strtol(slash + 1, &pend, 10), mtu = strtol(fields[2], &mend, 10);
	if (prefix < 1 || prefix > 32 || *pend || mtu < 576 || mtu > 65535 || *mend)
		return -1;
	if (inet_pton(AF_INET, fields[0], &c->addr) != 1 || inet_pton(AF_INET, fields[1], &c->gw) != 1 ||
	    inet_pton(AF_INET, fields[3], &c->dns) != 1)
		return -1;
	c->prefix = (int)prefix;
	c->mtu = (int)mtu;
	c->mask.s_addr = htonl(prefix == 32 ? 0xffffffffu : ~(0xffffffffu >> prefix));
	c->host_alias = strcmp(fields[4], "1") == 0;
	return 0;
}

static void set_sin(struct sockaddr *sa, struct in_addr a)
{
	struct sockaddr_in *sin = (struct sockaddr_in *)sa;
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_addr = a;
}

static int if_ioctl(int fd, unsigned long req, struct ifreq *ifr, const char *what)
{
	snprintf(ifr->ifr_name, sizeof(ifr->ifr_name), "%s", NET_IF);
	if (ioctl(fd, req, ifr) == 0)
		return 0;
	log_msg("agent: network: %s on %s: %s", what, NET_IF, strerror(errno));
	return -1;
}

static int wait_for_interface(void)
{
	/* Short polls: the interface is usually there already, and every ms here is boot
	 * time (the issue allows a network 5% of boot-to-ready). */
	for (int i = 0; i < NET_WAIT_MS; i++) {
		if (if_nametoindex(NET_IF))
			return 0;
		nanosleep(&(struct timespec){0, 1000 * 1000}, NULL);
	}
	log_msg("agent: network: no %s after %d ms", NET_IF, NET_WAIT_MS);
	return -1;
}

static void write_sysctl(const char *name, const char *value)
{
	char path[128];
	snprintf(path, sizeof(path), "/proc/sys/net/ipv6/conf/%s/%s", NET_IF, name);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0 || write(fd, value, strlen(value)) < 0)
		log_msg("agent: network: %s: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* The IPv6 address and default route, on the interface that is up by now. */
static int configure_ipv6(const struct net_conf *c)
{
	int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0), rc = -1;
	if (fd < 0) {
		log_msg("agent: network: no IPv6 socket: %s", strerror(errno));
		return -1;
	}
	struct in6_ifreq_k ifr6 = {.addr = c->addr6, .prefixlen = (uint32_t)c->prefix6,
				   .ifindex = (int)if_nametoindex(NET_IF)};
	if (ioctl(fd, SIOCSIFADDR, &ifr6) < 0 && errno != EEXIST) {
		log_msg("agent: network: IPv6 address on %s: %s", NET_IF, strerror(errno));
		goto out;
	}
	struct in6_rtmsg rt;
	memset(&rt, 0, sizeof(rt));
	rt.rtmsg_gateway = c->gw6;
	rt.rtmsg_flags = RTF_UP | RTF_GATEWAY;
	rt.rtmsg_metric = 1;
	rt.rtmsg_ifindex = ifr6.ifindex;
	if (ioctl(fd, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
		log_msg("agent: network: IPv6 default route via gateway: %s", strerror(errno));
		goto out;
	}
	rc = 0;
out:
	close(fd);
	return rc;
}

static int configure_interface(const struct net_conf *c)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	struct ifreq ifr = {0};
	int rc = -1;
	set_sin(&ifr.ifr_addr, c->addr);
	if (if_ioctl(fd, SIOCSIFADDR, &ifr, "address") < 0)
		goto out;
	set_sin(&ifr.ifr_netmask, c->mask);
	if (if_ioctl(fd, SIOCSIFNETMASK, &ifr, "netmask") < 0)
		goto out;
	ifr.ifr_mtu = c->mtu;
	if (if_ioctl(fd, SIOCSIFMTU, &ifr, "mtu") < 0)
		goto out;
	if (c->has6) { /* before the link goes up: no DAD, no SLAAC, RAs change nothing */
		write_sysctl("accept_dad", "0");
		write_sysctl("autoconf", "0");
		write_sysctl("accept_ra_defrtr", "0");
		write_sysctl("accept_ra_pinfo", "0");
	}
	if (if_ioctl(fd, SIOCGIFFLAGS, &ifr, "flags") < 0)
		goto out;
	ifr.ifr_flags |= IFF_UP;
	if (if_ioctl(fd, SIOCSIFFLAGS, &ifr, "link up") < 0)
		goto out;
	/* The default route via the gateway (on-link: the interface route came with the
	 * address and mask above). */
	struct rtentry rt;
	memset(&rt, 0, sizeof(rt));
	set_sin(&rt.rt_dst, (struct in_addr){0});
	set_sin(&rt.rt_genmask, (struct in_addr){0});
	set_sin(&rt.rt_gateway, c->gw);
	rt.rt_flags = RTF_UP | RTF_GATEWAY;
	rt.rt_dev = (char *)NET_IF;
	if (ioctl(fd, SIOCADDRT, &rt) < 0 && errno != EEXIST) {
		log_msg("agent: network: default route via gateway: %s", strerror(errno));
		goto out;
	}
	rc = c->has6 ? configure_ipv6(c) : 0;
out:
	close(fd);
	return rc;
}

static int announce_fd = -1; /* the announcing socket, kept open (see announce) */

/* One gratuitous ARP (a request for our own address, RFC 5227's announcement) the moment
 * eth0 is up. It is the guest's first frame, and passt learns the guest's MAC address from
 * it: until passt has seen a frame it sends inbound traffic (a published port's first
 * connection) to a MAC the guest's NIC drops, and does not resend. Best effort: a failure
 * only delays that first connection until the guest sends something else. */
static void announce(const struct net_conf *c)
{
	int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	if (fd < 0)
		goto fail;
	struct ifreq ifr = {0};
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", NET_IF);
	if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0)
		goto fail;
	uint8_t mac[6];
	memcpy(mac, ifr.ifr_hwaddr.sa_data, 6);
	if (ioctl(fd, SIOCGIFINDEX, &ifr) < 0)
		goto fail;
	uint8_t f[42] = {0};
	memset(f, 0xff, 6);                           /* to everyone on the link */
	memcpy(f + 6, mac, 6);
	f[12] = 0x08, f[13] = 0x06;                   /* ARP */
	f[14] = 0, f[15] = 1;                         /* Ethernet */
	f[16] = 0x08, f[17] = 0x00;                   /* IPv4 */
	f[18] = 6, f[19] = 4;
	f[20] = 0, f[21] = 1;                         /* request */
	memcpy(f + 22, mac, 6);
	memcpy(f + 28, &c->addr, 4);                  /* sender: our address ... */
	memcpy(f + 38, &c->addr, 4);                  /* ... and target: the same (announce) */
	struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ARP),
				 .sll_ifindex = ifr.ifr_ifindex, .sll_halen = 6};
	memset(to.sll_addr, 0xff, 6);
	if (sendto(fd, f, sizeof(f), 0, (struct sockaddr *)&to, sizeof(to)) != (ssize_t)sizeof(f))
		goto fail;
	/* Left open for the agent's life (CLOEXEC: no child gets it): closing a packet socket
	 * waits for an RCU grace period (synchronize_net), 8-17 ms of boot under TCG's 4 ms
	 * ticks. Opened with protocol 0 it is hooked to no packet type and receives nothing. */
	announce_fd = fd;
	return;
fail:
	log_msg("agent: network: announcing eth0: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
}

/* Replace path with text: unlink first, so a symlink the image ships (resolv.conf often
 * is one) is replaced in the upper layer instead of followed. */
static void write_file(const char *path, const char *text)
{
	unlink(path);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
	size_t len = strlen(text);
	if (fd < 0 || write(fd, text, len) != (ssize_t)len)
		log_msg("agent: network: writing %s: %s", path, strerror(errno));
	if (fd >= 0)
		close(fd);
}

static void write_name_files(const struct net_conf *c, const char *hostname, const char *root)
{
	char a[INET_ADDRSTRLEN], g[INET_ADDRSTRLEN], d[INET_ADDRSTRLEN], text[1024];
	char a6[INET6_ADDRSTRLEN], g6[INET6_ADDRSTRLEN];
	inet_ntop(AF_INET, &c->addr, a, sizeof(a));
	inet_ntop(AF_INET, &c->gw, g, sizeof(g));
	inet_ntop(AF_INET, &c->dns, d, sizeof(d));
	inet_ntop(AF_INET6, &c->addr6, a6, sizeof(a6));
	inet_ntop(AF_INET6, &c->gw6, g6, sizeof(g6));
	char path[320];
	snprintf(path, sizeof(path), "%s/etc", root);
	mkdir(path, 0755);
	snprintf(text, sizeof(text), "nameserver %s\n", d);
	snprintf(path, sizeof(path), "%s/etc/resolv.conf", root);
	write_file(path, text);
	/* hostname is at most 64 bytes (agent_cmdline checks it): every line fits. */
	size_t n = 0;
	n += (size_t)snprintf(text + n, sizeof(text) - n, "127.0.0.1\tlocalhost\n::1\tlocalhost\n%s\t%s\n",
			      a, hostname);
	if (c->has6 && n < sizeof(text))
		n += (size_t)snprintf(text + n, sizeof(text) - n, "%s\t%s\n", a6, hostname);
	if (c->host_alias && n < sizeof(text))
		n += (size_t)snprintf(text + n, sizeof(text) - n, "%s\thost.microsandbox.internal\n", g);
	if (c->host_alias && c->has6 && n < sizeof(text))
		snprintf(text + n, sizeof(text) - n, "%s\thost.microsandbox.internal\n", g6);
	snprintf(path, sizeof(path), "%s/etc/hosts", root);
	write_file(path, text);
}

int net_write_files(const char *spec, const char *hostname, const char *upper)
{
	struct net_conf c;
	char etc[300];
	struct stat st, image_etc;
	if (parse_conf(spec, &c) < 0)
		return -1; /* net_setup says so */
	snprintf(etc, sizeof(etc), "%s/etc", upper);
	if (lstat(etc, &st) == 0) {
		if (!S_ISDIR(st.st_mode))
			return -1;
	} else {
		/* A new upper /etc takes the image's owner and mode, as a copy-up would. */
		if (stat("/mnt/image/etc", &image_etc) < 0)
			image_etc.st_mode = 0755, image_etc.st_uid = 0, image_etc.st_gid = 0;
		if (mkdir(etc, image_etc.st_mode & 07777) < 0)
			return -1;
		if (chown(etc, image_etc.st_uid, image_etc.st_gid) < 0 ||
		    chmod(etc, image_etc.st_mode & 07777) < 0)
			log_msg("agent: network: %s: %s", etc, strerror(errno));
	}
	write_name_files(&c, hostname, upper);
	return 0;
}

void net_setup(const char *spec, const char *hostname, int files_written)
{
	struct net_conf c;
	if (parse_conf(spec, &c) < 0) {
		log_msg("agent: network: bad vmm.net=%s; no network", spec);
		return;
	}
	int up = wait_for_interface() == 0;
	step_mark("net_dev");
	if (up && configure_interface(&c) == 0) {
		step_mark("net_conf");
		announce(&c);
	}
	step_mark("net_arp");
	if (!files_written)
		write_name_files(&c, hostname, "");
}
