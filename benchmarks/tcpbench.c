/*
 * tcpbench: the traffic generator of benchmarks/packet_path.py (built by it with cc, run inside namespaces).
 *
 *   tcpbench server PORT                  answer clients on 0.0.0.0:PORT, one connection at a time
 *   tcpbench crr    HOST PORT SECONDS     new-connection rate: connect, 1-byte request, 1-byte response, close
 *   tcpbench rr     HOST PORT SECONDS     request/response latency on one established connection
 *   tcpbench stream HOST PORT SECONDS     TCP throughput, 128 KiB writes, counted by the server
 *
 * Every client prints one line "ok <transactions or bytes> <seconds> <median us> <p99 us>" or "error <what>"
 * (exit 1). Debian 12 ships no netperf (whose TCP_CRR is the usual connection-rate test), so the rate needs a client
 * of its own; rr and stream use the same server and port so that every firewall variant allows exactly one port.
 * crr closes with SO_LINGER 0 (a reset): no TIME_WAIT, so a run never runs out of ephemeral ports.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (128 * 1024)
#define MAX_SAMPLES (1 << 22)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void fail(const char *what)
{
    printf("error %s: %s\n", what, strerror(errno));
    exit(1);
}

static int full_io(int fd, char *buf, size_t len, int writing)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = writing ? write(fd, buf + done, len - done) : read(fd, buf + done, len - done);
        if (n <= 0)
            return -1;
        done += (size_t)n;
    }
    return 0;
}

static void tune(int fd)
{
    int one = 1;
    struct timeval tv = {2, 0};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)); /* also bounds connect() */
}

static void serve(int fd, char *buf)
{
    char kind;
    if (read(fd, &kind, 1) != 1)
        return;
    if (kind == 'C') {
        write(fd, &kind, 1);
        read(fd, &kind, 1); /* the client's reset */
    } else if (kind == 'R') {
        while (read(fd, &kind, 1) == 1 && write(fd, &kind, 1) == 1)
            ;
    } else if (kind == 'S') {
        uint64_t total = 0;
        ssize_t n;
        while ((n = read(fd, buf, CHUNK)) > 0)
            total += (uint64_t)n;
        full_io(fd, (char *)&total, sizeof(total), 1);
    }
}

static void server(int port)
{
    static char buf[CHUNK];
    int one = 1;
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 1024))
        fail("listen");
    printf("ready\n");
    fflush(stdout);
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        tune(fd);
        serve(fd, buf);
        close(fd);
    }
}

static int dial(struct sockaddr_in *addr, char kind)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        fail("socket");
    tune(fd);
    if (connect(fd, (struct sockaddr *)addr, sizeof(*addr)))
        fail("connect");
    if (write(fd, &kind, 1) != 1)
        fail("write");
    return fd;
}

static int by_value(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void report(double count, double seconds, float *samples, long n)
{
    double median = 0, p99 = 0;
    if (n > 0) {
        qsort(samples, (size_t)n, sizeof(float), by_value);
        median = samples[n / 2];
        p99 = samples[(long)(n * 0.99)];
    }
    printf("ok %.0f %.6f %.2f %.2f\n", count, seconds, median, p99);
}

int main(int argc, char **argv)
{
    static float samples[MAX_SAMPLES];
    static char buf[CHUNK];
    struct sockaddr_in addr = {.sin_family = AF_INET};
    long n = 0;
    double start, end, seconds, t0;
    char byte = 'x';

    if (argc == 3 && strcmp(argv[1], "server") == 0) {
        server(atoi(argv[2]));
        return 1;
    }
    if (argc != 5 || inet_pton(AF_INET, argv[2], &addr.sin_addr) != 1) {
        fprintf(stderr, "usage: tcpbench server PORT | tcpbench crr|rr|stream HOST PORT SECONDS\n");
        return 2;
    }
    addr.sin_port = htons(atoi(argv[3]));
    seconds = atof(argv[4]);

    if (strcmp(argv[1], "crr") == 0) {
        struct linger reset = {1, 0};
        start = now();
        end = start + seconds;
        do {
            t0 = now();
            int fd = dial(&addr, 'C');
            if (read(fd, &byte, 1) != 1)
                fail("read");
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
            close(fd);
            t0 = now() - t0;
            if (n < MAX_SAMPLES)
                samples[n] = (float)(t0 * 1e6);
            n++;
        } while (now() < end);
        report((double)n, now() - start, samples, n < MAX_SAMPLES ? n : MAX_SAMPLES);
    } else if (strcmp(argv[1], "rr") == 0) {
        int fd = dial(&addr, 'R');
        start = now();
        end = start + seconds;
        do {
            t0 = now();
            if (write(fd, &byte, 1) != 1 || read(fd, &byte, 1) != 1)
                fail("request/response");
            t0 = now() - t0;
            if (n < MAX_SAMPLES)
                samples[n] = (float)(t0 * 1e6);
            n++;
        } while (now() < end);
        report((double)n, now() - start, samples, n < MAX_SAMPLES ? n : MAX_SAMPLES);
        close(fd);
    } else if (strcmp(argv[1], "stream") == 0) {
        uint64_t total = 0;
        int fd = dial(&addr, 'S');
        memset(buf, 'x', sizeof(buf));
        start = now();
        end = start + seconds;
        do {
            if (full_io(fd, buf, CHUNK, 1))
                fail("write");
        } while (now() < end);
        shutdown(fd, SHUT_WR);
        if (full_io(fd, (char *)&total, sizeof(total), 0))
            fail("server count");
        report((double)total, now() - start, NULL, 0);
        close(fd);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
    }
    return 0;
}
