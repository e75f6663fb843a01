
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_WS_FRAME_H_INCLUDED_
#define _NGX_COLLAB_WS_FRAME_H_INCLUDED_


/*
 * RFC 6455 frame codec, server side.  Pure functions over byte buffers:
 * no nginx runtime, no allocation, no I/O, so that unit tests and the
 * fuzzer link this file alone and feed it input one byte at a time.
 */


#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>


#define NGX_COLLAB_WS_OP_CONT           0x0
#define NGX_COLLAB_WS_OP_TEXT           0x1
#define NGX_COLLAB_WS_OP_BINARY         0x2
#define NGX_COLLAB_WS_OP_CLOSE          0x8
#define NGX_COLLAB_WS_OP_PING           0x9
#define NGX_COLLAB_WS_OP_PONG           0xa

#define NGX_COLLAB_WS_CLOSE_NORMAL      1000
#define NGX_COLLAB_WS_CLOSE_GOING_AWAY  1001
#define NGX_COLLAB_WS_CLOSE_PROTOCOL    1002
#define NGX_COLLAB_WS_CLOSE_UNSUPPORTED 1003
#define NGX_COLLAB_WS_CLOSE_NO_STATUS   1005
#define NGX_COLLAB_WS_CLOSE_INVALID     1007
#define NGX_COLLAB_WS_CLOSE_POLICY      1008
#define NGX_COLLAB_WS_CLOSE_TOO_BIG     1009
#define NGX_COLLAB_WS_CLOSE_INTERNAL    1011
#define NGX_COLLAB_WS_CLOSE_RESTART     1012
#define NGX_COLLAB_WS_CLOSE_TRY_LATER   1013

/* the longest header a server writes: 2 + 8 bytes of length, no mask */
#define NGX_COLLAB_WS_MAX_HEADER        10

/* control frame payloads are at most 125 bytes (RFC 6455, 5.5) */
#define NGX_COLLAB_WS_MAX_CONTROL       125


/* ngx_collab_ws_parse() results */
#define NGX_COLLAB_WS_AGAIN             0
#define NGX_COLLAB_WS_FRAME             1
#define NGX_COLLAB_WS_DATA              2
#define NGX_COLLAB_WS_FRAME_END         3
#define NGX_COLLAB_WS_ERROR             4


/*
 * Incremental UTF-8 validator (RFC 3629): rejects overlong forms,
 * surrogates and code points above U+10FFFF at the first byte that
 * makes the sequence invalid, even when the sequence is split across
 * calls.  Zero-initialised state is the start state.
 */

typedef struct {
    uint8_t                     need;    /* continuation bytes still due */
    uint8_t                     lo;      /* range of the next byte */
    uint8_t                     hi;
} ngx_collab_utf8_t;


typedef struct {
    /* set by the caller before the first call, zero means unlimited */
    uint64_t                    max_message;

    /* the frame being parsed, valid from NGX_COLLAB_WS_FRAME on */
    uint64_t                    frame_len;
    unsigned                    opcode:4;
    unsigned                    fin:1;
    unsigned                    control:1;

    /* the data message in progress, valid while in_message is set */
    unsigned                    in_message:1;
    unsigned                    message_opcode:4;
    uint64_t                    message_len;

    /* NGX_COLLAB_WS_DATA: unmasked payload bytes, in the caller's buffer */
    u_char                     *data;
    size_t                      len;

    /* NGX_COLLAB_WS_ERROR: close code to send and a static reason */
    uint16_t                    error;
    const char                 *reason;

    /* private */
    unsigned                    state:4;
    unsigned                    header_left:4;
    unsigned                    mask_off:2;
    u_char                      mask[4];
    uint64_t                    left;
    ngx_collab_utf8_t           utf8;
} ngx_collab_ws_parser_t;


/*
 * Parses client frames from [*pos, last).  Advances *pos past what it
 * consumed and returns:
 *
 *   NGX_COLLAB_WS_AGAIN      the input ran out; call again with more;
 *   NGX_COLLAB_WS_FRAME      a frame header was read and validated:
 *                            opcode, fin, control, frame_len are set;
 *   NGX_COLLAB_WS_DATA       p->data, p->len: a chunk of the payload,
 *                            unmasked in place; text chunks are already
 *                            checked to be valid UTF-8 so far;
 *   NGX_COLLAB_WS_FRAME_END  the frame's payload is complete (follows
 *                            FRAME directly for an empty payload); for a
 *                            data frame with fin set the message is
 *                            complete and in_message is cleared;
 *   NGX_COLLAB_WS_ERROR      p->error holds the close code (1002, 1007 or
 *                            1009) and p->reason a static description;
 *                            the parser must not be called again.
 *
 * Enforced here: mask bit, reserved bits, known opcodes, control frames
 * unfragmented and at most 125 bytes, continuation only inside a
 * fragmented message, no new data frame inside one, 63-bit lengths,
 * message
 * size limit (checked on each header, before any payload), and UTF-8
 * of text messages across fragments, failing at the first bad byte.
 * Close frame payloads are handed out as DATA and are checked by
 * ngx_collab_ws_close_check() once complete.
 *
 * Not enforced: the minimal length encoding.  RFC 6455, 5.2 asks senders
 * for it but gives receivers no duty to fail on a longer form, and data
 * frames in one are accepted (a control frame's extended length is above
 * 125 and fails anyway).
 */
int ngx_collab_ws_parse(ngx_collab_ws_parser_t *p, u_char **pos, u_char *last);

/*
 * Writes an unmasked server frame header for a payload of len bytes into
 * buf (at least NGX_COLLAB_WS_MAX_HEADER bytes) and returns its size.
 */
size_t ngx_collab_ws_frame_header(u_char *buf, unsigned opcode, unsigned fin,
    uint64_t len);

/*
 * Validates a complete close frame payload.  Returns 0 and sets *code to
 * the peer's status code (NGX_COLLAB_WS_CLOSE_NO_STATUS for an empty
 * payload), or returns the close code to fail the connection with:
 * 1002 for a one-byte payload or a code that may not be sent, 1007 for
 * a reason that is not UTF-8.
 */
uint16_t ngx_collab_ws_close_check(const u_char *data, size_t len,
    uint16_t *code);

/* returns 0 while valid so far, -1 at the first invalid byte */
int ngx_collab_utf8_feed(ngx_collab_utf8_t *u, const u_char *p, size_t len);
#define ngx_collab_utf8_complete(u)  ((u)->need == 0)


#endif /* _NGX_COLLAB_WS_FRAME_H_INCLUDED_ */
