
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * libFuzzer target for the HS256 verifier, ngx_collab_jwt_verify().
 *
 * Byte 0 chooses the mode and the configuration: bit 0 the mode, bit 1
 * an audience, bit 2 an issuer, bits 3-4 the leeway (0, 1, 60, INT64_MAX)
 * and bits 5-6 the clock (a fixed date, 0, INT64_MAX, INT64_MIN); the key
 * is fixed.
 *
 *   mode 0: the rest is the token, as is;
 *   mode 1: the rest is header and payload JSON separated by the first
 *           NUL (no NUL: a plain HS256 header and the rest as payload),
 *           which this file encodes and signs, so that the claim checks
 *           behind the signature are reached.
 *
 * The token is verified from a heap block of exactly its size, twice,
 * with the same result.  Invariants:
 *
 *   - the result is one of the documented codes, and out->error is NULL
 *     exactly when it is NGX_COLLAB_JWT_OK;
 *   - a valid token has two dots, a third segment that is, character for
 *     character, the base64url of HMAC-SHA256(key, the rest), computed
 *     here; a header with "alg":"HS256"; at most NGX_COLLAB_JWT_MAX_LEN
 *     bytes;
 *   - a valid token's sub is 1-256 bytes, name 0-256, both NUL-terminated
 *     with no NUL inside, UTF-8 by the reference checker, equal to the
 *     claims as jansson reads the payload here; exp, nbf, aud and iss
 *     satisfy the configuration by arithmetic in 128 bits;
 *   - in mode 1 the signature is never wrong, and EXPIRED, NOT_YET_VALID,
 *     WRONG_AUDIENCE, WRONG_ISSUER and NO_SUBJECT are each returned only
 *     when the same reference says so.
 */


#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ngx_collab_jwt.h"
#include "ref_utf8.h"


#define KEY          "fuzz key, fixed for every run..."
#define HDR          "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define AUDIENCE     "chat"
#define ISSUER       "https://auth.example"

#define check(expr)  if (!(expr)) { abort(); }


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static size_t
b64url(char *dst, const u_char *src, size_t n)
{
    static const char  alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t    i, len;
    uint32_t  v;

    len = 0;

    for (i = 0; i < n; i += 3) {
        v = (uint32_t) src[i] << 16;
        v |= (i + 1 < n) ? (uint32_t) src[i + 1] << 8 : 0;
        v |= (i + 2 < n) ? src[i + 2] : 0;

        dst[len++] = alphabet[v >> 18];
        dst[len++] = alphabet[(v >> 12) & 63];

        if (i + 1 < n) {
            dst[len++] = alphabet[(v >> 6) & 63];
        }

        if (i + 2 < n) {
            dst[len++] = alphabet[v & 63];
        }
    }

    return len;
}


/* lenient decoder for the reference: valid input is all it gets here */

static size_t
b64url_decode(u_char *dst, const u_char *src, size_t n)
{
    size_t       i, len;
    uint32_t     acc;
    unsigned     bits;
    const char  *p;

    static const char  alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    acc = 0;
    bits = 0;
    len = 0;

    for (i = 0; i < n; i++) {
        p = memchr(alphabet, src[i], 64);
        check(p != NULL);

        acc = (acc << 6) | (uint32_t) (p - alphabet);
        bits += 6;

        if (bits >= 8) {
            bits -= 8;
            dst[len++] = (u_char) (acc >> bits);
        }
    }

    return len;
}


static json_t *
segment_json(const u_char *b64, size_t n)
{
    u_char  *buf;
    size_t   len;
    json_t  *j;

    buf = malloc(n + 1);
    check(buf != NULL);

    len = b64url_decode(buf, b64, n);
    j = json_loadb((const char *) buf, len, 0, NULL);
    free(buf);

    return j;
}


/*
 * The reference verdict on a payload whose signature is good: what
 * ngx_collab_jwt_verify() must return unless the payload is malformed.
 * Returns -100 when it cannot tell (a real NumericDate out of range).
 */

static int
reference(const ngx_collab_jwt_conf_t *conf, json_t *claims)
{
    size_t    i, n;
    json_t   *v, *aud;
    __int128  now, leeway, t;
    double    d;

    now = conf->now;
    leeway = conf->leeway > 0 ? conf->leeway : 0;

    v = json_object_get(claims, "sub");

    if (!json_is_string(v) || json_string_length(v) == 0
        || json_string_length(v) > NGX_COLLAB_JWT_MAX_CLAIM)
    {
        return NGX_COLLAB_JWT_NO_SUBJECT;
    }

    v = json_object_get(claims, "exp");

    if (json_is_integer(v)) {
        t = json_integer_value(v);

        if (now > t + leeway) {
            return NGX_COLLAB_JWT_EXPIRED;
        }

    } else if (json_is_real(v)) {
        d = json_real_value(v);

        if (d < -1e15 || d > 1e15 || now < -1000000000000000LL
            || now > 1000000000000000LL || leeway > 1000000000000000LL)
        {
            return -100;
        }

        if ((double) (now - leeway) > d) {
            return NGX_COLLAB_JWT_EXPIRED;
        }
    }

    v = json_object_get(claims, "nbf");

    if (json_is_integer(v)) {
        t = json_integer_value(v);

        if (now + leeway < t) {
            return NGX_COLLAB_JWT_NOT_YET_VALID;
        }

    } else if (json_is_real(v)) {
        d = json_real_value(v);

        if (d < -1e15 || d > 1e15 || now < -1000000000000000LL
            || now > 1000000000000000LL || leeway > 1000000000000000LL)
        {
            return -100;
        }

        if ((double) (now + leeway) < d) {
            return NGX_COLLAB_JWT_NOT_YET_VALID;
        }
    }

    if (conf->issuer) {
        v = json_object_get(claims, "iss");

        if (!json_is_string(v) || strcmp(json_string_value(v), conf->issuer))
        {
            return NGX_COLLAB_JWT_WRONG_ISSUER;
        }
    }

    if (conf->audience) {
        aud = json_object_get(claims, "aud");

        if (json_is_string(aud)) {
            if (strcmp(json_string_value(aud), conf->audience) != 0) {
                return NGX_COLLAB_JWT_WRONG_AUDIENCE;
            }

        } else {
            n = json_array_size(aud);

            for (i = 0; i < n; i++) {
                v = json_array_get(aud, i);

                if (json_is_string(v)
                    && strcmp(json_string_value(v), conf->audience) == 0)
                {
                    break;
                }
            }

            if (i == n) {
                return NGX_COLLAB_JWT_WRONG_AUDIENCE;
            }
        }
    }

    return NGX_COLLAB_JWT_OK;
}


static void
check_valid(const ngx_collab_jwt_conf_t *conf, const u_char *token,
    size_t len, const ngx_collab_jwt_t *out)
{
    int            ref;
    char           sig[64];
    u_char        *dot1, *dot2;
    json_t        *header, *claims, *v;
    unsigned int   n;
    u_char         mac[EVP_MAX_MD_SIZE];

    check(len <= NGX_COLLAB_JWT_MAX_LEN);

    dot1 = memchr(token, '.', len);
    check(dot1 != NULL);
    dot2 = memchr(dot1 + 1, '.', token + len - dot1 - 1);
    check(dot2 != NULL);
    check(memchr(dot2 + 1, '.', token + len - dot2 - 1) == NULL);

    check(HMAC(EVP_sha256(), KEY, sizeof(KEY) - 1, token, dot2 - token, mac,
               &n) != NULL);
    check(n == 32);
    check(b64url(sig, mac, n) == 43);
    check((size_t) (token + len - dot2 - 1) == 43);
    check(memcmp(dot2 + 1, sig, 43) == 0);

    header = segment_json(token, dot1 - token);
    check(json_is_object(header));
    v = json_object_get(header, "alg");
    check(json_is_string(v) && strcmp(json_string_value(v), "HS256") == 0);
    json_decref(header);

    check(out->sub_len >= 1 && out->sub_len <= NGX_COLLAB_JWT_MAX_CLAIM);
    check(out->sub[out->sub_len] == '\0');
    check(strlen((char *) out->sub) == out->sub_len);
    check(ref_utf8(out->sub, out->sub_len) == REF_UTF8_VALID);

    check(out->name_len <= NGX_COLLAB_JWT_MAX_CLAIM);
    check(out->name[out->name_len] == '\0');
    check(strlen((char *) out->name) == out->name_len);
    check(ref_utf8(out->name, out->name_len) == REF_UTF8_VALID);

    claims = segment_json(dot1 + 1, dot2 - dot1 - 1);
    check(json_is_object(claims));

    v = json_object_get(claims, "sub");
    check(json_is_string(v));
    check(json_string_length(v) == out->sub_len);
    check(memcmp(json_string_value(v), out->sub, out->sub_len) == 0);

    v = json_object_get(claims, "name");
    check(v == NULL || json_string_length(v) == out->name_len);
    check(v == NULL
          || memcmp(json_string_value(v), out->name, out->name_len) == 0);

    v = json_object_get(claims, "exp");
    check((v != NULL) == out->has_exp);
    check(!json_is_integer(v) || json_integer_value(v) == out->exp);
    check(out->has_exp || out->exp == 0);

    ref = reference(conf, claims);
    check(ref == NGX_COLLAB_JWT_OK || ref == -100);

    json_decref(claims);
}


static void
check_signed(const ngx_collab_jwt_conf_t *conf, const u_char *token,
    size_t len, int rc)
{
    int      ref;
    u_char  *dot1, *dot2;
    json_t  *claims;

    if (rc == NGX_COLLAB_JWT_OK || rc == NGX_COLLAB_JWT_MALFORMED
        || rc == NGX_COLLAB_JWT_BAD_ALG)
    {
        return;
    }

    check(rc != NGX_COLLAB_JWT_BAD_SIGNATURE);
    check(rc != NGX_COLLAB_JWT_ERROR);

    dot1 = memchr(token, '.', len);
    dot2 = memchr(dot1 + 1, '.', token + len - dot1 - 1);

    claims = segment_json(dot1 + 1, dot2 - dot1 - 1);
    check(json_is_object(claims));

    ref = reference(conf, claims);
    check(ref == rc || ref == -100);

    json_decref(claims);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int                     rc, rc2;
    char                   *tok;
    size_t                  len, hlen, plen;
    const u_char           *hdr, *pl, *nul;
    unsigned int            n;
    ngx_collab_jwt_t        out, out2;
    ngx_collab_jwt_conf_t   conf;
    u_char                  mac[EVP_MAX_MD_SIZE];

    static const int64_t  leeways[] = { 0, 1, 60, INT64_MAX };
    static const int64_t  clocks[] = { 1700000000, 0, INT64_MAX, INT64_MIN };

    if (size == 0) {
        return 0;
    }

    memset(&conf, 0, sizeof(conf));
    conf.key = (const u_char *) KEY;
    conf.key_len = sizeof(KEY) - 1;
    conf.audience = (data[0] & 0x02) ? AUDIENCE : NULL;
    conf.issuer = (data[0] & 0x04) ? ISSUER : NULL;
    conf.leeway = leeways[(data[0] >> 3) & 3];
    conf.now = clocks[(data[0] >> 5) & 3];

    data++;
    size--;

    if (data[-1] & 0x01) {
        nul = memchr(data, '\0', size);

        if (nul) {
            hdr = data;
            hlen = nul - data;
            pl = nul + 1;
            plen = data + size - pl;

        } else {
            hdr = (const u_char *) HDR;
            hlen = sizeof(HDR) - 1;
            pl = data;
            plen = size;
        }

        tok = malloc((hlen + plen) * 4 / 3 + 64);
        check(tok != NULL);

        len = b64url(tok, hdr, hlen);
        tok[len++] = '.';
        len += b64url(tok + len, pl, plen);

        check(HMAC(EVP_sha256(), KEY, sizeof(KEY) - 1, (u_char *) tok, len,
                   mac, &n) != NULL);

        tok[len++] = '.';
        len += b64url(tok + len, mac, n);

        tok = realloc(tok, len);
        check(tok != NULL);

    } else {
        len = size;
        tok = malloc(len ? len : 1);
        check(tok != NULL);
        memcpy(tok, data, len);
    }

    memset(&out, 0x5a, sizeof(out));
    rc = ngx_collab_jwt_verify(&conf, (u_char *) tok, len, &out);

    check(rc <= NGX_COLLAB_JWT_OK && rc >= NGX_COLLAB_JWT_NO_SUBJECT);
    check((rc == NGX_COLLAB_JWT_OK) == (out.error == NULL));

    if (rc != NGX_COLLAB_JWT_OK) {
        check(out.sub_len == 0 && out.name_len == 0 && out.has_exp == 0);
    }

    memset(&out2, 0xa5, sizeof(out2));
    rc2 = ngx_collab_jwt_verify(&conf, (u_char *) tok, len, &out2);

    check(rc2 == rc);
    check(out2.error == out.error);
    check(out2.sub_len == out.sub_len && out2.name_len == out.name_len);
    check(memcmp(out2.sub, out.sub, out.sub_len + 1) == 0
          || rc != NGX_COLLAB_JWT_OK);
    check(out2.exp == out.exp);

    if (rc == NGX_COLLAB_JWT_OK) {
        check_valid(&conf, (u_char *) tok, len, &out);
    }

    if (data[-1] & 0x01) {
        check_signed(&conf, (u_char *) tok, len, rc);
    }

    free(tok);

    return 0;
}
