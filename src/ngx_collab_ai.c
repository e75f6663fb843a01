
/*
 * Copyright (C) ngx_collab authors
 */


/*
 * The AI participant: an OpenAI-compatible provider's streamed reply,
 * shared live with everyone in the session.
 *
 * A stored user message that addresses the assistant (collab_ai_trigger:
 * "mention", a body starting with "@ai"; "always"; "off"; or the
 * session's own choice, chat_sessions.ai_trigger, which the room carries
 * from its join and from "update" events) starts a job on the worker
 * that committed it, so exactly once in the cluster.  The job
 * reads the session's recent messages from PostgreSQL
 * (collab_ai_context), POSTs {model, messages, stream: true} to
 * <collab_ai_endpoint>/chat/completions, parses the Server-Sent Events as
 * they arrive (src/ngx_collab_sse.c) and sends the text to the session as
 * "ai_delta" events, coalesced every NGX_COLLAB_AI_FLUSH ms, through the
 * same path as other room events (so other workers and hosts get them).
 * The finished text is stored once, as a message of kind "ai" with the
 * next seq, through the batched send path: history and resume see it like
 * any message.  A fault (the provider's 4xx/5xx, a timeout, a refused
 * connection, a malformed stream) stores nothing and tells the session
 * with an "ai_error" event; "ai_cancel" stops the transfer and stores what
 * arrived, marked cancelled; a reply cut at collab_ai_max_tokens is stored
 * marked truncated.  One job per session at a time, collab_ai_concurrency
 * per worker, collab_rate_ai per user, collab_rate_ai_session per
 * session.
 *
 * In a "text-to-image" session the job instead POSTs {model, prompt, n: 1,
 * response_format: "b64_json"} to <collab_ai_endpoint>/images/generations
 * (collab_ai_image_model; the prompt is the message without its "@ai"),
 * tells the session "ai_progress" {stage: "generating"} when the request
 * is out, reads the one JSON answer (at most NGX_COLLAB_AI_IMAGE_MAX
 * bytes) and stores one message of kind "ai" whose metadata holds the
 * image, as a data: URL (or the provider's URL when it gives one); the
 * faults are those of a chat reply.
 *
 * In an "image-to-image" session the job edits a picture: the one
 * attached to the message that asked (its metadata.image, a data: URL
 * checked by src/ngx_collab_image.c when it was sent), else the newest
 * picture of the session up to that message (any message's
 * metadata.image, the assistant's own included), read from PostgreSQL.
 * No picture, or only a provider's http(s) URL (this server fetches no
 * URL), answers "ai_error" NO_IMAGE and stores nothing.  The picture is
 * decoded into the job (freed with it) and POSTed as multipart/form-data
 * {model, prompt, n: 1, response_format: "b64_json", image} to
 * <collab_ai_endpoint>/images/edits; from there on it is a text-to-image
 * reply: "ai_progress", the one JSON answer, the same message and faults.
 *
 * libcurl runs on nginx's event loop through its multi socket interface:
 * CURLMOPT_SOCKETFUNCTION gives each socket to an ngx_connection_t with
 * level-triggered events, CURLMOPT_TIMERFUNCTION to one nginx timer, and
 * every event calls curl_multi_socket_action().  Nothing here blocks; TLS
 * is verified.  libcurl resolves names with its threaded resolver.  The
 * key (collab_ai_key_file) is never logged nor sent to clients.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_http.h>

#include <curl/curl.h>
#include <jansson.h>

#include "ngx_collab.h"
#include "ngx_collab_pg.h"
#include "ngx_collab_store.h"
#include "ngx_collab_room.h"
#include "ngx_collab_send.h"
#include "ngx_collab_presence.h"
#include "ngx_collab_protocol.h"
#include "ngx_collab_access.h"
#include "ngx_collab_sse.h"
#include "ngx_collab_image.h"
#include "ngx_collab_ai.h"


#define NGX_COLLAB_AI_FLUSH      50
#define NGX_COLLAB_AI_LINE       16384
#define NGX_COLLAB_AI_DATA       65536
#define NGX_COLLAB_AI_ERROR_BODY 512
#define NGX_COLLAB_AI_IMAGE_BUF  65536
#define NGX_COLLAB_AI_IMAGE_MAX  (4 * 1024 * 1024)


typedef struct {
    ngx_queue_t                 queue;
    CURL                       *easy;
    ngx_collab_room_t          *room;
    int64_t                     reply_to;
    struct curl_slist          *headers;
    char                       *request;

    u_char                     *text;
    size_t                      text_len;
    size_t                      text_size;
    size_t                      sent;          /* in ai_delta events */
    ngx_uint_t                  index;

    ngx_collab_sse_t            sse;
    ngx_event_t                 flush;

    unsigned                    done:1;        /* [DONE] seen */
    unsigned                    cancelled:1;
    unsigned                    malformed:1;
    unsigned                    truncated:1;
    unsigned                    started:1;     /* the request is out */
    unsigned                    image:1;       /* images/generations */
    unsigned                    oversize:1;    /* > NGX_COLLAB_AI_IMAGE_MAX */
    unsigned                    edit:1;        /* images/edits */
    unsigned                    failed:1;      /* an error in the stream */

    ngx_str_t                   prompt;        /* image: what was asked */

    curl_mime                  *form;          /* edit: the request */
    u_char                     *source;        /* edit: the picture */
    size_t                      source_len;
    size_t                      source_sent;
    const char                 *source_type;   /* "image/png", ... */
    const char                 *source_ext;    /* "png", ... */
} ngx_collab_ai_job_t;


static void ngx_collab_ai_context_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static ngx_int_t ngx_collab_ai_read_ok(ngx_collab_ai_job_t *job,
    PGresult *res);
static void ngx_collab_ai_fail(ngx_collab_ai_job_t *job, const char *code,
    const char *message);
static ngx_int_t ngx_collab_ai_start(ngx_collab_ai_job_t *job,
    PGresult *res);
static ngx_int_t ngx_collab_ai_start_image(ngx_collab_ai_job_t *job,
    ngx_str_t *body);
static ngx_int_t ngx_collab_ai_prompt(ngx_collab_ai_job_t *job,
    ngx_str_t *body);
static void ngx_collab_ai_progress(ngx_collab_ai_job_t *job);
static void ngx_collab_ai_edit(ngx_collab_ai_job_t *job, ngx_str_t *body,
    ngx_str_t *metadata);
static void ngx_collab_ai_edit_source_done(ngx_collab_pg_query_t *q,
    PGresult *res);
static ngx_int_t ngx_collab_ai_start_edit(ngx_collab_ai_job_t *job,
    ngx_collab_image_t *img);
static ngx_int_t ngx_collab_ai_edit_form(ngx_collab_ai_job_t *job);
static size_t ngx_collab_ai_edit_read(char *buf, size_t size, size_t n,
    void *arg);
static int ngx_collab_ai_edit_seek(void *arg, curl_off_t offset,
    int origin);
static ngx_int_t ngx_collab_ai_post(ngx_collab_ai_job_t *job,
    const char *path, const char *accept);
static size_t ngx_collab_ai_image_write(ngx_collab_ai_job_t *job, char *ptr,
    size_t n);
static void ngx_collab_ai_finish_image(ngx_collab_ai_job_t *job);
static size_t ngx_collab_ai_write(char *ptr, size_t size, size_t n,
    void *userdata);
static int ngx_collab_ai_sse_event(void *ctx, const u_char *data,
    size_t len);
static void ngx_collab_ai_flush_handler(ngx_event_t *ev);
static void ngx_collab_ai_send_delta(ngx_collab_ai_job_t *job);
static void ngx_collab_ai_finish(ngx_collab_ai_job_t *job, CURLcode rc);
static void ngx_collab_ai_free(ngx_collab_ai_job_t *job);
static void ngx_collab_ai_event(ngx_collab_room_t *room, json_t *event);
static void ngx_collab_ai_error(ngx_collab_room_t *room, int64_t reply_to,
    const char *code, const char *message);

static int ngx_collab_ai_socket(CURL *easy, curl_socket_t s, int what,
    void *userp, void *socketp);
static int ngx_collab_ai_timer(CURLM *multi, long timeout_ms, void *userp);
static void ngx_collab_ai_timer_handler(ngx_event_t *ev);
static void ngx_collab_ai_handler(ngx_event_t *ev);
static void ngx_collab_ai_check(void);
static void ngx_collab_ai_hold(void);
static void ngx_collab_ai_hold_handler(ngx_event_t *ev);
static void ngx_collab_ai_detach(ngx_connection_t *c);
static int ngx_collab_ai_close_socket(void *clientp, curl_socket_t fd);
static void ngx_collab_ai_track(ngx_connection_t *c, ngx_uint_t on);


static ngx_collab_ai_conf_t  *ngx_collab_ai_conf;
static CURLM                 *ngx_collab_ai_multi;
static ngx_event_t            ngx_collab_ai_timer_ev;
static ngx_queue_t            ngx_collab_ai_jobs;
static ngx_uint_t             ngx_collab_ai_njobs;
static ngx_event_t            ngx_collab_ai_hold_ev;
static ngx_log_t             *ngx_collab_ai_log;

/* the connections this module gave libcurl's sockets */
static ngx_connection_t      *ngx_collab_ai_conns[256];


ngx_int_t
ngx_collab_ai_init_process(ngx_cycle_t *cycle, ngx_collab_ai_conf_t *acf)
{
    if (acf->endpoint.len == 0) {
        return NGX_OK;
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        ngx_log_error(NGX_LOG_EMERG, cycle->log, 0,
                      "collab: ai: curl_global_init() failed");
        return NGX_ERROR;
    }

    ngx_collab_ai_multi = curl_multi_init();
    if (ngx_collab_ai_multi == NULL) {
        return NGX_ERROR;
    }

    ngx_collab_ai_conf = acf;
    ngx_collab_ai_log = cycle->log;
    ngx_queue_init(&ngx_collab_ai_jobs);

    (void) curl_multi_setopt(ngx_collab_ai_multi, CURLMOPT_SOCKETFUNCTION,
                             ngx_collab_ai_socket);
    (void) curl_multi_setopt(ngx_collab_ai_multi, CURLMOPT_TIMERFUNCTION,
                             ngx_collab_ai_timer);

    ngx_collab_ai_timer_ev.handler = ngx_collab_ai_timer_handler;
    ngx_collab_ai_timer_ev.log = cycle->log;
    ngx_collab_ai_timer_ev.cancelable = 1;

    /* not cancelable: see ngx_collab_ai_hold() */
    ngx_collab_ai_hold_ev.handler = ngx_collab_ai_hold_handler;
    ngx_collab_ai_hold_ev.log = cycle->log;

    return NGX_OK;
}


void
ngx_collab_ai_exit_process(ngx_cycle_t *cycle)
{
    ngx_queue_t          *q;
    ngx_collab_ai_job_t  *job;

    if (ngx_collab_ai_multi == NULL) {
        return;
    }

    while (!ngx_queue_empty(&ngx_collab_ai_jobs)) {
        q = ngx_queue_head(&ngx_collab_ai_jobs);
        job = ngx_queue_data(q, ngx_collab_ai_job_t, queue);
        ngx_collab_ai_free(job);
    }

    curl_multi_cleanup(ngx_collab_ai_multi);
    ngx_collab_ai_multi = NULL;
}


/*
 * A user message was stored (seq) in the room: start a reply if it calls
 * for one.  user: the author, for the rate limit; metadata: the message's
 * (JSON text, or empty), where an attached picture is.
 */

void
ngx_collab_ai_trigger(ngx_collab_room_t *room, int64_t seq, int64_t user,
    ngx_str_t *body, ngx_str_t *metadata)
{
    ngx_uint_t              trigger;
    ngx_msec_t              delay;
    ngx_collab_ai_job_t    *job;
    ngx_collab_pg_query_t  *q;

    if (ngx_collab_ai_multi == NULL) {
        return;
    }

    /* the session's own choice, else the server's */

    trigger = (room->ai_trigger != NGX_COLLAB_AI_SERVER)
              ? room->ai_trigger : ngx_collab_ai_conf->trigger;

    if (trigger == NGX_COLLAB_AI_OFF) {
        return;
    }

    if (trigger == NGX_COLLAB_AI_MENTION
        && (body->len < 3
            || ngx_strncasecmp(body->data, (u_char *) "@ai", 3) != 0
            || (body->len > 3 && body->data[3] != ' '
                && body->data[3] != ',' && body->data[3] != ':'
                && body->data[3] != '\n')))
    {
        return;
    }

    if (room->ai) {
        ngx_collab_ai_error(room, seq, "BUSY",
                            "the assistant is answering already");
        return;
    }

    if (ngx_collab_ai_njobs >= ngx_collab_ai_conf->concurrency) {
        ngx_collab_ai_error(room, seq, "BUSY",
                            "the assistant is busy, try again");
        return;
    }

    delay = ngx_collab_presence_limit(user, NGX_COLLAB_RATE_AI);

    if (delay) {
        ngx_collab_ai_error(room, seq, "RATE_LIMITED",
                            "too many questions to the assistant");
        return;
    }

    delay = ngx_collab_presence_limit(room->id, NGX_COLLAB_RATE_AI_SESSION);

    if (delay) {
        ngx_collab_ai_error(room, seq, "RATE_LIMITED",
                            "too many questions to the assistant in this "
                            "session");
        return;
    }

    job = ngx_calloc(sizeof(ngx_collab_ai_job_t), ngx_collab_ai_log);
    if (job == NULL) {
        return;
    }

    job->room = room;
    job->reply_to = seq;

    if (room->ai_image) {
        job->image = 1;
        job->edit = (room->ai_image == NGX_COLLAB_AI_IMAGE_EDIT);
        job->text_size = NGX_COLLAB_AI_IMAGE_BUF;

        job->text = ngx_alloc(job->text_size, ngx_collab_ai_log);
        if (job->text == NULL) {
            goto failed;
        }

        goto ready;
    }

    job->text_size = ngx_min(ngx_collab_ai_conf->max_tokens * 32 + 4096,
                             1024 * 1024);

    job->text = ngx_alloc(job->text_size, ngx_collab_ai_log);
    job->sse.line = ngx_alloc(NGX_COLLAB_AI_LINE, ngx_collab_ai_log);
    job->sse.data = ngx_alloc(NGX_COLLAB_AI_DATA, ngx_collab_ai_log);

    if (job->text == NULL || job->sse.line == NULL || job->sse.data == NULL)
    {
        goto failed;
    }

    job->sse.line_size = NGX_COLLAB_AI_LINE;
    job->sse.data_size = NGX_COLLAB_AI_DATA;

ready:

    job->flush.handler = ngx_collab_ai_flush_handler;
    job->flush.data = job;
    job->flush.log = ngx_collab_ai_log;
    job->flush.cancelable = 1;

    room->ai = job;
    ngx_queue_insert_tail(&ngx_collab_ai_jobs, &job->queue);
    ngx_collab_ai_njobs++;
    ngx_collab_ai_hold();

    if (job->edit) {
        ngx_collab_ai_edit(job, body, metadata);
        return;
    }

    if (job->image) {

        /* a picture needs no history: the request goes out at once */

        if (ngx_collab_ai_start_image(job, body) != NGX_OK) {
            ngx_collab_ai_fail(job, "UNAVAILABLE",
                               "the assistant could not be reached");
        }

        return;
    }

    /* the conversation so far, the newest collab_ai_context messages */

    q = ngx_collab_pg_query_create(ngx_collab_sql_history_before, 3,
                                   3 * NGX_INT64_LEN);
    if (q == NULL) {
        ngx_collab_ai_free(job);
        return;
    }

    (void) ngx_collab_pg_param_int(q, 0, room->id);
    (void) ngx_collab_pg_param_int(q, 1, seq + 1);
    (void) ngx_collab_pg_param_int(q, 2, ngx_collab_ai_conf->context);

    q->handler = ngx_collab_ai_context_done;
    q->data = job;

    if (ngx_collab_pg_send(q) != NGX_OK) {
        ngx_collab_ai_fail(job, "UNAVAILABLE",
                           "the message store is unavailable");
    }

    return;

failed:

    ngx_free(job->text);
    ngx_free(job->sse.line);
    ngx_free(job->sse.data);
    ngx_free(job);
}


/*
 * A session's "aiTrigger" as stored (chat_sessions.ai_trigger): the
 * NGX_COLLAB_AI_* value, NGX_COLLAB_AI_SERVER for NULL (name NULL), or
 * NGX_ERROR for anything else.
 */

ngx_int_t
ngx_collab_ai_trigger_value(u_char *name, size_t len)
{
    if (name == NULL) {
        return NGX_COLLAB_AI_SERVER;
    }

    if (len == 7 && ngx_strncmp(name, "mention", 7) == 0) {
        return NGX_COLLAB_AI_MENTION;
    }

    if (len == 6 && ngx_strncmp(name, "always", 6) == 0) {
        return NGX_COLLAB_AI_ALWAYS;
    }

    if (len == 3 && ngx_strncmp(name, "off", 3) == 0) {
        return NGX_COLLAB_AI_OFF;
    }

    return NGX_ERROR;
}


/*
 * What a read made before the request found: NGX_OK, go on; otherwise the
 * session has been told (the reply was cancelled meanwhile, or the read
 * failed) and the job is gone.
 */

static ngx_int_t
ngx_collab_ai_read_ok(ngx_collab_ai_job_t *job, PGresult *res)
{
    if (job->cancelled) {
        /* cancelled before the provider was asked: nothing to store */
        ngx_collab_ai_fail(job, "CANCELLED", "the reply was cancelled");
        return NGX_DONE;
    }

    if (ngx_collab_store_ok(res, PGRES_TUPLES_OK, ngx_collab_ai_log)
        != NGX_OK)
    {
        ngx_collab_ai_fail(job, "UNAVAILABLE",
                           "the message store is unavailable");
        return NGX_DONE;
    }

    return NGX_OK;
}


static void
ngx_collab_ai_context_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    ngx_collab_ai_job_t  *job;

    job = q->data;

    if (ngx_collab_ai_read_ok(job, res) != NGX_OK) {
        return;
    }

    if (ngx_collab_ai_start(job, res) != NGX_OK) {
        ngx_collab_ai_fail(job, "UNAVAILABLE",
                           "the assistant could not be reached");
    }
}


/* the request: the history as roles, streamed */

static ngx_int_t
ngx_collab_ai_start(ngx_collab_ai_job_t *job, PGresult *res)
{
    int                    i, n;
    char                  *kind, *name, *body;
    json_t                *messages, *m, *req;
    ngx_collab_ai_conf_t  *acf;

    acf = ngx_collab_ai_conf;

    messages = json_array();
    if (messages == NULL) {
        return NGX_ERROR;
    }

    json_array_append_new(messages, json_pack("{s:s,s:s}", "role", "system",
        "content", "You are an assistant taking part in a group chat. "
                   "Messages from people start with their name. "
                   "Answer the last one, briefly."));

    n = PQntuples(res);

    for (i = 0; i < n; i++) {
        kind = PQgetvalue(res, i, PQfnumber(res, "kind"));
        body = PQgetvalue(res, i, PQfnumber(res, "body"));
        name = PQgetisnull(res, i, PQfnumber(res, "user_name"))
               ? PQgetvalue(res, i, PQfnumber(res, "user_ext"))
               : PQgetvalue(res, i, PQfnumber(res, "user_name"));

        if (ngx_strcmp(kind, "ai") == 0) {
            m = json_pack("{s:s,s:s}", "role", "assistant", "content", body);

        } else {
            m = json_pack("{s:s,s:s++}", "role", "user", "content",
                          name, ": ", body);
        }

        if (m) {
            json_array_append_new(messages, m);
        }
    }

    req = json_pack("{s:s%,s:o,s:b,s:I}",
                    "model", acf->model.data, acf->model.len,
                    "messages", messages,
                    "stream", 1,
                    "max_tokens", (json_int_t) acf->max_tokens);
    if (req == NULL) {
        return NGX_ERROR;
    }

    job->request = json_dumps(req, JSON_COMPACT);
    json_decref(req);

    if (job->request == NULL) {
        return NGX_ERROR;
    }

    return ngx_collab_ai_post(job, "chat/completions", "text/event-stream");
}


/*
 * The request of a text-to-image session: the message is the prompt,
 * without the "@ai" that called on the assistant.  Tells the session
 * that the picture is being made once the request is out.
 */

static ngx_int_t
ngx_collab_ai_start_image(ngx_collab_ai_job_t *job, ngx_str_t *body)
{
    json_t                *req;
    ngx_collab_ai_conf_t  *acf;

    acf = ngx_collab_ai_conf;

    if (ngx_collab_ai_prompt(job, body) != NGX_OK) {
        return NGX_ERROR;
    }

    req = json_pack("{s:s%,s:s%,s:i,s:s}",
                    "model", acf->image_model.data, acf->image_model.len,
                    "prompt", job->prompt.data, job->prompt.len,
                    "n", 1,
                    "response_format", "b64_json");
    if (req == NULL) {
        return NGX_ERROR;
    }

    job->request = json_dumps(req, JSON_COMPACT);
    json_decref(req);

    if (job->request == NULL) {
        return NGX_ERROR;
    }

    if (ngx_collab_ai_post(job, "images/generations", "application/json")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_collab_ai_progress(job);

    return NGX_OK;
}


/* job->prompt: a copy of the message, without the "@ai" that called */

static ngx_int_t
ngx_collab_ai_prompt(ngx_collab_ai_job_t *job, ngx_str_t *body)
{
    u_char     *p, *last;
    ngx_str_t   prompt;

    prompt = *body;

    if (prompt.len >= 3
        && ngx_strncasecmp(prompt.data, (u_char *) "@ai", 3) == 0
        && (prompt.len == 3 || prompt.data[3] == ' '
            || prompt.data[3] == ',' || prompt.data[3] == ':'
            || prompt.data[3] == '\n'))
    {
        p = prompt.data + 3;
        last = prompt.data + prompt.len;

        while (p < last && (*p == ' ' || *p == ',' || *p == ':'
                            || *p == '\n' || *p == '\r' || *p == '\t'))
        {
            p++;
        }

        if (p < last) {
            prompt.data = p;
            prompt.len = last - p;
        }
    }

    job->prompt.data = ngx_alloc(prompt.len, ngx_collab_ai_log);
    if (job->prompt.data == NULL) {
        return NGX_ERROR;
    }

    job->prompt.len = prompt.len;
    ngx_memcpy(job->prompt.data, prompt.data, prompt.len);

    return NGX_OK;
}


/* the picture is being made: the request is out */

static void
ngx_collab_ai_progress(ngx_collab_ai_job_t *job)
{
    ngx_collab_ai_event(job->room,
                        json_pack("{s:s,s:s%,s:I,s:s}",
                                  "op", "ai_progress",
                                  "session", job->room->slug.data,
                                  job->room->slug.len,
                                  "replyTo", (json_int_t) job->reply_to,
                                  "stage", "generating"));
}


/*
 * An image-to-image reply: the picture attached to the message, else the
 * session's newest one, read from PostgreSQL first.  Answers the session
 * itself on any failure and frees the job then.
 */

static void
ngx_collab_ai_edit(ngx_collab_ai_job_t *job, ngx_str_t *body,
    ngx_str_t *metadata)
{
    json_t                 *meta, *image;
    ngx_int_t               rc;
    ngx_collab_image_t      img;
    ngx_collab_pg_query_t  *q;

    if (ngx_collab_ai_prompt(job, body) != NGX_OK) {
        goto unavailable;
    }

    meta = NULL;
    image = NULL;

    if (metadata->len) {
        meta = json_loadb((char *) metadata->data, metadata->len, 0, NULL);
        image = json_object_get(meta, "image");
    }

    if (json_is_string(image)
        && ngx_collab_image_parse((u_char *) json_string_value(image),
                                  json_string_length(image), &img)
           == 0)
    {
        rc = ngx_collab_ai_start_edit(job, &img);
        json_decref(meta);

        if (rc != NGX_OK) {
            goto unavailable;
        }

        return;
    }

    json_decref(meta);

    /* the newest picture of the session, up to this message */

    q = ngx_collab_pg_query_create(ngx_collab_sql_latest_image, 2,
                                   2 * NGX_INT64_LEN);
    if (q == NULL) {
        goto unavailable;
    }

    (void) ngx_collab_pg_param_int(q, 0, job->room->id);
    (void) ngx_collab_pg_param_int(q, 1, job->reply_to);

    q->handler = ngx_collab_ai_edit_source_done;
    q->data = job;

    if (ngx_collab_pg_send(q) != NGX_OK) {
        ngx_collab_ai_fail(job, "UNAVAILABLE",
                           "the message store is unavailable");
    }

    return;

unavailable:

    ngx_collab_ai_fail(job, "UNAVAILABLE",
                       "the assistant could not be reached");
}


static void
ngx_collab_ai_edit_source_done(ngx_collab_pg_query_t *q, PGresult *res)
{
    int                   col;
    ngx_collab_image_t    img;
    ngx_collab_ai_job_t  *job;

    job = q->data;

    if (ngx_collab_ai_read_ok(job, res) != NGX_OK) {
        return;
    }

    col = PQfnumber(res, "image");

    /* a provider's http(s) URL is no source: this server fetches none */

    if (PQntuples(res) != 1 || col < 0 || PQgetisnull(res, 0, col)
        || ngx_collab_image_parse((u_char *) PQgetvalue(res, 0, col),
                                  PQgetlength(res, 0, col), &img)
           != 0)
    {
        ngx_collab_ai_fail(job, "NO_IMAGE",
                           "there is no picture in this session to start "
                           "from: attach one");
        return;
    }

    if (ngx_collab_ai_start_edit(job, &img) != NGX_OK) {
        ngx_collab_ai_fail(job, "UNAVAILABLE",
                           "the assistant could not be reached");
    }
}


/* the request of an image-to-image reply: img decoded into the job */

static ngx_int_t
ngx_collab_ai_start_edit(ngx_collab_ai_job_t *job, ngx_collab_image_t *img)
{
    job->source = ngx_alloc(img->size, ngx_collab_ai_log);
    if (job->source == NULL) {
        return NGX_ERROR;
    }

    job->source_len = ngx_collab_image_decode(img, job->source);
    job->source_sent = 0;
    job->source_type = img->type;
    job->source_ext = img->ext;

    if (ngx_collab_ai_post(job, "images/edits", "application/json")
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    ngx_collab_ai_progress(job);

    return NGX_OK;
}


/*
 * The multipart/form-data body of images/edits, on job->easy; the
 * picture's bytes are read from job->source as libcurl sends them, not
 * copied.
 */

static ngx_int_t
ngx_collab_ai_edit_form(ngx_collab_ai_job_t *job)
{
    u_char                *p, name[16];
    curl_mimepart         *part;
    ngx_collab_ai_conf_t  *acf;

    acf = ngx_collab_ai_conf;

    job->form = curl_mime_init(job->easy);
    if (job->form == NULL) {
        return NGX_ERROR;
    }

    part = curl_mime_addpart(job->form);
    if (part == NULL
        || curl_mime_name(part, "model") != CURLE_OK
        || curl_mime_data(part, (char *) acf->image_model.data,
                          acf->image_model.len)
           != CURLE_OK)
    {
        return NGX_ERROR;
    }

    part = curl_mime_addpart(job->form);
    if (part == NULL
        || curl_mime_name(part, "prompt") != CURLE_OK
        || curl_mime_data(part, (char *) job->prompt.data, job->prompt.len)
           != CURLE_OK)
    {
        return NGX_ERROR;
    }

    part = curl_mime_addpart(job->form);
    if (part == NULL
        || curl_mime_name(part, "n") != CURLE_OK
        || curl_mime_data(part, "1", 1) != CURLE_OK)
    {
        return NGX_ERROR;
    }

    part = curl_mime_addpart(job->form);
    if (part == NULL
        || curl_mime_name(part, "response_format") != CURLE_OK
        || curl_mime_data(part, "b64_json", CURL_ZERO_TERMINATED)
           != CURLE_OK)
    {
        return NGX_ERROR;
    }

    p = ngx_snprintf(name, sizeof(name) - 1, "image.%s", job->source_ext);
    *p = '\0';

    part = curl_mime_addpart(job->form);
    if (part == NULL
        || curl_mime_name(part, "image") != CURLE_OK
        || curl_mime_filename(part, (char *) name) != CURLE_OK
        || curl_mime_type(part, job->source_type) != CURLE_OK
        || curl_mime_data_cb(part, (curl_off_t) job->source_len,
                             ngx_collab_ai_edit_read,
                             ngx_collab_ai_edit_seek, NULL, job)
           != CURLE_OK)
    {
        return NGX_ERROR;
    }

    if (curl_easy_setopt(job->easy, CURLOPT_MIMEPOST, job->form)
        != CURLE_OK)
    {
        return NGX_ERROR;
    }

    return NGX_OK;
}


static size_t
ngx_collab_ai_edit_read(char *buf, size_t size, size_t n, void *arg)
{
    ngx_collab_ai_job_t  *job;

    job = arg;

    n = ngx_min(size * n, job->source_len - job->source_sent);

    ngx_memcpy(buf, job->source + job->source_sent, n);
    job->source_sent += n;

    return n;
}


/* libcurl rewinds the picture when it sends the body again */

static int
ngx_collab_ai_edit_seek(void *arg, curl_off_t offset, int origin)
{
    ngx_collab_ai_job_t  *job;

    job = arg;

    if (origin != SEEK_SET || offset < 0
        || (size_t) offset > job->source_len)
    {
        return CURL_SEEKFUNC_FAIL;
    }

    job->source_sent = (size_t) offset;

    return CURL_SEEKFUNC_OK;
}


/* job->request to <collab_ai_endpoint>/<path>, on the multi handle */

static ngx_int_t
ngx_collab_ai_post(ngx_collab_ai_job_t *job, const char *path,
    const char *accept)
{
    u_char                *p, url[1024], hdr[64], auth[1100];
    CURL                  *easy;
    ngx_collab_ai_conf_t  *acf;

    acf = ngx_collab_ai_conf;

    p = ngx_snprintf(url, sizeof(url) - 1, "%V/%s", &acf->endpoint, path);
    *p = '\0';

    p = ngx_snprintf(hdr, sizeof(hdr) - 1, "Accept: %s", accept);
    *p = '\0';

    /* a form sets its own type; "Expect:" spares a wait for 100 Continue */

    job->headers = curl_slist_append(NULL, job->edit
                                           ? "Expect:"
                                           : "Content-Type: application/json");
    job->headers = curl_slist_append(job->headers, (char *) hdr);

    if (acf->key.len) {
        p = ngx_snprintf(auth, sizeof(auth) - 1, "Authorization: Bearer %V",
                         &acf->key);
        *p = '\0';
        job->headers = curl_slist_append(job->headers, (char *) auth);
        ngx_explicit_memzero(auth, sizeof(auth));
    }

    easy = curl_easy_init();
    if (easy == NULL || job->headers == NULL) {
        if (easy) {
            curl_easy_cleanup(easy);
        }

        return NGX_ERROR;
    }

    job->easy = easy;

    (void) curl_easy_setopt(easy, CURLOPT_URL, (char *) url);
    (void) curl_easy_setopt(easy, CURLOPT_HTTPHEADER, job->headers);
    if (job->edit) {
        if (ngx_collab_ai_edit_form(job) != NGX_OK) {
            return NGX_ERROR;
        }

    } else {
        (void) curl_easy_setopt(easy, CURLOPT_POSTFIELDS, job->request);
    }
    (void) curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, ngx_collab_ai_write);
    (void) curl_easy_setopt(easy, CURLOPT_WRITEDATA, job);
    (void) curl_easy_setopt(easy, CURLOPT_PRIVATE, job);
    (void) curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) acf->timeout);
    (void) curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                            (long) ngx_min(acf->timeout, 10000));
    (void) curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    (void) curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
    (void) curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
    (void) curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION,
                            ngx_collab_ai_close_socket);

    if (curl_multi_add_handle(ngx_collab_ai_multi, easy) != CURLM_OK) {
        return NGX_ERROR;
    }

    job->started = 1;

    return NGX_OK;
}


/* the response body, as it arrives */

static size_t
ngx_collab_ai_write(char *ptr, size_t size, size_t n, void *userdata)
{
    long                  status;
    ngx_collab_ai_job_t  *job;

    job = userdata;
    n *= size;

    status = 0;
    (void) curl_easy_getinfo(job->easy, CURLINFO_RESPONSE_CODE, &status);

    if (status >= 400) {

        /* the provider's complaint, for the log: at most a few lines */

        if (job->text_len < NGX_COLLAB_AI_ERROR_BODY) {
            size = ngx_min(n, NGX_COLLAB_AI_ERROR_BODY - job->text_len);
            ngx_memcpy(job->text + job->text_len, ptr, size);
            job->text_len += size;
        }

        return n;
    }

    if (job->cancelled || job->malformed || job->truncated
        || job->oversize || job->failed)
    {
        return 0;               /* stops the transfer */
    }

    if (job->image) {
        return ngx_collab_ai_image_write(job, ptr, n);
    }

    if (ngx_collab_sse_feed(&job->sse, (u_char *) ptr, n,
                            ngx_collab_ai_sse_event, job)
        != 0)
    {
        if (!job->truncated && !job->done && !job->failed) {
            job->malformed = 1;
        }

        return job->done ? n : 0;
    }

    return n;
}


/* an image's answer: kept whole, up to NGX_COLLAB_AI_IMAGE_MAX bytes */

static size_t
ngx_collab_ai_image_write(ngx_collab_ai_job_t *job, char *ptr, size_t n)
{
    u_char  *text;
    size_t   size;

    if (job->text_len + n > NGX_COLLAB_AI_IMAGE_MAX) {
        job->oversize = 1;
        return 0;               /* stops the transfer */
    }

    if (job->text_len + n > job->text_size) {
        size = ngx_min(ngx_max(job->text_size * 2, job->text_len + n),
                       NGX_COLLAB_AI_IMAGE_MAX);

        text = ngx_alloc(size, ngx_collab_ai_log);
        if (text == NULL) {
            job->malformed = 1;
            return 0;
        }

        ngx_memcpy(text, job->text, job->text_len);
        ngx_free(job->text);

        job->text = text;
        job->text_size = size;
    }

    ngx_memcpy(job->text + job->text_len, ptr, n);
    job->text_len += n;

    return n;
}


static int
ngx_collab_ai_sse_event(void *ctx, const u_char *data, size_t len)
{
    json_t               *e, *choice, *delta, *content, *finish, *error;
    size_t                n;
    const char           *s, *msg;
    ngx_collab_ai_job_t  *job;

    job = ctx;

    if (len == 6 && ngx_strncmp(data, "[DONE]", 6) == 0) {
        job->done = 1;
        return 0;
    }

    e = json_loadb((const char *) data, len, 0, NULL);

    /*
     * a provider that fails after the 200 says so in the stream:
     * {"error": {"message": ...}} (OpenRouter), or a choice whose
     * finish_reason is "error"
     */

    error = json_object_get(e, "error");

    if (error) {
        msg = json_string_value(json_object_get(error, "message"));
        if (msg == NULL) {
            msg = json_string_value(error);
        }

        ngx_log_error(NGX_LOG_ERR, ngx_collab_ai_log, 0,
                      "collab: ai: the provider reported an error in the "
                      "stream: %s", msg ? msg : "(no message)");

        json_decref(e);
        job->failed = 1;
        return 1;
    }

    choice = json_array_get(json_object_get(e, "choices"), 0);
    delta = json_object_get(choice, "delta");
    content = json_object_get(delta, "content");
    finish = json_object_get(choice, "finish_reason");

    if (e == NULL || choice == NULL) {
        json_decref(e);
        job->malformed = 1;
        return 1;
    }

    if (json_is_string(content)) {
        s = json_string_value(content);
        n = json_string_length(content);

        if (job->text_len + n > job->text_size) {
            n = job->text_size - job->text_len;
            job->truncated = 1;

            /* do not cut a UTF-8 sequence */

            while (n && ((u_char) s[n] & 0xc0) == 0x80) {
                n--;
            }
        }

        ngx_memcpy(job->text + job->text_len, s, n);
        job->text_len += n;

        if (!job->flush.timer_set) {
            ngx_add_timer(&job->flush, NGX_COLLAB_AI_FLUSH);
        }
    }

    if (json_is_string(finish)
        && ngx_strcmp(json_string_value(finish), "length") == 0)
    {
        job->truncated = 1;
    }

    if (json_is_string(finish)
        && ngx_strcmp(json_string_value(finish), "error") == 0)
    {
        ngx_log_error(NGX_LOG_ERR, ngx_collab_ai_log, 0,
                      "collab: ai: the provider ended the stream with "
                      "finish_reason \"error\"");
        json_decref(e);
        job->failed = 1;
        return 1;
    }

    json_decref(e);

    return job->truncated ? 1 : 0;
}


static void
ngx_collab_ai_flush_handler(ngx_event_t *ev)
{
    ngx_collab_ai_send_delta(ev->data);
}


/* what arrived since the last delta, to everyone in the session */

static void
ngx_collab_ai_send_delta(ngx_collab_ai_job_t *job)
{
    json_t  *event;

    if (job->flush.timer_set) {
        ngx_del_timer(&job->flush);
    }

    if (job->sent == job->text_len) {
        return;
    }

    event = json_pack("{s:s,s:s%,s:I,s:I,s:s%}",
                      "op", "ai_delta",
                      "session", job->room->slug.data, job->room->slug.len,
                      "replyTo", (json_int_t) job->reply_to,
                      "index", (json_int_t) job->index,
                      "text", job->text + job->sent,
                      job->text_len - job->sent);

    job->index++;
    job->sent = job->text_len;

    ngx_collab_ai_event(job->room, event);
}


/* the transfer ended: store the reply, or say what went wrong */

static void
ngx_collab_ai_finish(ngx_collab_ai_job_t *job, CURLcode rc)
{
    long        status;
    u_char      cmid[NGX_INT64_LEN + 4], *p;
    json_t     *meta;
    char       *m;
    ngx_str_t   body, metadata, id;
    u_char      msg[160];

    status = 0;

    if (job->easy) {
        (void) curl_easy_getinfo(job->easy, CURLINFO_RESPONSE_CODE, &status);
    }

    if (job->cancelled) {
        if (job->image) {
            ngx_collab_ai_error(job->room, job->reply_to, "CANCELLED",
                                "the reply was cancelled");
            goto done;
        }

        goto store;
    }

    if (status >= 400) {
        ngx_log_error(NGX_LOG_ERR, ngx_collab_ai_log, 0,
                      "collab: ai: the provider answered %l: %*s", status,
                      job->text_len, job->text);

        p = ngx_snprintf(msg, sizeof(msg) - 1, "the AI provider answered %l",
                         status);
        *p = '\0';

        ngx_collab_ai_error(job->room, job->reply_to,
                            status < 500 ? "PROVIDER_REJECTED"
                                         : "PROVIDER_FAILED",
                            (char *) msg);
        goto done;
    }

    if (job->oversize) {
        ngx_log_error(NGX_LOG_ERR, ngx_collab_ai_log, 0,
                      "collab: ai: the provider's image answer is larger "
                      "than %d bytes", NGX_COLLAB_AI_IMAGE_MAX);

        ngx_collab_ai_error(job->room, job->reply_to, "MALFORMED",
                            "the AI provider's answer was too large");
        goto done;
    }

    if (job->malformed) {
        ngx_collab_ai_error(job->room, job->reply_to, "MALFORMED",
                            "the AI provider's stream was malformed");
        goto done;
    }

    if (job->failed) {
        ngx_collab_ai_error(job->room, job->reply_to, "PROVIDER_FAILED",
                            "the AI provider failed while answering");
        goto done;
    }

    if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && job->truncated)) {
        ngx_log_error(NGX_LOG_ERR, ngx_collab_ai_log, 0,
                      "collab: ai: %s", curl_easy_strerror(rc));

        if (rc == CURLE_OPERATION_TIMEDOUT) {
            ngx_collab_ai_error(job->room, job->reply_to, "TIMEOUT",
                                "the AI provider did not answer in time");

        } else if (status > 0) {
            /* it answered, then the transfer broke off mid-stream */
            ngx_collab_ai_error(job->room, job->reply_to, "MALFORMED",
                                "the AI provider's stream ended early");

        } else {
            ngx_collab_ai_error(job->room, job->reply_to, "UNREACHABLE",
                                "the AI provider could not be reached");
        }

        goto done;
    }

    if (job->image) {
        ngx_collab_ai_finish_image(job);
        goto done;
    }

    if (!job->done && !job->truncated) {
        ngx_collab_ai_error(job->room, job->reply_to, "MALFORMED",
                            "the AI provider's stream ended early");
        goto done;
    }

store:

    ngx_collab_ai_send_delta(job);

    if (job->text_len == 0) {
        ngx_collab_ai_error(job->room, job->reply_to,
                            job->cancelled ? "CANCELLED" : "EMPTY",
                            job->cancelled ? "the reply was cancelled"
                                           : "the AI provider said nothing");
        goto done;
    }

    meta = json_pack("{s:I,s:s%}", "replyTo", (json_int_t) job->reply_to,
                     "model", ngx_collab_ai_conf->model.data,
                     ngx_collab_ai_conf->model.len);

    if (meta && job->cancelled) {
        json_object_set_new(meta, "cancelled", json_true());
    }

    if (meta && job->truncated) {
        json_object_set_new(meta, "truncated", json_true());
    }

    m = meta ? json_dumps(meta, JSON_COMPACT) : NULL;
    json_decref(meta);

    if (m == NULL) {
        goto done;
    }

    body.data = job->text;
    body.len = job->text_len;
    metadata.data = (u_char *) m;
    metadata.len = ngx_strlen(m);

    p = ngx_sprintf(cmid, "ai:%L", job->reply_to);
    id.data = cmid;
    id.len = p - cmid;

    if (ngx_collab_send_ai(job->room, &body, &metadata, &id) != NGX_OK) {
        ngx_collab_ai_error(job->room, job->reply_to, "UNAVAILABLE",
                            "the reply could not be stored");
    }

    free(m);

done:

    ngx_collab_ai_free(job);
}


/*
 * The provider's {"data": [{"b64_json": ...} or {"url": ...}]}: one
 * message of kind "ai" whose metadata holds the image, as a data: URL
 * or the provider's http(s) URL; its body is the provider's
 * "revised_prompt", or the prompt.
 */

static void
ngx_collab_ai_finish_image(ngx_collab_ai_job_t *job)
{
    u_char      *image, *p, c, cmid[NGX_INT64_LEN + 4];
    char        *m;
    json_t      *res, *item, *b64, *url, *revised, *meta;
    size_t       i, len;
    ngx_str_t    body, metadata, id;
    const char  *s;

    image = NULL;
    meta = NULL;
    m = NULL;

    res = json_loadb((char *) job->text, job->text_len, 0, NULL);
    item = json_array_get(json_object_get(res, "data"), 0);
    b64 = json_object_get(item, "b64_json");
    url = json_object_get(item, "url");
    revised = json_object_get(item, "revised_prompt");

    if (json_is_string(b64) && json_string_length(b64) > 0) {
        s = json_string_value(b64);
        len = json_string_length(b64);

        /* base64 only: it goes into a data: URL as it is */

        for (i = 0; i < len; i++) {
            c = (u_char) s[i];

            if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
                  || (c >= '0' && c <= '9') || c == '+' || c == '/'
                  || (c == '=' && i + 2 >= len)))
            {
                goto malformed;
            }
        }

        image = ngx_alloc(sizeof("data:image/png;base64,") - 1 + len,
                          ngx_collab_ai_log);
        if (image == NULL) {
            goto failed;
        }

        p = ngx_cpymem(image, "data:image/png;base64,",
                       sizeof("data:image/png;base64,") - 1);
        p = ngx_cpymem(p, s, len);

        meta = json_pack("{s:s%}", "image", image, (size_t) (p - image));

    } else if (json_is_string(url)
               && (ngx_strncmp(json_string_value(url), "https://", 8) == 0
                   || ngx_strncmp(json_string_value(url), "http://", 7)
                      == 0))
    {
        meta = json_pack("{s:O}", "image", url);

    } else {
        goto malformed;
    }

    if (meta == NULL
        || json_object_set_new(meta, "replyTo",
                               json_integer(job->reply_to))
        || json_object_set_new(meta, "model",
                               json_stringn((char *)
                                   ngx_collab_ai_conf->image_model.data,
                                   ngx_collab_ai_conf->image_model.len)))
    {
        goto failed;
    }

    m = json_dumps(meta, JSON_COMPACT);
    if (m == NULL) {
        goto failed;
    }

    if (json_is_string(revised) && json_string_length(revised) > 0) {
        body.data = (u_char *) json_string_value(revised);
        body.len = json_string_length(revised);

    } else {
        body = job->prompt;
    }

    metadata.data = (u_char *) m;
    metadata.len = ngx_strlen(m);

    p = ngx_sprintf(cmid, "ai:%L", job->reply_to);
    id.data = cmid;
    id.len = p - cmid;

    if (ngx_collab_send_ai(job->room, &body, &metadata, &id) != NGX_OK) {
        goto failed;
    }

    goto done;

malformed:

    ngx_log_error(NGX_LOG_ERR, ngx_collab_ai_log, 0,
                  "collab: ai: the provider's image answer holds no image: "
                  "%*s", ngx_min(job->text_len, NGX_COLLAB_AI_ERROR_BODY),
                  job->text);

    ngx_collab_ai_error(job->room, job->reply_to, "MALFORMED",
                        "the AI provider's answer held no image");
    goto done;

failed:

    ngx_collab_ai_error(job->room, job->reply_to, "UNAVAILABLE",
                        "the reply could not be stored");

done:

    if (m) {
        free(m);
    }

    json_decref(meta);
    json_decref(res);

    if (image) {
        ngx_free(image);
    }
}


/* ai_cancel: stops the session's reply, keeping what arrived */

ngx_int_t
ngx_collab_ai_cancel(ngx_collab_room_t *room)
{
    ngx_collab_ai_job_t  *job;

    job = room->ai;

    if (job == NULL) {
        return NGX_DECLINED;
    }

    job->cancelled = 1;

    if (!job->started) {
        return NGX_OK;          /* the context query frees it */
    }

    (void) curl_multi_remove_handle(ngx_collab_ai_multi, job->easy);

    ngx_collab_ai_finish(job, CURLE_OK);

    return NGX_OK;
}


static void
ngx_collab_ai_free(ngx_collab_ai_job_t *job)
{
    ngx_collab_room_t  *room;

    if (job->easy) {
        (void) curl_multi_remove_handle(ngx_collab_ai_multi, job->easy);
        curl_easy_cleanup(job->easy);
    }

    if (job->form) {
        curl_mime_free(job->form);
    }

    if (job->headers) {
        curl_slist_free_all(job->headers);
    }

    if (job->request) {
        free(job->request);
    }

    if (job->flush.timer_set) {
        ngx_del_timer(&job->flush);
    }

    ngx_queue_remove(&job->queue);
    ngx_collab_ai_njobs--;
    ngx_collab_ai_hold();

    room = job->room;

    if (room->ai == job) {
        room->ai = NULL;
    }

    if (job->prompt.data) {
        ngx_free(job->prompt.data);
    }

    if (job->source) {
        ngx_free(job->source);
    }

    ngx_free(job->text);
    ngx_free(job->sse.line);
    ngx_free(job->sse.data);
    ngx_free(job);

    ngx_collab_room_release(room);
}


static void
ngx_collab_ai_event(ngx_collab_room_t *room, json_t *event)
{
    ngx_collab_ws_msg_t  *msg;

    if (event == NULL) {
        return;
    }

    msg = ngx_collab_protocol_encode(event, ngx_collab_ai_log);
    json_decref(event);

    if (msg) {
        ngx_collab_access_event(room->id, 'E', 0, msg);
        ngx_collab_ws_msg_release(msg);
    }
}


static void
ngx_collab_ai_error(ngx_collab_room_t *room, int64_t reply_to,
    const char *code, const char *message)
{
    ngx_collab_ai_event(room, json_pack("{s:s,s:s%,s:I,s:s,s:s}",
                                        "op", "ai_error",
                                        "session", room->slug.data,
                                        room->slug.len,
                                        "replyTo", (json_int_t) reply_to,
                                        "code", code,
                                        "message", message));
}


/* the job ends before anything was stored: the session is told why */

static void
ngx_collab_ai_fail(ngx_collab_ai_job_t *job, const char *code,
    const char *message)
{
    ngx_collab_ai_error(job->room, job->reply_to, code, message);
    ngx_collab_ai_free(job);
}


/* libcurl on nginx events */


static int
ngx_collab_ai_socket(CURL *easy, curl_socket_t s, int what, void *userp,
    void *socketp)
{
    ngx_event_t       *rev, *wev;
    ngx_connection_t  *c;

    c = socketp;

    if (what == CURL_POLL_REMOVE) {
        if (c) {
            ngx_collab_ai_detach(c);
            (void) curl_multi_assign(ngx_collab_ai_multi, s, NULL);
        }

        return 0;
    }

    if (c == NULL) {
        c = ngx_get_connection(s, ngx_collab_ai_log);
        if (c == NULL) {
            return -1;
        }

        c->read->handler = ngx_collab_ai_handler;
        c->write->handler = ngx_collab_ai_handler;
        c->read->log = ngx_collab_ai_log;
        c->write->log = ngx_collab_ai_log;
        c->read->cancelable = 1;
        c->write->cancelable = 1;

        ngx_collab_ai_track(c, 1);

        (void) curl_multi_assign(ngx_collab_ai_multi, s, c);
    }

    rev = c->read;
    wev = c->write;

    if ((what & CURL_POLL_IN) && !rev->active) {
        (void) ngx_add_event(rev, NGX_READ_EVENT, NGX_LEVEL_EVENT);

    } else if (!(what & CURL_POLL_IN) && rev->active) {
        (void) ngx_del_event(rev, NGX_READ_EVENT, 0);
    }

    if ((what & CURL_POLL_OUT) && !wev->active) {
        (void) ngx_add_event(wev, NGX_WRITE_EVENT, NGX_LEVEL_EVENT);

    } else if (!(what & CURL_POLL_OUT) && wev->active) {
        (void) ngx_del_event(wev, NGX_WRITE_EVENT, 0);
    }

    return 0;
}


static int
ngx_collab_ai_timer(CURLM *multi, long timeout_ms, void *userp)
{
    if (timeout_ms < 0) {
        if (ngx_collab_ai_timer_ev.timer_set) {
            ngx_del_timer(&ngx_collab_ai_timer_ev);
        }

        return 0;
    }

    /*
     * never call libcurl back from its own callback: one loop later;
     * the exact time, not ngx_add_timer()'s lazy one: a new transfer
     * asks for 0 ms
     */

    if (ngx_collab_ai_timer_ev.timer_set) {
        ngx_del_timer(&ngx_collab_ai_timer_ev);
    }

    ngx_add_timer(&ngx_collab_ai_timer_ev, (ngx_msec_t) timeout_ms);

    return 0;
}


static void
ngx_collab_ai_timer_handler(ngx_event_t *ev)
{
    int  running;

    (void) curl_multi_socket_action(ngx_collab_ai_multi, CURL_SOCKET_TIMEOUT,
                                    0, &running);
    ngx_collab_ai_check();
}


static void
ngx_collab_ai_handler(ngx_event_t *ev)
{
    int                running;
    ngx_connection_t  *c;

    c = ev->data;

    /* c may be given back during the call */

    (void) curl_multi_socket_action(ngx_collab_ai_multi, c->fd,
                                    ev->write ? CURL_CSELECT_OUT
                                              : CURL_CSELECT_IN,
                                    &running);
    ngx_collab_ai_check();
}


static void
ngx_collab_ai_check(void)
{
    int                   left;
    CURLMsg              *m;
    ngx_collab_ai_job_t  *job;

    while ((m = curl_multi_info_read(ngx_collab_ai_multi, &left))) {

        if (m->msg != CURLMSG_DONE) {
            continue;
        }

        job = NULL;
        (void) curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE,
                                 (char **) &job);

        if (job) {
            ngx_collab_ai_finish(job, m->data.result);
        }
    }
}


static void
ngx_collab_ai_detach(ngx_connection_t *c)
{
    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, 0);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, 0);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    ngx_collab_ai_track(c, 0);

    ngx_free_connection(c);
    c->fd = (ngx_socket_t) -1;
}


/* libcurl closes a socket: if this module still watches it, stop first */

static int
ngx_collab_ai_close_socket(void *clientp, curl_socket_t fd)
{
    ngx_uint_t  i;

    for (i = 0; i < 256; i++) {
        if (ngx_collab_ai_conns[i] && ngx_collab_ai_conns[i]->fd == fd) {
            ngx_collab_ai_detach(ngx_collab_ai_conns[i]);
            break;
        }
    }

    return close(fd);
}


/* remembers (on) or forgets a connection given to a libcurl socket */

static void
ngx_collab_ai_track(ngx_connection_t *c, ngx_uint_t on)
{
    ngx_uint_t  i;

    for (i = 0; i < 256; i++) {
        if (on ? ngx_collab_ai_conns[i] == NULL
               : ngx_collab_ai_conns[i] == c)
        {
            ngx_collab_ai_conns[i] = on ? c : NULL;
            return;
        }
    }
}


/*
 * A worker shutting down gracefully (reload, quit) waits for the timers
 * that are not cancelable: this one is set while replies are being made,
 * so that a reply in progress is finished and stored (the send path then
 * holds the worker until it is committed) rather than dropped.  Each
 * reply is bounded by collab_ai_timeout.
 */

static void
ngx_collab_ai_hold(void)
{
    if (ngx_collab_ai_njobs) {
        if (!ngx_collab_ai_hold_ev.timer_set) {
            ngx_add_timer(&ngx_collab_ai_hold_ev,
                          ngx_collab_ai_conf->timeout + 1000);
        }

    } else if (ngx_collab_ai_hold_ev.timer_set) {
        ngx_del_timer(&ngx_collab_ai_hold_ev);
    }
}


static void
ngx_collab_ai_hold_handler(ngx_event_t *ev)
{
    ngx_collab_ai_hold();
}
