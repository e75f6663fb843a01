
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * presence_load: the load generator of bench/presence.sh (issue 4).
 *
 *   presence_load load PORT CONNS ACTIVE SECS
 *       CONNS connections (users b1..bN) join one new public session;
 *       the first ACTIVE of them then flip typing on/off and presence
 *       away/online as fast as they can: each sends a window of 16 ops
 *       (7 typing, 9 presence) and a ping, and the next window when the
 *       pong is back.  Every connection counts what it receives.  Prints ops
 *       sent, ops refused (RATE_LIMITED), ops applied per second, and the
 *       typing/presence events received per second (the fan-out).
 *
 *   presence_load fill PORT MAX
 *       users f1, f2, ... join one new session, one connection each,
 *       until a join is refused (the zone is full) or MAX joined; prints
 *       "joined N".
 *
 * Blocking sockets for the setup (handshake, create, join), then one
 * epoll loop.  Client frames are masked with a zero key (allowed: the
 * payload goes out as it is).
 */


#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>


#define WINDOW  16


typedef struct {
    int       fd;
    int       active;
    int       waiting;          /* a window is out, its pong not back */
    int       typing;
    int       away;
    char     *buf;
    size_t    len;
    size_t    size;
} conn_t;


static int       port;
static uint64_t  ops_sent, ops_limited, other_errors;
static uint64_t  ev_typing, ev_presence, frames_in, bytes_in;


static double
now(void)
{
    struct timeval  tv;

    gettimeofday(&tv, NULL);

    return tv.tv_sec + tv.tv_usec / 1e6;
}


static void
die(const char *what)
{
    perror(what);
    exit(2);
}


static void
write_all(int fd, const char *p, size_t n)
{
    ssize_t  w;

    while (n) {
        w = write(fd, p, n);

        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN) {
                continue;
            }

            die("write");
        }

        p += w;
        n -= (size_t) w;
    }
}


/* one masked text frame (zero key) */

static size_t
frame(char *out, const char *text)
{
    size_t  n, h;

    n = strlen(text);
    out[0] = (char) 0x81;

    if (n < 126) {
        out[1] = (char) (0x80 | n);
        h = 2;

    } else {
        out[1] = (char) (0x80 | 126);
        out[2] = (char) (n >> 8);
        out[3] = (char) (n & 0xff);
        h = 4;
    }

    memset(out + h, 0, 4);
    memcpy(out + h + 4, text, n);

    return h + 4 + n;
}


static void
send_text(conn_t *c, const char *text)
{
    char    out[4096];
    size_t  n;

    n = frame(out, text);
    write_all(c->fd, out, n);
}


static void
reserve(conn_t *c, size_t more)
{
    if (c->len + more <= c->size) {
        return;
    }

    c->size = (c->len + more) * 2;
    c->buf = realloc(c->buf, c->size);

    if (c->buf == NULL) {
        die("realloc");
    }
}


/*
 * The next complete text frame's payload, NUL-terminated, copied into
 * out (at most outsize - 1 bytes kept); 1 if one was taken, 0 if more
 * bytes are needed.  Other frames are skipped.
 */

static int
next_frame(conn_t *c, char *out, size_t outsize, int *opcode)
{
    size_t    h, n;
    uint8_t  *p;

    for ( ;; ) {
        if (c->len < 2) {
            return 0;
        }

        p = (uint8_t *) c->buf;
        n = p[1] & 0x7f;
        h = 2;

        if (n == 126) {
            if (c->len < 4) {
                return 0;
            }

            n = (size_t) p[2] << 8 | p[3];
            h = 4;

        } else if (n == 127) {
            if (c->len < 10) {
                return 0;
            }

            n = 0;

            for (h = 2; h < 10; h++) {
                n = n << 8 | p[h];
            }
        }

        if (c->len < h + n) {
            return 0;
        }

        *opcode = p[0] & 0x0f;

        if (out) {
            size_t  k = n < outsize - 1 ? n : outsize - 1;

            memcpy(out, c->buf + h, k);
            out[k] = '\0';
        }

        memmove(c->buf, c->buf + h + n, c->len - h - n);
        c->len -= h + n;

        return 1;
    }
}


static int
fill(conn_t *c)
{
    ssize_t  n;

    reserve(c, 65536);

    n = read(c->fd, c->buf + c->len, c->size - c->len);

    if (n > 0) {
        c->len += (size_t) n;
        bytes_in += (uint64_t) n;
    }

    return (int) n;
}


/* blocks until a text frame containing needle arrives */

static void
wait_for(conn_t *c, const char *needle, char *out, size_t outsize)
{
    int  op;

    for ( ;; ) {
        while (next_frame(c, out, outsize, &op)) {
            if (op == 1 && strstr(out, needle)) {
                return;
            }
        }

        if (fill(c) <= 0) {
            fprintf(stderr, "connection closed waiting for %s\n", needle);
            exit(2);
        }
    }
}


static void
open_conn(conn_t *c, const char *user)
{
    int                 fd, one;
    char                req[512], *end;
    struct sockaddr_in  sin;

    memset(c, 0, sizeof(conn_t));

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        die("socket");
    }

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t) port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    if (connect(fd, (struct sockaddr *) &sin, sizeof(sin)) < 0) {
        die("connect");
    }

    one = 1;
    (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    c->fd = fd;

    snprintf(req, sizeof(req),
             "GET /chat?user=%s&name=%s HTTP/1.1\r\n"
             "Host: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\n"
             "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
             "Sec-WebSocket-Version: 13\r\n"
             "Sec-WebSocket-Protocol: collab.v1\r\n\r\n", user, user);

    write_all(fd, req, strlen(req));

    for ( ;; ) {
        if (fill(c) <= 0) {
            fprintf(stderr, "%s: no handshake answer\n", user);
            exit(2);
        }

        c->buf[c->len < c->size ? c->len : c->size - 1] = '\0';
        end = strstr(c->buf, "\r\n\r\n");

        if (end) {
            break;
        }
    }

    if (strncmp(c->buf, "HTTP/1.1 101", 12) != 0) {
        fprintf(stderr, "%s: handshake refused: %.40s\n", user, c->buf);
        exit(2);
    }

    end += 4;
    c->len -= (size_t) (end - c->buf);
    memmove(c->buf, end, c->len);
}


static void
create_session(conn_t *c, char *slug, size_t size)
{
    char   reply[4096], *p, *q;

    send_text(c, "{\"op\":\"create\",\"ref\":\"c\",\"title\":\"bench\","
                 "\"isPublic\":true}");
    wait_for(c, "\"ref\":\"c\"", reply, sizeof(reply));

    p = strstr(reply, "\"id\":\"");
    if (p == NULL) {
        fprintf(stderr, "create: %s\n", reply);
        exit(2);
    }

    p += 6;
    q = strchr(p, '"');

    if (q == NULL || (size_t) (q - p) >= size) {
        fprintf(stderr, "create: %s\n", reply);
        exit(2);
    }

    memcpy(slug, p, (size_t) (q - p));
    slug[q - p] = '\0';
}


/* 1 joined, 0 refused */

static int
join(conn_t *c, const char *slug)
{
    char  req[256], reply[65536];

    snprintf(req, sizeof(req),
             "{\"op\":\"join\",\"ref\":\"j\",\"session\":\"%s\"}", slug);
    send_text(c, req);
    wait_for(c, "\"ref\":\"j\"", reply, sizeof(reply));

    if (strstr(reply, "\"joined\"")) {
        return 1;
    }

    if (strstr(reply, "collab_zone") == NULL) {
        fprintf(stderr, "join: %.200s\n", reply);
    }

    return 0;
}


static void
send_window(conn_t *c, const char *slug)
{
    int     i;
    char    text[256], out[WINDOW * 300], *p;
    size_t  n;

    p = out;

    /*
     * 7 typing and 9 presence ops, each flipping its state: both end the
     * window the other way round from how it began, so that the state
     * a batch tick sees keeps changing and the fan-out is measured too.
     */

    for (i = 0; i < WINDOW; i++) {
        if (i < 7) {
            c->typing = !c->typing;
            snprintf(text, sizeof(text),
                     "{\"op\":\"typing\",\"session\":\"%s\",\"on\":%s}",
                     slug, c->typing ? "true" : "false");

        } else {
            c->away = !c->away;
            snprintf(text, sizeof(text),
                     "{\"op\":\"presence\",\"session\":\"%s\","
                     "\"status\":\"%s\"}",
                     slug, c->away ? "away" : "online");
        }

        p += frame(p, text);
    }

    p += frame(p, "{\"op\":\"ping\",\"ref\":\"w\"}");
    n = (size_t) (p - out);

    write_all(c->fd, out, n);

    ops_sent += WINDOW;
    c->waiting = 1;
}


static void
run_load(int nconns, int nactive, double secs)
{
    int                 i, n, ep, op;
    char                user[32], slug[128], text[512];
    conn_t             *c, *conns;
    double              t0, t1, end;
    struct epoll_event  ev, evs[256];

    conns = calloc((size_t) nconns, sizeof(conn_t));
    if (conns == NULL) {
        die("calloc");
    }

    t0 = now();

    for (i = 0; i < nconns; i++) {
        snprintf(user, sizeof(user), "b%d", i + 1);
        open_conn(&conns[i], user);
    }

    create_session(&conns[0], slug, sizeof(slug));

    for (i = 0; i < nconns; i++) {
        if (!join(&conns[i], slug)) {
            fprintf(stderr, "join %d refused\n", i + 1);
            exit(2);
        }
    }

    printf("setup: %d connections joined session %s in %.1fs\n",
           nconns, slug, now() - t0);

    ep = epoll_create1(0);
    if (ep < 0) {
        die("epoll_create1");
    }

    for (i = 0; i < nconns; i++) {
        c = &conns[i];
        c->active = i < nactive;
        (void) fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK);

        ev.events = EPOLLIN;
        ev.data.ptr = c;

        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
            die("epoll_ctl");
        }
    }

    /* what arrived during the setup is not the run's */
    ev_typing = ev_presence = frames_in = bytes_in = 0;

    t0 = now();
    end = t0 + secs;

    for (i = 0; i < nactive; i++) {
        send_window(&conns[i], slug);
    }

    while (now() < end) {
        n = epoll_wait(ep, evs, 256, 50);

        for (i = 0; i < n; i++) {
            c = evs[i].data.ptr;

            if (fill(c) == 0) {
                fprintf(stderr, "a connection was closed by the server\n");
                exit(2);
            }

            while (next_frame(c, text, sizeof(text), &op)) {
                if (op != 1) {
                    continue;
                }

                frames_in++;

                if (strstr(text, "\"op\":\"typing\"")) {
                    ev_typing++;

                } else if (strstr(text, "\"op\":\"presence\"")) {
                    ev_presence++;

                } else if (strstr(text, "RATE_LIMITED")) {
                    ops_limited++;

                } else if (strstr(text, "\"op\":\"pong\"")) {
                    c->waiting = 0;

                    if (c->active && now() < end) {
                        send_window(c, slug);
                    }

                } else if (strstr(text, "\"op\":\"error\"")) {
                    if (other_errors++ < 3) {
                        fprintf(stderr, "error: %s\n", text);
                    }
                }
            }
        }
    }

    t1 = now() - t0;

    printf("load: %d connections, %d active, %.1fs\n",
           nconns, nactive, t1);
    printf("  ops sent            %llu (%.0f/s)\n",
           (unsigned long long) ops_sent, ops_sent / t1);
    printf("  ops RATE_LIMITED    %llu\n",
           (unsigned long long) ops_limited);
    printf("  ops applied         %llu (%.0f/s)\n",
           (unsigned long long) (ops_sent - ops_limited),
           (ops_sent - ops_limited) / t1);
    printf("  typing events in    %llu (%.0f/s)\n",
           (unsigned long long) ev_typing, ev_typing / t1);
    printf("  presence events in  %llu (%.0f/s)\n",
           (unsigned long long) ev_presence, ev_presence / t1);
    printf("  frames in           %llu (%.0f/s), %.1f MB/s\n",
           (unsigned long long) frames_in, frames_in / t1,
           bytes_in / t1 / 1e6);
    printf("  other errors        %llu\n",
           (unsigned long long) other_errors);
}


static void
run_fill(int max)
{
    int      i, joined;
    char     user[32], slug[128];
    conn_t  *conns;

    conns = calloc((size_t) max + 1, sizeof(conn_t));
    if (conns == NULL) {
        die("calloc");
    }

    open_conn(&conns[0], "fowner");
    create_session(&conns[0], slug, sizeof(slug));

    joined = 0;

    for (i = 1; i <= max; i++) {
        snprintf(user, sizeof(user), "f%07d", i);
        open_conn(&conns[i], user);

        if (!join(&conns[i], slug)) {
            break;
        }

        joined++;
    }

    printf("joined %d\n", joined);
}


int
main(int argc, char **argv)
{
    if (argc == 6 && strcmp(argv[1], "load") == 0) {
        port = atoi(argv[2]);
        run_load(atoi(argv[3]), atoi(argv[4]), atof(argv[5]));
        return other_errors ? 1 : 0;
    }

    if (argc == 4 && strcmp(argv[1], "fill") == 0) {
        port = atoi(argv[2]);
        run_fill(atoi(argv[3]));
        return 0;
    }

    fprintf(stderr, "usage: presence_load load PORT CONNS ACTIVE SECS\n"
                    "       presence_load fill PORT MAX\n");
    return 2;
}
