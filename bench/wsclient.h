
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * wsclient: the client side of RFC 6455 shared by the load generators
 * bench/wsload.c, bench/fanload.c and bench/aidrive.c: the handshake
 * request and the check of its reply (Sec-WebSocket-Accept), masked
 * client frames (appended to a bench_buf_t), the header of server frames,
 * the non-blocking connect, a latency histogram and time and random
 * helpers.  The connection structures and error accounting stay in each
 * program; these work on plain memory and buffers.
 *
 * Built with each program: cc ... -o wsload wsload.c wsclient.c benchutil.c
 */


#ifndef WSCLIENT_H
#define WSCLIENT_H


#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>
#include <sys/types.h>
#include <netinet/in.h>

#include "benchutil.h"


#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT  24
#endif

#define WS_GUID           "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* a client frame header: 2 + 8 bytes of length + 4 of mask */
#define WS_HEADER_MAX     14

#define WS_HIST_SUB       64
#define WS_HIST_BUCKETS   (WS_HIST_SUB * 40)


/* a server frame header */

typedef struct {
    uint64_t       len;         /* payload length */
    unsigned       fin;         /* 0x80 or 0 */
    unsigned       opcode;
    unsigned       rsv;         /* the reserved bits, 0x70 */
    unsigned       masked;      /* 0x80 or 0 */
} ws_frame_t;


static inline uint64_t
ws_now_us(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);

    return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}


/* xorshift32 */

static inline uint32_t
ws_rnd(uint32_t *state)
{
    uint32_t  x;

    x = *state;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *state = x;

    return x;
}


/* latency histogram: 64 linear sub-buckets per power of two, in us */

static inline unsigned
ws_hist_index(uint64_t v)
{
    unsigned  e;

    if (v < WS_HIST_SUB) {
        return (unsigned) v;
    }

    e = 63 - (unsigned) __builtin_clzll(v) - 5;      /* v >> e in 64..127 */

    if (e + 1 >= WS_HIST_BUCKETS / WS_HIST_SUB) {
        return WS_HIST_BUCKETS - 1;
    }

    return e * WS_HIST_SUB + (unsigned) (v >> e);
}


static inline uint64_t
ws_hist_value(unsigned i)
{
    unsigned  e;

    if (i < 2 * WS_HIST_SUB) {
        return i;
    }

    /* the upper end of the bucket */
    e = i / WS_HIST_SUB - 1;

    return ((uint64_t) (i - e * WS_HIST_SUB) << e) + ((uint64_t) 1 << e)
           - 1;
}


static inline void
ws_mask(u_char *p, size_t len, const u_char mask[4])
{
    size_t  i;

    for (i = 0; i < len; i++) {
        p[i] ^= mask[i & 3];
    }
}


void ws_sha1(const u_char *data, size_t len, u_char out[20]);
void ws_base64(const u_char *src, size_t len, char *dst);
void ws_accept(const char *key, char *accept);
void ws_key(char key[25], uint32_t *rng);

int ws_connect(const struct sockaddr_in *dst, unsigned src_ips, unsigned id);
int ws_request(char *buf, size_t size, const char *path, const char *query,
    const char *hostport, const char *key, const char *extra);
ssize_t ws_reply(u_char *in, size_t len, const char *key);

size_t ws_frame_header(u_char hdr[WS_HEADER_MAX], unsigned opcode,
    size_t len, uint32_t mask);
size_t ws_frame_parse(const u_char *p, size_t avail, ws_frame_t *f);
void ws_frame_add(bench_buf_t *b, unsigned opcode, const u_char *data,
    size_t len, uint32_t mask);
void ws_text_add(bench_buf_t *b, uint32_t mask, const char *fmt,
    va_list args);

uint64_t ws_hist_percentile(const uint64_t *hist, uint64_t count,
    uint64_t max, double pct);


#endif /* WSCLIENT_H */
