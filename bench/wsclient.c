
/*
 * Copyright (C) ngx_collab authors
 */


#define _GNU_SOURCE

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "wsclient.h"


/* SHA-1 (FIPS 180-4), for Sec-WebSocket-Accept only */

#define ROL(x, n)  (((x) << (n)) | ((x) >> (32 - (n))))

void
ws_sha1(const u_char *data, size_t len, u_char out[20])
{
    u_char     block[64];
    size_t     i, off, total;
    uint32_t   h[5], w[80], a, b, c, d, e, f, k, t;
    uint64_t   bits;

    h[0] = 0x67452301;
    h[1] = 0xefcdab89;
    h[2] = 0x98badcfe;
    h[3] = 0x10325476;
    h[4] = 0xc3d2e1f0;

    bits = (uint64_t) len * 8;
    total = ((len + 8) / 64 + 1) * 64;

    for (off = 0; off < total; off += 64) {

        /* the block: message bytes, then 0x80, zeros, the bit length */
        for (i = 0; i < 64; i++) {
            if (off + i < len) {
                block[i] = data[off + i];

            } else if (off + i == len) {
                block[i] = 0x80;

            } else if (off + i >= total - 8) {
                block[i] = (u_char) (bits >> (8 * (total - 1 - off - i)));

            } else {
                block[i] = 0;
            }
        }

        for (i = 0; i < 16; i++) {
            w[i] = (uint32_t) block[4 * i] << 24
                   | (uint32_t) block[4 * i + 1] << 16
                   | (uint32_t) block[4 * i + 2] << 8
                   | block[4 * i + 3];
        }

        for (i = 16; i < 80; i++) {
            t = w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16];
            w[i] = ROL(t, 1);
        }

        a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4];

        for (i = 0; i < 80; i++) {
            if (i < 20) {
                f = (b & c) | (~b & d);
                k = 0x5a827999;

            } else if (i < 40) {
                f = b ^ c ^ d;
                k = 0x6ed9eba1;

            } else if (i < 60) {
                f = (b & c) | (b & d) | (c & d);
                k = 0x8f1bbcdc;

            } else {
                f = b ^ c ^ d;
                k = 0xca62c1d6;
            }

            t = ROL(a, 5) + f + e + k + w[i];
            e = d;
            d = c;
            c = ROL(b, 30);
            b = a;
            a = t;
        }

        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }

    for (i = 0; i < 20; i++) {
        out[i] = (u_char) (h[i / 4] >> (24 - 8 * (i % 4)));
    }
}


void
ws_base64(const u_char *src, size_t len, char *dst)
{
    size_t       i;
    uint32_t     v;
    static const char  tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    for (i = 0; i + 2 < len; i += 3) {
        v = (uint32_t) src[i] << 16 | (uint32_t) src[i + 1] << 8 | src[i + 2];
        *dst++ = tab[v >> 18];
        *dst++ = tab[(v >> 12) & 63];
        *dst++ = tab[(v >> 6) & 63];
        *dst++ = tab[v & 63];
    }

    if (len - i == 1) {
        v = (uint32_t) src[i] << 16;
        *dst++ = tab[v >> 18];
        *dst++ = tab[(v >> 12) & 63];
        *dst++ = '=';
        *dst++ = '=';

    } else if (len - i == 2) {
        v = (uint32_t) src[i] << 16 | (uint32_t) src[i + 1] << 8;
        *dst++ = tab[v >> 18];
        *dst++ = tab[(v >> 12) & 63];
        *dst++ = tab[(v >> 6) & 63];
        *dst++ = '=';
    }

    *dst = '\0';
}


/* the Sec-WebSocket-Accept of a key (accept: 29 bytes at least) */

void
ws_accept(const char *key, char *accept)
{
    char    buf[64];
    u_char  md[20];

    snprintf(buf, sizeof(buf), "%s%s", key, WS_GUID);
    ws_sha1((u_char *) buf, strlen(buf), md);
    ws_base64(md, 20, accept);
}


/* a Sec-WebSocket-Key: 16 random bytes, base64 */

void
ws_key(char key[25], uint32_t *rng)
{
    u_char    raw[16];
    uint32_t  r;
    unsigned  i;

    for (i = 0; i < 16; i += 4) {
        r = ws_rnd(rng);
        memcpy(raw + i, &r, 4);
    }

    ws_base64(raw, 16, key);
}


/*
 * A non-blocking TCP_NODELAY socket connecting to dst; with src_ips > 0
 * bound to 127.0.0.(2 + id % src_ips) first.  Returns the socket, or -1
 * with errno set (the socket is closed then).
 */

int
ws_connect(const struct sockaddr_in *dst, unsigned src_ips, unsigned id)
{
    int                 fd, one, err;
    struct sockaddr_in  src;

    fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

    if (fd == -1) {
        return -1;
    }

    one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(int));

    if (src_ips > 0) {
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(int));

        memset(&src, 0, sizeof(src));
        src.sin_family = AF_INET;
        src.sin_addr.s_addr = htonl(0x7f000002 + id % src_ips);

        if (bind(fd, (struct sockaddr *) &src, sizeof(src)) == -1) {
            goto failed;
        }
    }

    if (connect(fd, (const struct sockaddr *) dst, sizeof(*dst)) == -1
        && errno != EINPROGRESS)
    {
        goto failed;
    }

    return fd;

failed:

    err = errno;
    close(fd);
    errno = err;

    return -1;
}


/*
 * The handshake request for path + query; extra: more header lines,
 * each ending in CRLF, or "".  Returns what snprintf() does.
 */

int
ws_request(char *buf, size_t size, const char *path, const char *query,
    const char *hostport, const char *key, const char *extra)
{
    return snprintf(buf, size,
                    "GET %s%s HTTP/1.1\r\n"
                    "Host: %s\r\n"
                    "Upgrade: websocket\r\n"
                    "Connection: Upgrade\r\n"
                    "Sec-WebSocket-Key: %s\r\n"
                    "Sec-WebSocket-Version: 13\r\n"
                    "%s"
                    "\r\n",
                    path, query, hostport, key, extra);
}


/*
 * Checks the handshake reply in in[0 .. len) (in[len] must be writable;
 * the header is overwritten): returns its length with the blank line,
 * 0 if it is not complete yet, -1 if it is not a 101 with the right
 * Sec-WebSocket-Accept or is over 8 KB without an end.
 */

ssize_t
ws_reply(u_char *in, size_t len, const char *key)
{
    char    *end, *h, *line, accept[40];
    size_t   hlen;
    int      ok;

    in[len] = '\0';

    end = strstr((char *) in, "\r\n\r\n");

    if (end == NULL) {
        return len > 8192 ? -1 : 0;
    }

    hlen = (size_t) (end + 4 - (char *) in);
    *end = '\0';

    if (strncmp((char *) in, "HTTP/1.1 101 ", 13) != 0) {
        return -1;
    }

    ws_accept(key, accept);
    ok = 0;

    for (line = strstr((char *) in, "\r\n"); line; line = h) {
        line += 2;
        h = strstr(line, "\r\n");

        if (h) {
            *h = '\0';
        }

        if (strncasecmp(line, "Sec-WebSocket-Accept:", 21) == 0) {
            line += 21;

            while (*line == ' ') {
                line++;
            }

            ok = strcmp(line, accept) == 0;
        }
    }

    if (!ok) {
        return -1;
    }

    return (ssize_t) hlen;
}


/*
 * The header of a masked client frame (FIN set) into hdr, the 4 bytes of
 * mask (in memory order) last; returns its length.  The payload is to be
 * masked with ws_mask(payload, len, hdr + length - 4).
 */

size_t
ws_frame_header(u_char hdr[WS_HEADER_MAX], unsigned opcode, size_t len,
    uint32_t mask)
{
    size_t  i, h;

    hdr[0] = (u_char) (0x80 | opcode);

    if (len < 126) {
        hdr[1] = (u_char) (0x80 | len);
        h = 2;

    } else if (len <= 0xffff) {
        hdr[1] = 0x80 | 126;
        hdr[2] = (u_char) (len >> 8);
        hdr[3] = (u_char) len;
        h = 4;

    } else {
        hdr[1] = 0x80 | 127;

        for (i = 0; i < 8; i++) {
            hdr[2 + i] = (u_char) ((uint64_t) len >> (56 - 8 * i));
        }

        h = 10;
    }

    memcpy(hdr + h, &mask, 4);

    return h + 4;
}


/* a masked client frame of data[0 .. len) appended to b */

void
ws_frame_add(bench_buf_t *b, unsigned opcode, const u_char *data,
    size_t len, uint32_t mask)
{
    u_char  hdr[WS_HEADER_MAX];
    size_t  h, off;

    h = ws_frame_header(hdr, opcode, len, mask);

    bench_buf_add(b, hdr, h);

    off = b->len;
    bench_buf_add(b, data, len);

    /* bench_buf_add() may have moved the buffer */
    ws_mask(b->p + off, len, hdr + h - 4);
}


/* a masked text frame of the printf() text appended to b, up to 1 KB */

void
ws_text_add(bench_buf_t *b, uint32_t mask, const char *fmt, va_list args)
{
    int   n;
    char  buf[1024];

    n = vsnprintf(buf, sizeof(buf), fmt, args);

    if (n < 0 || (size_t) n >= sizeof(buf)) {
        bench_die("message too long");
    }

    ws_frame_add(b, 0x1, (u_char *) buf, (size_t) n, mask);
}


/*
 * The header of a server frame at p, avail >= 2: fills fin, opcode, rsv
 * and masked from the first two bytes in any case; returns the header
 * length with f->len set, or 0 while the extended length is incomplete.
 */

size_t
ws_frame_parse(const u_char *p, size_t avail, ws_frame_t *f)
{
    size_t    h, i;
    uint64_t  len;

    f->fin = p[0] & 0x80;
    f->rsv = p[0] & 0x70;
    f->opcode = p[0] & 0x0f;
    f->masked = p[1] & 0x80;

    len = p[1] & 0x7f;
    h = 2;

    if (len == 126) {
        if (avail < 4) {
            return 0;
        }

        len = (uint64_t) p[2] << 8 | p[3];
        h = 4;

    } else if (len == 127) {
        if (avail < 10) {
            return 0;
        }

        len = 0;

        for (i = 0; i < 8; i++) {
            len = len << 8 | p[2 + i];
        }

        h = 10;
    }

    f->len = len;

    return h;
}


/* the pct percentile of a histogram of count values up to max, in us */

uint64_t
ws_hist_percentile(const uint64_t *hist, uint64_t count, uint64_t max,
    double pct)
{
    unsigned  i;
    uint64_t  want, seen;

    if (count == 0) {
        return 0;
    }

    want = (uint64_t) (pct / 100.0 * (double) count + 0.5);

    if (want == 0) {
        want = 1;
    }

    seen = 0;

    for (i = 0; i < WS_HIST_BUCKETS; i++) {
        seen += hist[i];

        if (seen >= want) {
            return ws_hist_value(i) < max ? ws_hist_value(i) : max;
        }
    }

    return max;
}
