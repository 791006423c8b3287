/* A lean WebSocket echo load generator for bench/websocket.py (compiled there with `cc -O2`).
 *
 *   ws_client PORT CONNECTIONS PAYLOAD_BYTES WARMUP_SECONDS SECONDS
 *
 * Opens CONNECTIONS WebSockets to 127.0.0.1:PORT, then on each one sends a pre-masked binary frame of
 * PAYLOAD_BYTES and waits for its echo (counted in bytes: the echo's size is known) before sending the next.
 * Prints "ROUND_TRIPS ELAPSED_SECONDS" for the measured window. One thread, epoll, no allocation per
 * message: a round trip costs the client two system calls and a few comparisons, so the server saturates
 * its core first (a Python client costs about as much CPU per round trip as the server does).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    int open;          /* handshake done */
    size_t head_len;   /* handshake response bytes seen */
    char head[4096];
    size_t got;        /* echo bytes received towards the current message */
    size_t woff;       /* bytes of the frame written (a big frame may take several writes) */
    int want_out;
} conn_t;

static unsigned char *frame;
static size_t frame_len, expect;
static long long count;
static int running = 1;
static int ep;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void set_out(conn_t *c, int on) {
    if (c->want_out == on) return;
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    c->want_out = on;
}

static void push(conn_t *c) {
    while (c->woff < frame_len) {
        ssize_t n = write(c->fd, frame + c->woff, frame_len - c->woff);
        if (n < 0) {
            if (errno == EAGAIN) { set_out(c, 1); return; }
            perror("write"); exit(1);
        }
        c->woff += n;
    }
    set_out(c, 0);
}

static void start(conn_t *c) { c->woff = 0; push(c); }

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: %s PORT CONNECTIONS PAYLOAD WARMUP SECONDS\n", argv[0]); return 2; }
    int port = atoi(argv[1]), nconn = atoi(argv[2]);
    size_t payload = strtoull(argv[3], 0, 10);
    double warmup = atof(argv[4]), seconds = atof(argv[5]);
    size_t hl = payload < 126 ? 2 : payload < 65536 ? 4 : 10;
    frame_len = hl + 4 + payload;
    expect = (payload < 126 ? 2 : payload < 65536 ? 4 : 10) + payload;
    frame = malloc(frame_len);
    frame[0] = 0x82;
    if (payload < 126) frame[1] = 0x80 | payload;
    else if (payload < 65536) { frame[1] = 0x80 | 126; frame[2] = payload >> 8; frame[3] = payload & 0xff; }
    else { frame[1] = 0x80 | 127; for (int i = 0; i < 8; i++) frame[2 + i] = (payload >> (56 - 8 * i)) & 0xff; }
    unsigned char key[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy(frame + hl, key, 4);
    for (size_t i = 0; i < payload; i++) frame[hl + 4 + i] = (unsigned char)(i * 7) ^ key[i % 4];

    char req[512];
    int reqlen = snprintf(req, sizeof req,
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", port);

    ep = epoll_create1(0);
    conn_t *conns = calloc(nconn, sizeof(conn_t));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    for (int i = 0; i < nconn; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 1; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (write(fd, req, reqlen) != reqlen) { perror("handshake"); return 1; }
        conns[i].fd = fd;
    }
    int opened = 0;
    for (int i = 0; i < nconn; i++) {  /* blocking handshakes, then non-blocking echo */
        conn_t *c = &conns[i];
        while (!c->open) {
            ssize_t n = read(c->fd, c->head + c->head_len, sizeof c->head - c->head_len - 1);
            if (n <= 0) { fprintf(stderr, "handshake failed\n"); return 1; }
            c->head_len += n;
            c->head[c->head_len] = 0;
            char *end = strstr(c->head, "\r\n\r\n");
            if (end) {
                if (strncmp(c->head, "HTTP/1.1 101", 12) != 0) { fprintf(stderr, "not 101: %.100s\n", c->head); return 1; }
                c->got = c->head_len - (end + 4 - c->head);
                c->open = 1;
                opened++;
            }
        }
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    for (int i = 0; i < nconn; i++) start(&conns[i]);

    static unsigned char buf[1 << 18];
    struct epoll_event events[256];
    double t_start = now(), t0 = 0, t1 = 0;
    long long c0 = 0;
    int measuring = 0;
    while (running) {
        int n = epoll_wait(ep, events, 256, 10);
        for (int e = 0; e < n; e++) {
            conn_t *c = events[e].data.ptr;
            if (events[e].events & EPOLLOUT) push(c);
            if (events[e].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                for (;;) {
                    ssize_t r = read(c->fd, buf, sizeof buf);
                    if (r < 0) { if (errno == EAGAIN) break; perror("read"); return 1; }
                    if (r == 0) { fprintf(stderr, "server closed a connection\n"); return 1; }
                    c->got += r;
                    while (c->got >= expect) {
                        c->got -= expect;
                        count++;
                        start(c);
                    }
                    if ((size_t)r < sizeof buf) break;
                }
            }
        }
        double t = now();
        if (!measuring && t - t_start >= warmup) { measuring = 1; t0 = t; c0 = count; }
        if (measuring && t - t0 >= seconds) { t1 = t; running = 0; }
    }
    printf("%lld %.6f\n", count - c0, t1 - t0);
    return 0;
}
