/*
 * @ngx-collab/client: a client for ngx_collab's collab.v1 WebSocket
 * protocol (docs/PROTOCOL.md).  No runtime dependencies; works in browsers
 * and in any JavaScript runtime with a WebSocket (or one passed in).
 *
 * One WebSocket per client, any number of sessions over it.  The client
 *   - reconnects with exponential backoff and full jitter, slower after
 *     closes that say "do not hammer" (1008, 1009, 4001), sooner after a
 *     server restart (1012, 1013);
 *   - resumes every joined session with join {since: last seq seen}, so
 *     nothing is missed or shown twice (messages are deduplicated by seq
 *     and kept in seq order);
 *   - queues sends while offline, each with a clientMsgId, and flushes the
 *     queue when the session is live again (the server's idempotency on
 *     clientMsgId makes a resend safe);
 *   - throttles typing notices and stops them by itself;
 *   - reports "away" while the page is hidden;
 *   - keeps the user's pending invitations (client.invitations) live, and
 *     has the owner's ops: invite, accept, decline, revoke;
 *   - shows the AI participant's replies as they stream in (aiReplies in
 *     the snapshot), and can cancel them.
 */
/* an "error" reply, as a rejected promise */
export class CollabError extends Error {
    constructor(code, message, ref = null, retryAfter) {
        super(message);
        this.name = 'CollabError';
        this.code = code;
        this.ref = ref;
        this.retryAfter = retryAfter;
    }
}
/* --- backoff -------------------------------------------------------------- */
export const DEFAULT_BACKOFF = {
    baseMs: 500,
    capMs: 30000,
    stableMs: 10000,
    politeMs: 5000,
    soonMs: 1000,
};
/* close codes after which reconnecting at once would only repeat the
 * problem: slow consumer, message too big, token expired */
export const POLITE_CLOSE_CODES = [1008, 1009, 4001];
/* the server restarts or is overloaded: come back soon, but spread out */
export const SOON_CLOSE_CODES = [1012, 1013];
/*
 * The wait before reconnect attempt number "attempt" (0 for the first
 * after a drop): full jitter, random(0, min(cap, base * 2^attempt)),
 * with a floor after polite closes and a short window after restarts.
 */
export function reconnectDelay(attempt, closeCode, random, opts = DEFAULT_BACKOFF) {
    const exp = Math.min(opts.capMs, opts.baseMs * Math.pow(2, Math.min(attempt, 30)));
    if (closeCode !== null && POLITE_CLOSE_CODES.includes(closeCode)) {
        /* at least politeMs, then full jitter over the usual window */
        return Math.floor(Math.min(opts.capMs, opts.politeMs
            + random() * Math.max(exp, opts.politeMs)));
    }
    if (closeCode !== null && SOON_CLOSE_CODES.includes(closeCode)
        && attempt === 0) {
        return Math.floor(random() * opts.soonMs);
    }
    return Math.floor(random() * exp);
}
/* --- helpers -------------------------------------------------------------- */
const WS_OPEN = 1;
function defaultTimers() {
    return {
        setTimeout: (fn, ms) => globalThis.setTimeout(fn, ms),
        clearTimeout: (h) => globalThis.clearTimeout(h),
        now: () => Date.now(),
    };
}
function defaultVisibility() {
    const doc = globalThis.document;
    if (!doc || typeof doc.addEventListener !== 'function') {
        return null;
    }
    return {
        hidden: () => doc.visibilityState === 'hidden',
        subscribe: (fn) => {
            doc.addEventListener('visibilitychange', fn);
            return () => doc.removeEventListener('visibilitychange', fn);
        },
    };
}
export function randomClientMsgId() {
    const c = globalThis.crypto;
    if (c && typeof c.randomUUID === 'function') {
        return c.randomUUID();
    }
    let s = '';
    for (let i = 0; i < 32; i++) {
        s += Math.floor(Math.random() * 16).toString(16);
    }
    return s;
}
/* "Ann is typing…", "Ann and Bob are typing…", "Ann, Bob and 2 others…" */
export function formatTyping(users) {
    const names = users.map((u) => u.userName || u.user);
    if (names.length === 0) {
        return '';
    }
    if (names.length === 1) {
        return `${names[0]} is typing…`;
    }
    if (names.length === 2) {
        return `${names[0]} and ${names[1]} are typing…`;
    }
    if (names.length === 3) {
        return `${names[0]}, ${names[1]} and ${names[2]} are typing…`;
    }
    return `${names[0]}, ${names[1]} and ${names.length - 2} others are typing…`;
}
function appendQuery(url, key, value) {
    const hash = url.indexOf('#');
    const base = hash >= 0 ? url.slice(0, hash) : url;
    const frag = hash >= 0 ? url.slice(hash) : '';
    const sep = base.includes('?') ? '&' : '?';
    return `${base}${sep}${encodeURIComponent(key)}=${encodeURIComponent(value)}${frag}`;
}
/* --- one session ---------------------------------------------------------- */
export class CollabSession {
    constructor(client, id) {
        this.listeners = new Set();
        this.dirty = true;
        /* received messages by seq, in seq order */
        this.messages = [];
        this.seqs = new Set();
        this.outbox = [];
        this.presence = new Map();
        this.names = new Map();
        this.typing = new Map(); /* user -> expiry timer */
        this.ai = new Map(); /* replyTo -> reply */
        /* questions whose reply message arrived: late deltas are ignored */
        this.aiDone = new Set();
        this.status = 'idle';
        this.info = null;
        this.error = null;
        this.hasOlder = false;
        this.synced = false; /* a join completed once: resume with since */
        this.wanted = false;
        this.users = 0;
        this.joinGen = 0;
        this.joinRetryTimer = null;
        this.joinFailures = 0;
        this.loadingOlder = false;
        /* typing state of this client */
        this.typingOn = false;
        this.typingSentAt = 0;
        this.typingIdleTimer = null;
        /* presence state this client asked for */
        this.away = false;
        /* --- subscription (useSyncExternalStore-compatible) --- */
        this.subscribe = (fn) => {
            this.listeners.add(fn);
            return () => { this.listeners.delete(fn); };
        };
        this.getSnapshot = () => {
            if (this.dirty) {
                this.snapshot = this.build();
                this.dirty = false;
            }
            return this.snapshot;
        };
        /* clientMsgIds this client sent, to mark messages "own" */
        this.ownIds = new Set();
        this.client = client;
        this.id = id;
        this.snapshot = this.build();
    }
    /* --- lifecycle --- */
    /* join (reference counted: every acquire() wants one release()) */
    acquire() {
        this.users++;
        if (!this.wanted) {
            this.wanted = true;
            this.error = null;
            if (this.status === 'left' || this.status === 'error') {
                this.status = 'idle';
            }
            this.client._sessionWanted(this);
            this.startJoin();
        }
        return this;
    }
    release() {
        if (this.users > 0) {
            this.users--;
        }
        if (this.users === 0) {
            /* a remount (React StrictMode) acquires again at once */
            this.client._timers.setTimeout(() => {
                if (this.users === 0 && this.wanted) {
                    this.leave();
                }
            }, 0);
        }
    }
    /* stop receiving the session's events (the membership stays) */
    leave() {
        if (!this.wanted) {
            return;
        }
        this.wanted = false;
        this.users = 0;
        this.joinGen++;
        this.stopTyping(false);
        this.clearTyping();
        this.ai.clear();
        if (this.client._isOpen() && this.status !== 'idle'
            && this.status !== 'error') {
            this.client.request('leave', { session: this.id }).catch(() => { });
        }
        this.status = 'left';
        this.changed();
    }
    /* --- sending --- */
    /*
     * queue a message; returns its clientMsgId.  image: a picture to
     * attach, a data:image/png|jpeg|webp;base64 URL (anything else is
     * refused, BAD_IMAGE: the message is then "failed")
     */
    send(body, image) {
        const item = {
            clientMsgId: this.client._newClientMsgId(),
            body,
            ...(image ? { image } : {}),
            state: 'pending',
            seq: null,
            createdAt: null,
            inFlight: false,
            attempts: 0,
            retryTimer: null,
        };
        this.outbox.push(item);
        this.stopTyping(true);
        this.changed();
        this.flush();
        return item.clientMsgId;
    }
    /* send a failed message again (same clientMsgId) */
    retry(clientMsgId) {
        const item = this.outbox.find((o) => o.clientMsgId === clientMsgId);
        if (!item || item.state !== 'failed') {
            return;
        }
        item.state = 'pending';
        item.attempts = 0;
        item.error = undefined;
        this.changed();
        this.flush();
    }
    /* forget a failed message */
    discard(clientMsgId) {
        const i = this.outbox.findIndex((o) => o.clientMsgId === clientMsgId
            && o.state === 'failed');
        if (i >= 0) {
            this.outbox.splice(i, 1);
            this.changed();
        }
    }
    /* --- typing and presence --- */
    /*
     * setTyping(true) on every keystroke: the server hears "on" at most
     * every typingRefreshMs, and "off" after typingIdleMs without one (or
     * at once with setTyping(false), or when a message is sent).
     */
    setTyping(on) {
        if (!on) {
            this.stopTyping(true);
            return;
        }
        const t = this.client._timers;
        const now = t.now();
        if (this.typingIdleTimer !== null) {
            t.clearTimeout(this.typingIdleTimer);
        }
        this.typingIdleTimer = t.setTimeout(() => {
            this.typingIdleTimer = null;
            this.stopTyping(true);
        }, this.client._opts.typingIdleMs);
        if (!this.typingOn
            || now - this.typingSentAt >= this.client._opts.typingRefreshMs) {
            this.typingOn = true;
            this.typingSentAt = now;
            this.notify('typing', { on: true });
        }
    }
    stopTyping(tell) {
        if (this.typingIdleTimer !== null) {
            this.client._timers.clearTimeout(this.typingIdleTimer);
            this.typingIdleTimer = null;
        }
        if (this.typingOn) {
            this.typingOn = false;
            if (tell) {
                this.notify('typing', { on: false });
            }
        }
    }
    /* fire-and-forget ops: the server answers only errors */
    notify(op, fields) {
        if (this.status !== 'live' || !this.client._isOpen()) {
            return;
        }
        this.client.request(op, { session: this.id, ...fields }, false)
            .catch(() => { });
    }
    _setAway(away) {
        if (this.away === away) {
            return;
        }
        this.away = away;
        this.notify('presence', { status: away ? 'away' : 'online' });
    }
    /* older messages than the first one held (after a join without since) */
    async loadOlder(limit = 50) {
        if (!this.hasOlder || this.loadingOlder || this.status !== 'live') {
            return 0;
        }
        this.loadingOlder = true;
        try {
            const first = this.messages.length ? this.messages[0].seq : 0;
            const r = await this.client.request('history', {
                session: this.id,
                ...(first ? { before: first } : {}),
                limit,
            });
            const list = r.messages || [];
            let n = 0;
            for (const m of list) {
                if (this.addMessage(m)) {
                    n++;
                }
            }
            this.hasOlder = !!r.more;
            this.changed();
            return n;
        }
        finally {
            this.loadingOlder = false;
        }
    }
    /* --- the AI participant --- */
    /*
     * Stop the reply being made in this session (any participant may):
     * resolves on ai_cancelled, rejects with a CollabError (NOT_FOUND: no
     * reply is being made) or an Error (not connected).  What arrived so
     * far is stored and comes as the reply's message with cancelled:
     * true; if nothing had, an ai_error CANCELLED follows instead.
     */
    async cancelAi() {
        await this.client.request('ai_cancel', { session: this.id });
    }
    /* forget a reply that ended with an error, once the UI showed it */
    dismissAiError(replyTo) {
        if (this.ai.get(replyTo)?.error) {
            this.ai.delete(replyTo);
            this.changed();
        }
    }
    /* --- joining and resuming --- */
    _connectionOpen() {
        if (this.wanted) {
            this.startJoin();
        }
    }
    _connectionLost() {
        this.joinGen++;
        if (this.joinRetryTimer !== null) {
            this.client._timers.clearTimeout(this.joinRetryTimer);
            this.joinRetryTimer = null;
        }
        for (const o of this.outbox) {
            o.inFlight = false;
            if (o.retryTimer !== null) {
                this.client._timers.clearTimeout(o.retryTimer);
                o.retryTimer = null;
            }
        }
        this.typingOn = false;
        this.clearTyping();
        /* replies in progress are dropped: their messages come with the
         * resume, and deltas that follow it start a new entry */
        this.ai.clear();
        if (this.wanted && this.status !== 'error') {
            this.status = 'joining';
        }
        this.changed();
    }
    /*
     * The caller became a participant (an accepted invitation): a join
     * that was refused while the UI still holds the session is tried
     * again.
     */
    _accessGranted() {
        if (this.status !== 'error' || this.users === 0) {
            return;
        }
        this.wanted = true;
        this.error = null;
        this.status = 'idle';
        this.changed();
        this.startJoin();
    }
    startJoin() {
        if (!this.wanted || !this.client._isOpen()) {
            if (this.wanted && this.status === 'idle') {
                this.status = 'joining';
                this.changed();
            }
            this.client._ensureConnected();
            return;
        }
        const gen = ++this.joinGen;
        this.status = 'joining';
        this.changed();
        void this.joinLoop(gen);
    }
    async joinLoop(gen) {
        let since = this.synced ? this.lastSeq() : null;
        for (;;) {
            let r;
            try {
                r = await this.client.request('join', {
                    session: this.id,
                    ...(since !== null ? { since } : {}),
                });
            }
            catch (e) {
                if (gen !== this.joinGen) {
                    return;
                }
                this.joinFailed(e);
                return;
            }
            if (gen !== this.joinGen) {
                return;
            }
            this.joinFailures = 0;
            this.info = r.session || this.info;
            const list = r.messages || [];
            for (const m of list) {
                this.addMessage(m);
            }
            if (since === null) {
                this.hasOlder = !!r.more;
            }
            if (Array.isArray(r.presence)) {
                this.setPresence(r.presence);
            }
            if (since !== null && r.more) {
                /* keep asking from the last seq received */
                since = list.length ? list[list.length - 1].seq : since;
                this.status = 'syncing';
                this.changed();
                continue;
            }
            this.synced = true;
            this.status = 'live';
            this.changed();
            /* a new connection starts "online" on the server */
            this.away = false;
            if (this.client._hidden()) {
                this._setAway(true);
            }
            this.flush();
            return;
        }
    }
    joinFailed(e) {
        const transient = !(e instanceof CollabError)
            || e.code === 'UNAVAILABLE' || e.code === 'RATE_LIMITED';
        if (!(e instanceof CollabError) && !this.client._isOpen()) {
            /* the socket went away: the reconnect joins again */
            return;
        }
        if (transient) {
            const delay = e instanceof CollabError && e.retryAfter
                ? e.retryAfter
                : reconnectDelay(this.joinFailures++, null, this.client._random, this.client._backoff) + 250;
            this.joinRetryTimer = this.client._timers.setTimeout(() => {
                this.joinRetryTimer = null;
                this.startJoin();
            }, delay);
            return;
        }
        this.error = e;
        this.status = 'error';
        this.wanted = false;
        this.changed();
    }
    /*
     * The server ended this session for this user (the owner deleted it,
     * or removed the user; the server has let go of the connection's
     * join already): status "error" as a refused join, no rejoin, and
     * what is queued can never be sent.
     */
    ended(code, message) {
        if (this.status === 'left' || this.status === 'error') {
            return;
        }
        this.joinGen++;
        if (this.joinRetryTimer !== null) {
            this.client._timers.clearTimeout(this.joinRetryTimer);
            this.joinRetryTimer = null;
        }
        this.stopTyping(false);
        this.clearTyping();
        this.ai.clear();
        for (const o of this.outbox) {
            if (o.state !== 'pending') {
                continue;
            }
            if (o.retryTimer !== null) {
                this.client._timers.clearTimeout(o.retryTimer);
                o.retryTimer = null;
            }
            o.inFlight = false;
            o.state = 'failed';
            o.error = code;
        }
        this.error = new CollabError(code, message);
        this.status = 'error';
        this.wanted = false;
        this.changed();
    }
    /* --- incoming frames --- */
    _frame(f) {
        switch (f.op) {
            case 'message':
                if (this.status === 'live' || this.status === 'syncing') {
                    const m = f;
                    if (this.addMessage(m)) {
                        this.dropAiErrorsBefore(m.seq);
                    }
                    this.changed();
                }
                return;
            case 'ai_delta':
            case 'ai_progress':
            case 'ai_error':
                if (this.status === 'live' || this.status === 'syncing') {
                    this.aiEvent(f);
                }
                return;
            case 'session':
                /* the owner's update: the session object after it */
                if (f.changes && typeof f.changes === 'object') {
                    this._applyInfo(f.changes);
                }
                return;
            case 'presence':
                this.presenceEvent(f);
                return;
            case 'typing':
                this.typingEvent(String(f.user), !!f.on);
                return;
            case 'deleted':
                this.ended('NOT_FOUND', 'the session was deleted');
                return;
            case 'member':
                if (f.action === 'removed' && this.client.userId !== null
                    && f.user === this.client.userId) {
                    this.ended('ACCESS_DENIED', 'you were removed from this session');
                    return;
                }
                /* a newcomer's display name, before its first message */
                if (typeof f.user === 'string' && typeof f.userName === 'string') {
                    this.names.set(f.user, f.userName);
                }
                return;
            default:
                return;
        }
    }
    /* --- AI replies --- */
    aiEvent(f) {
        const replyTo = f.replyTo;
        if (typeof replyTo !== 'number' || this.aiDone.has(replyTo)) {
            return; /* its message is here already */
        }
        let r = this.ai.get(replyTo);
        if (!r) {
            r = { replyTo, text: '', next: 0, early: new Map() };
            this.ai.set(replyTo, r);
        }
        if (f.op === 'ai_error') {
            /* nothing of the reply is stored: what was shown goes */
            r.text = '';
            r.early.clear();
            r.stage = undefined;
            r.error = { code: String(f.code ?? 'ERROR'),
                message: String(f.message ?? f.code ?? '') };
        }
        else if (r.error) {
            return; /* over already */
        }
        else if (f.op === 'ai_progress') {
            r.stage = typeof f.stage === 'string' ? f.stage : undefined;
        }
        else {
            const index = f.index;
            if (typeof index !== 'number' || typeof f.text !== 'string'
                || index < r.next || r.early.has(index)) {
                return; /* a duplicate, or malformed */
            }
            /* deltas join in index order; one out of turn waits */
            r.early.set(index, f.text);
            let t;
            while ((t = r.early.get(r.next)) !== undefined) {
                r.early.delete(r.next);
                r.text += t;
                r.next++;
            }
        }
        this.changed();
    }
    /* the reply's message arrived: its provisional entry goes */
    aiReplyStored(m) {
        const meta = m.metadata;
        if (m.kind !== 'ai' || !meta || typeof meta.replyTo !== 'number') {
            return;
        }
        this.aiDone.add(meta.replyTo);
        this.ai.delete(meta.replyTo);
    }
    /* errors stay on screen until a later message arrives */
    dropAiErrorsBefore(seq) {
        for (const r of Array.from(this.ai.values())) {
            if (r.error && r.replyTo < seq) {
                this.ai.delete(r.replyTo);
            }
        }
    }
    /* a newer session object (a "session" event, an "updated" reply) */
    _applyInfo(changes) {
        this.info = { ...(this.info ?? {}), ...changes };
        this.changed();
    }
    /* true when the message was new */
    addMessage(m) {
        if (typeof m.seq !== 'number' || this.seqs.has(m.seq)) {
            return false;
        }
        this.seqs.add(m.seq);
        const msgs = this.messages;
        if (msgs.length === 0 || msgs[msgs.length - 1].seq < m.seq) {
            msgs.push(m);
        }
        else {
            let lo = 0;
            let hi = msgs.length;
            while (lo < hi) {
                const mid = (lo + hi) >> 1;
                if (msgs[mid].seq < m.seq) {
                    lo = mid + 1;
                }
                else {
                    hi = mid;
                }
            }
            msgs.splice(lo, 0, m);
        }
        if (m.user && m.userName) {
            this.names.set(m.user, m.userName);
        }
        /* one of ours that was queued: it is delivered now */
        if (m.clientMsgId) {
            const i = this.outbox.findIndex((o) => o.clientMsgId === m.clientMsgId
                && (o.seq === null || o.seq === m.seq));
            if (i >= 0 && this.isOwn(m)) {
                const o = this.outbox[i];
                if (o.retryTimer !== null) {
                    this.client._timers.clearTimeout(o.retryTimer);
                }
                this.outbox.splice(i, 1);
                this.ownIds.add(m.clientMsgId);
            }
        }
        if (m.user && this.typing.has(m.user)) {
            this.typingEvent(m.user, false);
        }
        this.aiReplyStored(m);
        return true;
    }
    isOwn(m) {
        const me = this.client.userId;
        return me === null || m.user === me;
    }
    setPresence(list) {
        this.presence.clear();
        for (const p of list) {
            this.presence.set(p.user, { ...p });
            if (p.userName) {
                this.names.set(p.user, p.userName);
            }
        }
        this.clearTyping();
        for (const p of list) {
            if (p.typing && p.user !== this.client.userId) {
                this.typingEvent(p.user, true);
            }
        }
        this.changed();
    }
    presenceEvent(f) {
        const joins = f.joins || [];
        const leaves = f.leaves || [];
        const updates = f.updates || [];
        for (const p of joins) {
            this.presence.set(p.user, { ...p });
            if (p.userName) {
                this.names.set(p.user, p.userName);
            }
        }
        for (const p of updates) {
            const old = this.presence.get(p.user);
            this.presence.set(p.user, {
                ...(old || { userName: this.names.get(p.user) ?? null }),
                ...p,
            });
        }
        for (const p of leaves) {
            const old = this.presence.get(p.user);
            this.presence.set(p.user, {
                user: p.user,
                userName: old?.userName ?? this.names.get(p.user) ?? null,
                status: 'offline',
                lastSeen: p.lastSeen,
                typing: false,
            });
            this.typingEvent(p.user, false);
        }
        this.changed();
    }
    typingEvent(user, on) {
        const t = this.client._timers;
        const old = this.typing.get(user);
        if (old !== undefined) {
            t.clearTimeout(old);
            this.typing.delete(user);
        }
        if (on) {
            /* the server ends it by itself; this is a safety net */
            this.typing.set(user, t.setTimeout(() => {
                this.typing.delete(user);
                this.changed();
            }, this.client._opts.typingIdleMs * 3));
        }
        this.changed();
    }
    clearTyping() {
        for (const h of this.typing.values()) {
            this.client._timers.clearTimeout(h);
        }
        this.typing.clear();
    }
    /* --- the send queue --- */
    _flush() {
        this.flush();
    }
    flush() {
        if (this.status !== 'live' || !this.client._isOpen()) {
            return;
        }
        for (const o of this.outbox) {
            if (o.state === 'pending' && !o.inFlight && o.seq === null
                && o.retryTimer === null) {
                this.sendItem(o);
            }
        }
    }
    sendItem(o) {
        const gen = this.joinGen;
        o.inFlight = true;
        o.attempts++;
        this.ownIds.add(o.clientMsgId);
        this.client.request('send', {
            session: this.id,
            body: o.body,
            clientMsgId: o.clientMsgId,
            ...(o.image ? { image: o.image } : {}),
        }).then((ack) => {
            o.inFlight = false;
            if (!this.outbox.includes(o)) {
                return; /* its message arrived first */
            }
            o.seq = typeof ack.seq === 'number' ? ack.seq : null;
            o.createdAt = ack.createdAt ?? null;
            o.state = 'sent';
            if (o.seq !== null && this.seqs.has(o.seq)) {
                this.outbox.splice(this.outbox.indexOf(o), 1);
            }
            this.changed();
        }, (e) => {
            o.inFlight = false;
            if (!this.outbox.includes(o)) {
                return;
            }
            if (!(e instanceof CollabError)) {
                /* the connection went away: resent after the rejoin */
                return;
            }
            const transient = e.code === 'UNAVAILABLE'
                || e.code === 'RATE_LIMITED';
            if (transient && o.attempts < this.client._opts.maxSendAttempts) {
                const delay = e.retryAfter
                    || reconnectDelay(o.attempts, null, this.client._random, this.client._backoff) + 100;
                o.retryTimer = this.client._timers.setTimeout(() => {
                    o.retryTimer = null;
                    if (gen === this.joinGen) {
                        this.flush();
                    }
                }, delay);
                return;
            }
            o.state = 'failed';
            o.error = e.code;
            this.changed();
        });
    }
    /* --- snapshot --- */
    lastSeq() {
        return this.messages.length
            ? this.messages[this.messages.length - 1].seq : 0;
    }
    changed() {
        this.dirty = true;
        this.client._scheduleNotify(this);
    }
    _notifyListeners() {
        for (const fn of Array.from(this.listeners)) {
            try {
                fn();
            }
            catch (e) {
                /* a listener's bug is not ours */
                setTimeout(() => { throw e; }, 0);
            }
        }
    }
    build() {
        const me = this.client.userId;
        const out = this.messages.map((m) => ({
            seq: m.seq,
            user: m.user,
            userName: m.userName,
            kind: m.kind,
            body: m.body,
            clientMsgId: m.clientMsgId,
            createdAt: m.createdAt,
            state: 'sent',
            own: me !== null ? m.user === me
                : !!m.clientMsgId && this.ownIds.has(m.clientMsgId),
            ...(m.metadata && typeof m.metadata === 'object'
                ? { metadata: m.metadata } : {}),
        }));
        /* acknowledged but not received yet: at their seq */
        const acked = this.outbox.filter((o) => o.seq !== null);
        for (const o of acked) {
            const c = this.ownMessage(o);
            let i = out.length;
            while (i > 0 && (out[i - 1].seq ?? 0) > o.seq) {
                i--;
            }
            out.splice(i, 0, c);
        }
        for (const o of this.outbox) {
            if (o.seq === null) {
                out.push(this.ownMessage(o));
            }
        }
        const typingUsers = [];
        for (const user of this.typing.keys()) {
            typingUsers.push({
                user,
                userName: this.presence.get(user)?.userName
                    ?? this.names.get(user) ?? null,
            });
        }
        const presence = Array.from(this.presence.values()).map((p) => ({
            ...p,
            typing: this.typing.has(p.user),
        }));
        const aiReplies = Array.from(this.ai.values())
            .sort((a, b) => a.replyTo - b.replyTo)
            .map((r) => ({
            replyTo: r.replyTo,
            text: r.text,
            ...(r.stage !== undefined ? { stage: r.stage } : {}),
            ...(r.error ? { error: r.error } : {}),
        }));
        return {
            id: this.id,
            status: this.status,
            info: this.info,
            messages: out,
            presence,
            typingUsers,
            aiReplies,
            lastSeq: this.lastSeq(),
            hasOlder: this.hasOlder,
            error: this.error,
        };
    }
    ownMessage(o) {
        const me = this.client.userId;
        return {
            seq: o.seq,
            user: me,
            userName: (me && this.names.get(me)) || this.client.userName,
            kind: 'user',
            body: o.body,
            clientMsgId: o.clientMsgId,
            createdAt: o.createdAt,
            state: o.state,
            own: true,
            ...(o.image ? { metadata: { image: o.image } } : {}),
            ...(o.error ? { error: o.error } : {}),
        };
    }
}
/* --- the caller's invitations ---------------------------------------------- */
/*
 * client.invitations: the pending invitations of the signed-in user, kept
 * up to date.  It reads the list from the server ("invitations") when it
 * gets its first subscriber and after every (re)connection while it has
 * subscribers, adds what "invitation" events bring and drops what is
 * accepted, declined or revoked.  Events that arrive while a read is in
 * flight are applied over its answer, so none is lost to the race.
 */
export class InvitationStore {
    constructor(client) {
        this.listeners = new Set();
        this.byId = new Map();
        this.loaded = false;
        this.error = null;
        this.dirty = false;
        this.readGen = 0;
        /* changes since the read in flight was sent: id -> new value or null */
        this.changes = null;
        /* useSyncExternalStore-compatible */
        this.subscribe = (fn) => {
            this.listeners.add(fn);
            if (this.listeners.size === 1) {
                if (this.client._isOpen()) {
                    void this.refresh();
                }
                else {
                    this.client._ensureConnected();
                }
            }
            return () => { this.listeners.delete(fn); };
        };
        this.getSnapshot = () => {
            if (this.dirty) {
                this.snapshot = this.build();
                this.dirty = false;
            }
            return this.snapshot;
        };
        this.client = client;
        this.snapshot = this.build();
    }
    /* read the list from the server again */
    async refresh() {
        const gen = ++this.readGen;
        this.changes = new Map();
        let list;
        try {
            list = await this.client.listInvitations();
        }
        catch (e) {
            if (gen === this.readGen) {
                this.changes = null;
                this.error = e;
                this.changed();
            }
            return;
        }
        if (gen !== this.readGen) {
            return;
        }
        const byId = new Map();
        for (const inv of list) {
            if (inv.status === 'pending') {
                byId.set(inv.id, inv);
            }
        }
        for (const [id, inv] of this.changes ?? []) {
            if (inv) {
                byId.set(id, inv);
            }
            else {
                byId.delete(id);
            }
        }
        this.changes = null;
        this.byId = byId;
        this.loaded = true;
        this.error = null;
        this.changed();
    }
    _connectionOpen() {
        if (this.listeners.size > 0) {
            void this.refresh();
        }
    }
    _add(inv) {
        if (inv.status !== 'pending') {
            this._remove(inv.id);
            return;
        }
        this.byId.set(inv.id, inv);
        this.changes?.set(inv.id, inv);
        this.changed();
    }
    _remove(id) {
        this.changes?.set(id, null);
        if (this.byId.delete(id)) {
            this.changed();
        }
    }
    changed() {
        this.dirty = true;
        for (const fn of Array.from(this.listeners)) {
            try {
                fn();
            }
            catch (e) {
                setTimeout(() => { throw e; }, 0);
            }
        }
    }
    build() {
        return {
            invitations: Array.from(this.byId.values())
                .sort((a, b) => b.id - a.id),
            loaded: this.loaded,
            error: this.error,
        };
    }
}
export class CollabClient {
    constructor(options) {
        /* the user id and name this client acts as, when the site tells it
         * (setIdentity); used to mark own messages and to show queued ones */
        this.userId = null;
        this.userName = null;
        this.unsubscribeVisibility = null;
        this.ws = null;
        this.state = {
            status: 'idle', attempt: 0, retryAt: null,
            lastCloseCode: null, lastCloseReason: '',
        };
        this.statusListeners = new Set();
        this.frameListeners = new Set();
        this.invitationListeners = new Set();
        this.revokedListeners = new Set();
        this.memberListeners = new Set();
        this.sessions = new Map();
        this.pending = new Map();
        this.nextRef = 1;
        this.reconnectTimer = null;
        this.stableTimer = null;
        this.heartbeatTimer = null;
        this.heartbeatDeadline = null;
        this.connectSerial = 0;
        this.closedByUser = false;
        this.notifyQueue = new Set();
        this.notifyScheduled = false;
        this.url = options.url;
        this.getToken = options.getToken
            ?? (options.token ? () => options.token : undefined);
        const WS = options.WebSocket
            ?? globalThis.WebSocket;
        if (!WS) {
            throw new Error('no WebSocket: pass options.WebSocket');
        }
        this.WS = WS;
        this._timers = options.timers ?? defaultTimers();
        this._random = options.random ?? Math.random;
        this._backoff = { ...DEFAULT_BACKOFF, ...(options.backoff || {}) };
        this._opts = {
            heartbeatMs: options.heartbeatMs ?? 25000,
            heartbeatTimeoutMs: options.heartbeatTimeoutMs ?? 10000,
            typingRefreshMs: options.typingRefreshMs ?? 2000,
            typingIdleMs: options.typingIdleMs ?? 3000,
            requestTimeoutMs: options.requestTimeoutMs ?? 30000,
            maxSendAttempts: options.maxSendAttempts ?? 8,
        };
        this.clientMsgIdFn = options.newClientMsgId ?? randomClientMsgId;
        this.invitations = new InvitationStore(this);
        this.visibility = options.visibility === undefined
            ? defaultVisibility() : options.visibility;
        if (this.visibility) {
            this.unsubscribeVisibility = this.visibility.subscribe(() => {
                this.applyVisibility();
            });
        }
        if (!options.lazy) {
            this.connect();
        }
    }
    /* --- connection --- */
    get status() {
        return this.state.status;
    }
    get connection() {
        return this.state;
    }
    onStatus(fn) {
        this.statusListeners.add(fn);
        return () => { this.statusListeners.delete(fn); };
    }
    /* every frame the server sends (replies and events) */
    onFrame(fn) {
        this.frameListeners.add(fn);
        return () => { this.frameListeners.delete(fn); };
    }
    setIdentity(userId, userName) {
        this.userId = userId;
        this.userName = userName ?? null;
    }
    connect() {
        this.closedByUser = false;
        if (this.ws || this.state.status === 'connecting') {
            return;
        }
        if (this.reconnectTimer !== null) {
            this._timers.clearTimeout(this.reconnectTimer);
            this.reconnectTimer = null;
        }
        void this.open();
    }
    /* reconnect now (a "retry now" button, the browser coming online) */
    reconnectNow() {
        if (this.closedByUser || this.ws) {
            return;
        }
        this.connect();
    }
    close() {
        this.closedByUser = true;
        if (this.reconnectTimer !== null) {
            this._timers.clearTimeout(this.reconnectTimer);
            this.reconnectTimer = null;
        }
        if (this.unsubscribeVisibility) {
            this.unsubscribeVisibility();
            this.unsubscribeVisibility = null;
        }
        const ws = this.ws;
        if (ws) {
            this.dropSocket(1000, 'client closed');
            try {
                ws.close(1000, 'bye');
            }
            catch {
                /* already closing */
            }
        }
        this.setState({ status: 'closed', retryAt: null });
    }
    _isOpen() {
        return this.state.status === 'open' && this.ws !== null
            && this.ws.readyState === WS_OPEN;
    }
    _ensureConnected() {
        if (!this.closedByUser && !this.ws && this.reconnectTimer === null
            && this.state.status !== 'connecting') {
            this.connect();
        }
    }
    async open() {
        const serial = ++this.connectSerial;
        this.setState({ status: 'connecting', retryAt: null });
        let url = typeof this.url === 'function' ? this.url() : this.url;
        if (this.getToken) {
            let token;
            try {
                token = await this.getToken();
            }
            catch {
                token = null;
            }
            if (serial !== this.connectSerial || this.closedByUser) {
                return;
            }
            if (token) {
                url = appendQuery(url, 'access_token', token);
            }
        }
        let ws;
        try {
            ws = new this.WS(url, 'collab.v1');
        }
        catch (e) {
            this.onSocketClosed(1006, String(e));
            return;
        }
        this.ws = ws;
        ws.onopen = () => {
            if (ws !== this.ws) {
                return;
            }
            this.onSocketOpen();
        };
        ws.onmessage = (ev) => {
            if (ws !== this.ws) {
                return;
            }
            this.onSocketData(ev.data);
        };
        ws.onclose = (ev) => {
            if (ws !== this.ws) {
                return;
            }
            this.dropSocket(ev.code, ev.reason);
            this.onSocketClosed(ev.code, ev.reason || '');
        };
        ws.onerror = () => {
            /* onclose follows */
        };
    }
    onSocketOpen() {
        this.setState({ status: 'open', retryAt: null });
        /* the attempt count resets once the connection proved stable */
        this.stableTimer = this._timers.setTimeout(() => {
            this.stableTimer = null;
            if (this.state.status === 'open') {
                this.setState({ attempt: 0 });
            }
        }, this._backoff.stableMs);
        this.scheduleHeartbeat();
        for (const s of this.sessions.values()) {
            s._connectionOpen();
        }
        this.invitations._connectionOpen();
    }
    scheduleHeartbeat() {
        if (this._opts.heartbeatMs <= 0) {
            return;
        }
        this.heartbeatTimer = this._timers.setTimeout(() => {
            this.heartbeatTimer = null;
            if (!this._isOpen()) {
                return;
            }
            const ws = this.ws;
            this.heartbeatDeadline = this._timers.setTimeout(() => {
                this.heartbeatDeadline = null;
                if (ws === this.ws) {
                    /* a dead connection: do not wait for TCP to notice */
                    this.dropSocket(4000, 'heartbeat timeout');
                    try {
                        ws?.close(4000, 'heartbeat timeout');
                    }
                    catch {
                        /* ignore */
                    }
                    this.onSocketClosed(1006, 'heartbeat timeout');
                }
            }, this._opts.heartbeatTimeoutMs);
            this.request('ping', {}).then(() => {
                if (this.heartbeatDeadline !== null) {
                    this._timers.clearTimeout(this.heartbeatDeadline);
                    this.heartbeatDeadline = null;
                }
                if (ws === this.ws) {
                    this.scheduleHeartbeat();
                }
            }, () => { });
        }, this._opts.heartbeatMs);
    }
    /* forget the socket: timers stop, requests in flight are rejected */
    dropSocket(code, reason) {
        const ws = this.ws;
        this.ws = null;
        if (ws) {
            ws.onopen = null;
            ws.onmessage = null;
            ws.onclose = null;
            ws.onerror = null;
        }
        for (const h of [this.stableTimer, this.heartbeatTimer,
            this.heartbeatDeadline]) {
            if (h !== null) {
                this._timers.clearTimeout(h);
            }
        }
        this.stableTimer = null;
        this.heartbeatTimer = null;
        this.heartbeatDeadline = null;
        const pending = Array.from(this.pending.values());
        this.pending.clear();
        for (const p of pending) {
            this._timers.clearTimeout(p.timer);
            p.reject(new Error(`connection closed (${code}${reason ? ' ' + reason : ''})`));
        }
        for (const s of this.sessions.values()) {
            s._connectionLost();
        }
    }
    onSocketClosed(code, reason) {
        this.ws = null;
        if (this.closedByUser) {
            this.setState({ status: 'closed', lastCloseCode: code,
                lastCloseReason: reason, retryAt: null });
            return;
        }
        const attempt = this.state.attempt;
        const delay = reconnectDelay(attempt, code, this._random, this._backoff);
        this.setState({
            status: 'reconnecting',
            attempt: attempt + 1,
            lastCloseCode: code,
            lastCloseReason: reason,
            retryAt: this._timers.now() + delay,
        });
        this.reconnectTimer = this._timers.setTimeout(() => {
            this.reconnectTimer = null;
            void this.open();
        }, delay);
    }
    onSocketData(data) {
        if (typeof data !== 'string') {
            return;
        }
        let f;
        try {
            f = JSON.parse(data);
        }
        catch {
            return;
        }
        if (!f || typeof f !== 'object' || typeof f.op !== 'string') {
            return;
        }
        const ref = f.ref;
        if (ref !== undefined && ref !== null) {
            const p = this.pending.get(String(ref));
            if (p) {
                this.pending.delete(String(ref));
                this._timers.clearTimeout(p.timer);
                if (f.op === 'error') {
                    p.reject(new CollabError(String(f.code), String(f.message ?? f.code), ref, typeof f.retryAfter === 'number'
                        ? f.retryAfter : undefined));
                }
                else {
                    p.resolve(f);
                }
            }
        }
        if (ref === undefined || ref === null) {
            const slug = typeof f.session === 'string' ? f.session : null;
            const s = slug ? this.sessions.get(slug) : undefined;
            if (s) {
                s._frame(f);
            }
        }
        if (ref === undefined || ref === null) {
            this.userEvent(f);
        }
        for (const fn of Array.from(this.frameListeners)) {
            fn(f);
        }
    }
    setState(patch) {
        this.state = { ...this.state, ...patch };
        const st = this.state;
        for (const fn of Array.from(this.statusListeners)) {
            fn(st);
        }
    }
    /* --- requests --- */
    /*
     * Sends {op, ref, ...fields} and resolves with the reply carrying the
     * same ref, or rejects with a CollabError (an "error" reply) or an
     * Error (not connected, connection lost, timeout).  expectReply false:
     * ops the server answers only when they fail (typing, presence); the
     * promise resolves at once.
     */
    request(op, fields = {}, expectReply = true) {
        if (!this._isOpen()) {
            this._ensureConnected();
            return Promise.reject(new Error('not connected'));
        }
        const ref = `r${this.nextRef++}`;
        const frame = JSON.stringify({ op, ref, ...fields });
        if (!expectReply) {
            this.ws.send(frame);
            return Promise.resolve({ op: 'sent', ref });
        }
        return new Promise((resolve, reject) => {
            const timer = this._timers.setTimeout(() => {
                if (this.pending.delete(ref)) {
                    reject(new Error(`${op}: no reply`));
                }
            }, this._opts.requestTimeoutMs);
            this.pending.set(ref, { resolve, reject, timer });
            this.ws.send(frame);
        });
    }
    /* resolves once the socket is open (or rejects after timeoutMs) */
    whenOpen(timeoutMs = 30000) {
        if (this._isOpen()) {
            return Promise.resolve();
        }
        this._ensureConnected();
        return new Promise((resolve, reject) => {
            const timer = this._timers.setTimeout(() => {
                off();
                reject(new Error('not connected'));
            }, timeoutMs);
            const off = this.onStatus((s) => {
                if (s.status === 'open') {
                    this._timers.clearTimeout(timer);
                    off();
                    resolve();
                }
            });
        });
    }
    async createSession(opts) {
        await this.whenOpen();
        const r = await this.request('create', { ...opts });
        return r.session;
    }
    /*
     * The owner changes a session ("update"): resolves with the session
     * object after the change.  A handle for the session takes it at
     * once; the other participants get it with the "session" event.
     */
    async updateSession(sessionId, changes) {
        await this.whenOpen();
        const r = await this.request('update', { ...changes, session: sessionId });
        const info = r.session;
        if (info && typeof info.id === 'string') {
            this.sessions.get(info.id)?._applyInfo(info);
        }
        return info;
    }
    async listSessions(limit = 50) {
        await this.whenOpen();
        const r = await this.request('sessions', { limit });
        return r.sessions || [];
    }
    /* --- invitations (the owner invites; the invitee accepts) --- */
    /* invite a user (by the site's user id) to a session the caller owns */
    async invite(sessionId, userId) {
        await this.whenOpen();
        const r = await this.request('invite', { session: sessionId, user: userId });
        return r.invitation;
    }
    /* the caller's pending invitations; with a session id: that
     * session's pending invitations (its owner only) */
    async listInvitations(sessionId) {
        await this.whenOpen();
        const r = await this.request('invitations', sessionId ? { session: sessionId } : {});
        return r.invitations || [];
    }
    /*
     * Accept an invitation: resolves with the session, which the caller
     * may join now.  A session handle that was refused earlier and is
     * still held joins again by itself.
     */
    async acceptInvitation(id) {
        const r = await this.respond('accept', id);
        const info = r.session;
        if (info && typeof info.id === 'string') {
            this.sessions.get(info.id)?._accessGranted();
        }
        return info;
    }
    async declineInvitation(id) {
        const r = await this.respond('decline', id);
        return r.session;
    }
    /* the owner takes an invitation back */
    async revokeInvitation(id) {
        await this.whenOpen();
        await this.request('revoke', { invitation: id });
    }
    async respond(op, id) {
        await this.whenOpen();
        try {
            const r = await this.request(op, { invitation: id });
            this.invitations._remove(id);
            return r;
        }
        catch (e) {
            /* not ours, or not pending any more: it leaves the list */
            if (e instanceof CollabError
                && (e.code === 'NOT_FOUND' || e.code === 'CONFLICT')) {
                this.invitations._remove(id);
            }
            throw e;
        }
    }
    /* an invitation for the caller arrived (live, on any host) */
    onInvitation(fn) {
        this.invitationListeners.add(fn);
        return () => { this.invitationListeners.delete(fn); };
    }
    onInvitationRevoked(fn) {
        this.revokedListeners.add(fn);
        return () => { this.revokedListeners.delete(fn); };
    }
    /* someone joined (accepted an invitation) or was removed from a
     * session this connection joined */
    onMember(fn) {
        this.memberListeners.add(fn);
        return () => { this.memberListeners.delete(fn); };
    }
    userEvent(f) {
        switch (f.op) {
            case 'invitation': {
                const inv = f.invitation;
                if (!inv || typeof inv.id !== 'number') {
                    return;
                }
                this.invitations._add(inv);
                for (const fn of Array.from(this.invitationListeners)) {
                    fn(inv);
                }
                return;
            }
            case 'invitation_revoked': {
                if (typeof f.invitation !== 'number') {
                    return;
                }
                const ev = {
                    invitation: f.invitation,
                    session: String(f.session),
                };
                this.invitations._remove(ev.invitation);
                for (const fn of Array.from(this.revokedListeners)) {
                    fn(ev);
                }
                return;
            }
            case 'member': {
                if (typeof f.session !== 'string' || typeof f.user !== 'string') {
                    return;
                }
                const ev = {
                    session: f.session,
                    user: f.user,
                    action: String(f.action),
                    ...(f.userName !== undefined
                        ? { userName: f.userName } : {}),
                };
                for (const fn of Array.from(this.memberListeners)) {
                    fn(ev);
                }
                return;
            }
            default:
                return;
        }
    }
    /*
     * The session handle for an id (always the same object for the same
     * id).  acquire() joins, release() leaves when nobody holds it.
     */
    session(id) {
        let s = this.sessions.get(id);
        if (!s) {
            s = new CollabSession(this, id);
            this.sessions.set(id, s);
        }
        return s;
    }
    /* --- internals used by CollabSession --- */
    _sessionWanted(_s) {
        this._ensureConnected();
    }
    _newClientMsgId() {
        return this.clientMsgIdFn();
    }
    /* listeners run once per tick, however many frames changed a session */
    _scheduleNotify(s) {
        this.notifyQueue.add(s);
        if (this.notifyScheduled) {
            return;
        }
        this.notifyScheduled = true;
        queueMicrotask(() => {
            this.notifyScheduled = false;
            const list = Array.from(this.notifyQueue);
            this.notifyQueue.clear();
            for (const x of list) {
                x._notifyListeners();
            }
        });
    }
    applyVisibility() {
        const away = !!this.visibility && this.visibility.hidden();
        for (const s of this.sessions.values()) {
            s._setAway(away);
        }
    }
    /* the visibility now, for sessions that just went live */
    _hidden() {
        return !!this.visibility && this.visibility.hidden();
    }
}
export function createCollabClient(options) {
    return new CollabClient(options);
}
