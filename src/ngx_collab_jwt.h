
/*
 * Copyright (C) ngx_collab authors
 */


#ifndef _NGX_COLLAB_JWT_H_INCLUDED_
#define _NGX_COLLAB_JWT_H_INCLUDED_


/*
 * HS256 JSON Web Token verifier (RFC 7519, JWS compact form, RFC 7515).
 * A pure function over bytes: no nginx runtime, no I/O, only libcrypto
 * (HMAC-SHA256) and jansson (JSON), so that unit tests and the fuzzer
 * link this file alone.
 */


#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>


/* ngx_collab_jwt_verify() results */
#define NGX_COLLAB_JWT_OK              0
#define NGX_COLLAB_JWT_MALFORMED      -1
#define NGX_COLLAB_JWT_BAD_ALG        -2
#define NGX_COLLAB_JWT_BAD_SIGNATURE  -3
#define NGX_COLLAB_JWT_EXPIRED        -4
#define NGX_COLLAB_JWT_NOT_YET_VALID  -5
#define NGX_COLLAB_JWT_WRONG_AUDIENCE -6
#define NGX_COLLAB_JWT_WRONG_ISSUER   -7
#define NGX_COLLAB_JWT_NO_SUBJECT     -8
#define NGX_COLLAB_JWT_ERROR          -9

/* longer tokens are rejected before anything else is looked at */
#define NGX_COLLAB_JWT_MAX_LEN        8192

/* the longest sub and name claims accepted, in bytes */
#define NGX_COLLAB_JWT_MAX_CLAIM      256


typedef struct {
    /* the HMAC key, at least one byte */
    const u_char               *key;
    size_t                      key_len;

    /* NUL-terminated; NULL: the claim is not checked */
    const char                 *audience;
    const char                 *issuer;

    /* the clock, seconds since the epoch, and the skew allowed, >= 0 */
    int64_t                     now;
    int64_t                     leeway;
} ngx_collab_jwt_conf_t;


typedef struct {
    /* the sub claim: 1-256 bytes of UTF-8 without NUL, NUL-terminated */
    u_char                      sub[NGX_COLLAB_JWT_MAX_CLAIM + 1];
    size_t                      sub_len;

    /* the name claim, 0-256 bytes, NUL-terminated; empty if absent */
    u_char                      name[NGX_COLLAB_JWT_MAX_CLAIM + 1];
    size_t                      name_len;

    /* the exp claim rounded down, valid if has_exp; 0 if absent */
    int64_t                     exp;
    unsigned                    has_exp:1;

    /* why the token was rejected: a static string, NULL if it is valid */
    const char                 *error;
} ngx_collab_jwt_t;


/*
 * Verifies a compact JWS token of len bytes and returns NGX_COLLAB_JWT_OK
 * with the claims in *out, or one of the negative codes with out->error
 * set to a static description (for an INFO log line, never for clients):
 *
 *   MALFORMED       not three non-empty base64url segments (no padding,
 *                   canonical trailing bits), longer than
 *                   NGX_COLLAB_JWT_MAX_LEN, header or payload not a JSON
 *                   object (invalid UTF-8, duplicate keys, NUL escapes
 *                   included), a "crit" header, a "typ" other than JWT,
 *                   or a registered claim of the wrong type (exp, nbf,
 *                   iat not numbers; iss, name not strings; aud not a
 *                   string or an array of strings) or a name too long;
 *   BAD_ALG         the header's "alg" is missing or is not "HS256";
 *   BAD_SIGNATURE   the signature is not HMAC-SHA256(key, header "."
 *                   payload), compared in constant time;
 *   EXPIRED         now > exp + leeway;
 *   NOT_YET_VALID   now + leeway < nbf;
 *   WRONG_AUDIENCE  conf->audience is set and is not aud nor in it;
 *   WRONG_ISSUER    conf->issuer is set and is not iss;
 *   NO_SUBJECT      sub is missing, not a string, empty or too long;
 *   ERROR           an empty key or an HMAC failure: not the client's
 *                   fault.
 *
 * The header is decoded and checked first (so that "alg":"none" is
 * reported as such), then the payload's base64url, then the signature,
 * and only a token whose signature verifies has its payload JSON parsed.
 * Fractional exp and nbf are accepted (RFC 7519, 2: NumericDate);
 * against the whole-second clock exp is rounded down and nbf up, which
 * gives the exact answer.  The time checks saturate instead of
 * overflowing on extreme values.
 */
int ngx_collab_jwt_verify(const ngx_collab_jwt_conf_t *conf,
    const u_char *token, size_t len, ngx_collab_jwt_t *out);

/* the name of a result code, e.g. "expired", for logs */
const char *ngx_collab_jwt_strerror(int rc);


#endif /* _NGX_COLLAB_JWT_H_INCLUDED_ */
