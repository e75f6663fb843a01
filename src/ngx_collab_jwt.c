
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * The built-in token check: HS256 only.  A token is three base64url
 * segments, header "." payload "." signature, and is verified in an order
 * that keeps untrusted input away from anything but the smallest parsers:
 *
 *   1. the length (at most NGX_COLLAB_JWT_MAX_LEN) and the two dots;
 *   2. the header: strict base64url, then a JSON object whose "alg" must
 *      be "HS256" - the only algorithm, fixed by configuration and never
 *      chosen by the token, so "none", HS384 or RS256 are refused here;
 *   3. the payload's base64url, decoded but not yet looked at;
 *   4. the signature: exactly 32 bytes, equal to HMAC-SHA256 of the first
 *      two segments as sent, compared with CRYPTO_memcmp();
 *   5. only now the payload JSON: an object with the registered claims of
 *      the right types, then sub, exp, nbf, iss and aud.
 *
 * Base64url is decoded strictly: no padding, no characters outside the
 * URL-safe alphabet, no length of 1 mod 4, and the unused low bits of the
 * last character must be zero.  Accepting those bits would make several
 * spellings of one signature valid, so a token would not be the only
 * string that verifies.
 *
 * JSON goes through jansson with JSON_REJECT_DUPLICATES: a second "sub"
 * or "alg" is an error rather than a choice between two values.  jansson
 * also refuses invalid UTF-8 anywhere in the input and "\u0000" in a
 * string, so the claims copied out are UTF-8 without NUL bytes.
 *
 * Decoded segments live in one buffer on the stack, sized for the
 * longest token; jansson allocates its values with malloc() and they are
 * released before returning.
 */


#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "ngx_collab_jwt.h"


#define NGX_COLLAB_JWT_SIG_LEN  32

/* base64url text of n bytes decodes to at most n * 3 / 4 bytes */
#define NGX_COLLAB_JWT_BUF_LEN  (NGX_COLLAB_JWT_MAX_LEN / 4 * 3 + 3)


static int ngx_collab_jwt_fail(ngx_collab_jwt_t *out, int rc,
    const char *error);
static int ngx_collab_jwt_b64_decode(u_char *dst, size_t *dst_len,
    const u_char *src, size_t len);
static int ngx_collab_jwt_header(ngx_collab_jwt_t *out, const u_char *b64,
    size_t len, u_char *buf);
static int ngx_collab_jwt_signature(const ngx_collab_jwt_conf_t *conf,
    ngx_collab_jwt_t *out, const u_char *token, size_t signed_len,
    const u_char *b64, size_t len);
static int ngx_collab_jwt_claims(const ngx_collab_jwt_conf_t *conf,
    ngx_collab_jwt_t *out, json_t *claims);
static int64_t ngx_collab_jwt_numeric(json_t *v, int round_up);
static int ngx_collab_jwt_audience(json_t *aud, const char *audience);


int
ngx_collab_jwt_verify(const ngx_collab_jwt_conf_t *conf, const u_char *token,
    size_t len, ngx_collab_jwt_t *out)
{
    int            rc;
    size_t         n;
    json_t        *claims;
    u_char        *dot1, *dot2;
    json_error_t   err;
    u_char         buf[NGX_COLLAB_JWT_BUF_LEN];

    memset(out, 0, sizeof(ngx_collab_jwt_t));

    if (conf->key == NULL || conf->key_len == 0) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_ERROR, "empty key");
    }

    if (len == 0) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "empty token");
    }

    if (len > NGX_COLLAB_JWT_MAX_LEN) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "token too long");
    }

    dot1 = memchr(token, '.', len);
    dot2 = dot1 ? memchr(dot1 + 1, '.', token + len - dot1 - 1) : NULL;

    if (dot2 == NULL
        || memchr(dot2 + 1, '.', token + len - dot2 - 1) != NULL)
    {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "not three segments");
    }

    rc = ngx_collab_jwt_header(out, token, dot1 - token, buf);
    if (rc != NGX_COLLAB_JWT_OK) {
        return rc;
    }

    if (ngx_collab_jwt_b64_decode(buf, &n, dot1 + 1, dot2 - dot1 - 1) != 0) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "payload is not base64url");
    }

    rc = ngx_collab_jwt_signature(conf, out, token, dot2 - token,
                                  dot2 + 1, token + len - dot2 - 1);
    if (rc != NGX_COLLAB_JWT_OK) {
        return rc;
    }

    claims = json_loadb((const char *) buf, n, JSON_REJECT_DUPLICATES, &err);

    if (claims == NULL) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "payload is not JSON");
    }

    rc = ngx_collab_jwt_claims(conf, out, claims);

    json_decref(claims);

    return rc;
}


const char *
ngx_collab_jwt_strerror(int rc)
{
    switch (rc) {
    case NGX_COLLAB_JWT_OK:
        return "valid";
    case NGX_COLLAB_JWT_MALFORMED:
        return "malformed";
    case NGX_COLLAB_JWT_BAD_ALG:
        return "algorithm not allowed";
    case NGX_COLLAB_JWT_BAD_SIGNATURE:
        return "bad signature";
    case NGX_COLLAB_JWT_EXPIRED:
        return "expired";
    case NGX_COLLAB_JWT_NOT_YET_VALID:
        return "not yet valid";
    case NGX_COLLAB_JWT_WRONG_AUDIENCE:
        return "wrong audience";
    case NGX_COLLAB_JWT_WRONG_ISSUER:
        return "wrong issuer";
    case NGX_COLLAB_JWT_NO_SUBJECT:
        return "no subject";
    default:
        return "internal error";
    }
}


static int
ngx_collab_jwt_fail(ngx_collab_jwt_t *out, int rc, const char *error)
{
    memset(out, 0, sizeof(ngx_collab_jwt_t));
    out->error = error;

    return rc;
}


static int
ngx_collab_jwt_b64_value(u_char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }

    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }

    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }

    if (c == '-') {
        return 62;
    }

    if (c == '_') {
        return 63;
    }

    return -1;
}


/*
 * Strict unpadded base64url (RFC 4648, 5; RFC 7515, 2): returns 0 with
 * the bytes in dst, or -1 for an empty input, a character outside the
 * alphabet (padding included), a length of 1 mod 4, or set bits left
 * over after the last whole byte.
 */

static int
ngx_collab_jwt_b64_decode(u_char *dst, size_t *dst_len, const u_char *src,
    size_t len)
{
    int        v;
    size_t     i, n;
    uint32_t   acc;
    unsigned   bits;

    if (len == 0 || len % 4 == 1) {
        return -1;
    }

    acc = 0;
    bits = 0;
    n = 0;

    for (i = 0; i < len; i++) {
        v = ngx_collab_jwt_b64_value(src[i]);
        if (v < 0) {
            return -1;
        }

        acc = (acc << 6) | (uint32_t) v;
        bits += 6;

        if (bits >= 8) {
            bits -= 8;
            dst[n++] = (u_char) (acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }

    /* 2 or 4 bits left: they must be zero for the canonical spelling */

    if (acc != 0) {
        return -1;
    }

    *dst_len = n;

    return 0;
}


static int
ngx_collab_jwt_header(ngx_collab_jwt_t *out, const u_char *b64, size_t len,
    u_char *buf)
{
    int           rc;
    size_t        n;
    json_t       *header, *v;
    const char   *s;
    json_error_t  err;

    if (ngx_collab_jwt_b64_decode(buf, &n, b64, len) != 0) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "header is not base64url");
    }

    header = json_loadb((const char *) buf, n, JSON_REJECT_DUPLICATES, &err);

    if (header == NULL) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "header is not JSON");
    }

    if (!json_is_object(header)) {
        rc = ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                 "header is not an object");
        goto done;
    }

    v = json_object_get(header, "alg");

    if (v == NULL) {
        rc = ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_BAD_ALG,
                                 "no alg in header");
        goto done;
    }

    if (!json_is_string(v) || strcmp(json_string_value(v), "HS256") != 0) {
        rc = ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_BAD_ALG,
                                 "alg is not HS256");
        goto done;
    }

    /* "typ" is a media type, compared case-insensitively (RFC 7515, 4.1.9) */

    v = json_object_get(header, "typ");

    if (v != NULL) {
        s = json_is_string(v) ? json_string_value(v) : NULL;

        if (s == NULL
            || (strcasecmp(s, "JWT") != 0
                && strcasecmp(s, "application/jwt") != 0))
        {
            rc = ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                     "typ is not JWT");
            goto done;
        }
    }

    /* no extension is understood, so any critical one is refused */

    if (json_object_get(header, "crit") != NULL) {
        rc = ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                 "crit header not supported");
        goto done;
    }

    rc = NGX_COLLAB_JWT_OK;

done:

    json_decref(header);

    return rc;
}


static int
ngx_collab_jwt_signature(const ngx_collab_jwt_conf_t *conf,
    ngx_collab_jwt_t *out, const u_char *token, size_t signed_len,
    const u_char *b64, size_t len)
{
    size_t        n;
    unsigned int  md_len;
    u_char        sig[NGX_COLLAB_JWT_SIG_LEN + 3];
    u_char        md[EVP_MAX_MD_SIZE];

    /* 32 bytes are 43 characters; anything longer would overflow sig */

    if (len > 44) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_BAD_SIGNATURE,
                                   "signature of wrong length");
    }

    if (ngx_collab_jwt_b64_decode(sig, &n, b64, len) != 0) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "signature is not base64url");
    }

    if (n != NGX_COLLAB_JWT_SIG_LEN) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_BAD_SIGNATURE,
                                   "signature of wrong length");
    }

    if (conf->key_len > 0x7fffffff
        || HMAC(EVP_sha256(), conf->key, (int) conf->key_len, token,
                signed_len, md, &md_len)
           == NULL
        || md_len != NGX_COLLAB_JWT_SIG_LEN)
    {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_ERROR,
                                   "HMAC-SHA256 failed");
    }

    if (CRYPTO_memcmp(sig, md, NGX_COLLAB_JWT_SIG_LEN) != 0) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_BAD_SIGNATURE,
                                   "signature does not match");
    }

    return NGX_COLLAB_JWT_OK;
}


static int
ngx_collab_jwt_claims(const ngx_collab_jwt_conf_t *conf,
    ngx_collab_jwt_t *out, json_t *claims)
{
    size_t    n;
    json_t   *sub, *name, *exp, *nbf, *iat, *iss, *aud, *v;
    int64_t   t, leeway;

    if (!json_is_object(claims)) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "payload is not an object");
    }

    sub = json_object_get(claims, "sub");
    name = json_object_get(claims, "name");
    exp = json_object_get(claims, "exp");
    nbf = json_object_get(claims, "nbf");
    iat = json_object_get(claims, "iat");
    iss = json_object_get(claims, "iss");
    aud = json_object_get(claims, "aud");

    /* types first: a claim of the wrong type makes the token malformed */

    if ((exp && !json_is_number(exp))
        || (nbf && !json_is_number(nbf))
        || (iat && !json_is_number(iat)))
    {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "exp, nbf or iat is not a number");
    }

    if (iss && !json_is_string(iss)) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "iss is not a string");
    }

    if (aud && json_is_array(aud)) {
        for (n = 0; n < json_array_size(aud); n++) {
            v = json_array_get(aud, n);

            if (!json_is_string(v)) {
                return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                           "aud array holds a non-string");
            }
        }

    } else if (aud && !json_is_string(aud)) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                   "aud is not a string or an array");
    }

    if (name) {
        if (!json_is_string(name)) {
            return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                       "name is not a string");
        }

        if (json_string_length(name) > NGX_COLLAB_JWT_MAX_CLAIM) {
            return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_MALFORMED,
                                       "name too long");
        }
    }

    if (sub == NULL) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_NO_SUBJECT,
                                   "no sub claim");
    }

    if (!json_is_string(sub)) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_NO_SUBJECT,
                                   "sub is not a string");
    }

    n = json_string_length(sub);

    if (n == 0) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_NO_SUBJECT,
                                   "sub is empty");
    }

    if (n > NGX_COLLAB_JWT_MAX_CLAIM) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_NO_SUBJECT,
                                   "sub too long");
    }

    /* the clock: both checks saturate rather than overflow */

    leeway = conf->leeway > 0 ? conf->leeway : 0;

    if (exp) {
        t = ngx_collab_jwt_numeric(exp, 0);

        if (t <= INT64_MAX - leeway && conf->now > t + leeway) {
            return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_EXPIRED,
                                       "token expired");
        }

        out->exp = t;
        out->has_exp = 1;
    }

    if (nbf) {
        t = ngx_collab_jwt_numeric(nbf, 1);

        if (conf->now <= INT64_MAX - leeway && conf->now + leeway < t) {
            return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_NOT_YET_VALID,
                                       "token not yet valid");
        }
    }

    if (conf->issuer
        && (iss == NULL || strcmp(json_string_value(iss), conf->issuer) != 0))
    {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_WRONG_ISSUER,
                                   "iss does not match");
    }

    if (conf->audience && ngx_collab_jwt_audience(aud, conf->audience) != 0) {
        return ngx_collab_jwt_fail(out, NGX_COLLAB_JWT_WRONG_AUDIENCE,
                                   "aud does not match");
    }

    memcpy(out->sub, json_string_value(sub), json_string_length(sub));
    out->sub_len = json_string_length(sub);
    out->sub[out->sub_len] = '\0';

    if (name) {
        memcpy(out->name, json_string_value(name), json_string_length(name));
        out->name_len = json_string_length(name);
        out->name[out->name_len] = '\0';
    }

    out->error = NULL;

    return NGX_COLLAB_JWT_OK;
}


/*
 * A NumericDate as whole seconds: integers as they are, reals rounded
 * down (or up, if round_up) and clamped to the int64_t range.  jansson
 * rejects integers beyond json_int_t and reals beyond double, and never
 * produces NaN or infinities.
 */

static int64_t
ngx_collab_jwt_numeric(json_t *v, int round_up)
{
    double   d;
    int64_t  i;

    if (json_is_integer(v)) {
        return (int64_t) json_integer_value(v);
    }

    d = json_real_value(v);

    if (d >= 9.2e18) {
        return INT64_MAX;
    }

    if (d <= -9.2e18) {
        return INT64_MIN;
    }

    i = (int64_t) d;                    /* towards zero */

    if (round_up && (double) i < d) {
        i++;

    } else if (!round_up && (double) i > d) {
        i--;
    }

    return i;
}


/* returns 0 if audience is aud or one of its elements, -1 if not */

static int
ngx_collab_jwt_audience(json_t *aud, const char *audience)
{
    size_t   i;
    json_t  *v;

    if (aud == NULL) {
        return -1;
    }

    if (json_is_string(aud)) {
        return strcmp(json_string_value(aud), audience) == 0 ? 0 : -1;
    }

    for (i = 0; i < json_array_size(aud); i++) {
        v = json_array_get(aud, i);

        if (strcmp(json_string_value(v), audience) == 0) {
            return 0;
        }
    }

    return -1;
}
