/* Guest side of the host-directory tests and benchmark (static, musl): what busybox
 * cannot do.
 *
 *   fs_probe mmap-write PATH SIZE SEED   create PATH with SIZE bytes through a MAP_SHARED
 *                                        mapping (byte i = (i * 131 + SEED) & 0xff),
 *                                        msync(MS_SYNC), munmap, close; prints
 *                                        "MMAP_WRITE ok fnv=<hash>"
 *   fs_probe mmap-read PATH              map PATH read-only, print "MMAP_READ size=<n>
 *                                        fnv=<hash>" (FNV-1a 64 of the bytes)
 *   fs_probe fsync-hold PATH TEXT        write TEXT to PATH (created, truncated), fsync,
 *                                        print "FSYNCED", then keep the file open until
 *                                        stdin ends; print "CLOSED" after close()
 *   fs_probe now                         CLOCK_MONOTONIC in nanoseconds (busybox's date
 *                                        has no %N: the benchmark times with this)
 *
 * Errors print "<MODE>_FAIL <what>: <strerror>" and exit 1. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static uint64_t fnv(const unsigned char *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static int fail(const char *mode, const char *what)
{
    printf("%s_FAIL %s: %s\n", mode, what, strerror(errno));
    return 1;
}

static int mmap_write(const char *path, size_t size, unsigned seed)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return fail("MMAP_WRITE", "open");
    if (ftruncate(fd, (off_t)size) < 0)
        return fail("MMAP_WRITE", "ftruncate");
    unsigned char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (m == MAP_FAILED)
        return fail("MMAP_WRITE", "mmap");
    for (size_t i = 0; i < size; i++)
        m[i] = (unsigned char)((i * 131 + seed) & 0xff);
    uint64_t h = fnv(m, size);
    if (msync(m, size, MS_SYNC) < 0)
        return fail("MMAP_WRITE", "msync");
    if (munmap(m, size) < 0)
        return fail("MMAP_WRITE", "munmap");
    if (close(fd) < 0)
        return fail("MMAP_WRITE", "close");
    printf("MMAP_WRITE ok fnv=%llu\n", (unsigned long long)h);
    return 0;
}

static int mmap_read(const char *path)
{
    int fd = open(path, O_RDONLY);
    struct stat st;
    if (fd < 0)
        return fail("MMAP_READ", "open");
    if (fstat(fd, &st) < 0)
        return fail("MMAP_READ", "fstat");
    size_t size = (size_t)st.st_size;
    uint64_t h = fnv(NULL, 0);
    if (size) {
        unsigned char *m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED)
            return fail("MMAP_READ", "mmap");
        h = fnv(m, size);
        munmap(m, size);
    }
    close(fd);
    printf("MMAP_READ size=%zu fnv=%llu\n", size, (unsigned long long)h);
    return 0;
}

static int fsync_hold(const char *path, const char *text)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    size_t n = strlen(text);
    if (fd < 0)
        return fail("FSYNC", "open");
    if (write(fd, text, n) != (ssize_t)n)
        return fail("FSYNC", "write");
    if (fsync(fd) < 0)
        return fail("FSYNC", "fsync");
    printf("FSYNCED\n");
    fflush(stdout);
    char buf[256];
    while (read(0, buf, sizeof(buf)) > 0)
        ;
    if (close(fd) < 0)
        return fail("FSYNC", "close");
    printf("CLOSED\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "now")) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        printf("%lld\n", (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec);
        return 0;
    }
    if (argc == 5 && !strcmp(argv[1], "mmap-write"))
        return mmap_write(argv[2], strtoull(argv[3], NULL, 10), (unsigned)atoi(argv[4]));
    if (argc == 3 && !strcmp(argv[1], "mmap-read"))
        return mmap_read(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "fsync-hold"))
        return fsync_hold(argv[2], argv[3]);
    fprintf(stderr, "usage: fs_probe now | mmap-write PATH SIZE SEED | mmap-read PATH | "
                    "fsync-hold PATH TEXT\n");
    return 2;
}
