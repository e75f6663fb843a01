
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * benchutil: what every load tool of bench/ needs besides the protocol:
 * die() with the tool's name, a growable byte buffer, the signalfd that
 * carries the stop signals into an epoll loop, the wait of that loop and
 * the ws:// URL of a target.  Each tool defines bench_name, the prefix
 * of its error lines:
 *
 *     const char  bench_name[] = "wsload";
 *
 * Built with each tool: cc ... -o aimock aimock.c benchutil.c
 */


#ifndef BENCHUTIL_H
#define BENCHUTIL_H


#include <stddef.h>
#include <netinet/in.h>
#include <sys/epoll.h>


typedef unsigned char  u_char;


/* bytes p[0 .. len) of cap; one more byte is always there for a '\0' */

typedef struct {
    u_char        *p;
    size_t         len;
    size_t         cap;
} bench_buf_t;


extern const char  bench_name[];


void bench_die(const char *fmt, ...)
    __attribute__((noreturn, format(printf, 1, 2)));

void bench_buf_add(bench_buf_t *b, const void *data, size_t len);

int bench_signalfd(int signo, ...);
int bench_epoll_wait(int ep, struct epoll_event *evs, int max, int timeout);

void bench_parse_url(const char *url, struct sockaddr_in *addr,
    char *host, size_t host_size, char *hostport, size_t hostport_size,
    char *path, size_t path_size);


#endif /* BENCHUTIL_H */
