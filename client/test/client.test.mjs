// Unit tests of the compiled client (dist/) against a fake WebSocket and a
// fake clock: backoff, resume, the offline queue, typing and presence.

import test from 'node:test';
import assert from 'node:assert/strict';

import {
    createCollabClient, reconnectDelay, formatTyping, DEFAULT_BACKOFF,
} from '../dist/index.js';
import { FakeClock, makeFakeWebSocket, settle, msg } from './fakes.mjs';

function setup(extra = {}) {
    const clock = new FakeClock();
    const { FakeWebSocket, sockets } = makeFakeWebSocket();
    let ids = 0;
    const client = createCollabClient({
        url: 'ws://test/collab/ws?user=u1&name=Ann',
        WebSocket: FakeWebSocket,
        timers: clock,
        random: () => 0.5,
        visibility: null,
        heartbeatMs: 0,
        newClientMsgId: () => `id${++ids}`,
        ...extra,
    });
    client.setIdentity('u1', 'Ann');
    const last = () => sockets[sockets.length - 1];
    return { clock, sockets, client, last };
}

// answers the pending join of the last socket
async function answerJoin(ws, session, messages, more = false, presence) {
    await settle();
    const [req] = ws.take('join');
    assert.ok(req, 'a join was sent');
    assert.equal(req.session, session);
    ws.reply(req, {
        op: 'joined', session: { id: session, title: 'T' },
        lastSeq: messages.length ? messages[messages.length - 1].seq : 0,
        messages, more, presence: presence ?? [],
    });
    await settle();
    return req;
}

function seqs(session) {
    return session.getSnapshot().messages.map((m) => m.seq);
}

// --- backoff ------------------------------------------------------------------

test('reconnectDelay: full jitter within min(cap, base * 2^attempt)', () => {
    const b = DEFAULT_BACKOFF;
    for (let a = 0; a < 12; a++) {
        const window = Math.min(b.capMs, b.baseMs * 2 ** a);
        assert.equal(reconnectDelay(a, 1006, () => 0), 0);
        const hi = reconnectDelay(a, 1006, () => 0.999999);
        assert.ok(hi < window && hi >= window * 0.99,
                  `attempt ${a}: ${hi} near ${window}`);
    }
    assert.ok(reconnectDelay(50, 1006, () => 0.999999) < b.capMs);
});

test('reconnectDelay: polite codes wait, restart codes come back soon', () => {
    for (const code of [1008, 1009, 4001]) {
        assert.ok(reconnectDelay(0, code, () => 0) >= DEFAULT_BACKOFF.politeMs,
                  `${code}: at least politeMs`);
        assert.ok(reconnectDelay(30, code, () => 0.999999)
                  <= DEFAULT_BACKOFF.capMs, `${code}: capped`);
    }
    for (const code of [1012, 1013]) {
        const d = reconnectDelay(0, code, () => 0.999999);
        assert.ok(d < DEFAULT_BACKOFF.soonMs, `${code}: ${d} < soonMs`);
    }
    // the jitter really spreads clients out
    const set = new Set();
    for (let i = 0; i < 20; i++) {
        set.add(reconnectDelay(0, 1012, () => i / 20));
    }
    assert.equal(set.size, 20);
});

test('failed attempts back off exponentially and reset after a stable open',
     async () => {
    const { clock, sockets, client, last } = setup({ random: () => 0.999 });
    assert.equal(sockets.length, 1);
    assert.equal(client.status, 'connecting');

    const delays = [];
    for (let i = 0; i < 8; i++) {
        last().fail();
        assert.equal(client.status, 'reconnecting');
        const d = client.connection.retryAt - clock.now();
        delays.push(d);
        await clock.advance(d - 1);
        assert.equal(sockets.length, i + 1, 'no attempt before the delay');
        await clock.advance(1);
        assert.equal(sockets.length, i + 2, 'one attempt after it');
    }
    assert.deepEqual(delays, [499, 999, 1998, 3996, 7992, 15984, 29970, 29970]);

    // open, but not for long: the count stays
    last().accept();
    await clock.advance(DEFAULT_BACKOFF.stableMs - 100);
    last().serverClose(1006);
    assert.equal(client.connection.retryAt - clock.now(), 29970);

    // open for longer than stableMs: the next drop starts from the base
    await clock.advance(29970);
    last().accept();
    await clock.advance(DEFAULT_BACKOFF.stableMs);
    assert.equal(client.connection.attempt, 0);
    last().serverClose(1006);
    assert.equal(client.connection.retryAt - clock.now(), 499);
    client.close();
});

test('1008 waits politely, 1012 reconnects within a second', async () => {
    const { clock, client, last } = setup({ random: () => 0 });
    last().accept();
    await clock.advance(DEFAULT_BACKOFF.stableMs);
    last().serverClose(1008, 'slow consumer');
    assert.ok(client.connection.retryAt - clock.now()
              >= DEFAULT_BACKOFF.politeMs);
    assert.equal(client.connection.lastCloseCode, 1008);

    await clock.advance(DEFAULT_BACKOFF.politeMs);
    last().accept();
    await clock.advance(DEFAULT_BACKOFF.stableMs);
    last().serverClose(1012, 'restart');
    assert.ok(client.connection.retryAt - clock.now() < 1000);
    client.close();
});

test('client.close() stops reconnecting', async () => {
    const { clock, sockets, client, last } = setup();
    last().accept();
    client.close();
    assert.equal(client.status, 'closed');
    await clock.advance(120000);
    assert.equal(sockets.length, 1);
});

test('getToken is asked before every attempt', async () => {
    let n = 0;
    const { clock, sockets, last } = setup({ getToken: async () => `t${++n}` });
    await settle();
    assert.match(last().url, /\?user=u1&name=Ann&access_token=t1$/);
    last().fail();
    await clock.advance(60000);
    await settle();
    assert.equal(sockets.length, 2);
    assert.match(last().url, /access_token=t2$/);
    assert.deepEqual(last().protocols, 'collab.v1');
});

test('a silent connection is dropped by the heartbeat', async () => {
    const { clock, sockets, client, last } = setup({
        heartbeatMs: 1000, heartbeatTimeoutMs: 500,
    });
    last().accept();
    await clock.advance(1000);
    const [ping] = last().take('ping');
    assert.ok(ping, 'a ping op was sent');
    last().reply(ping, { op: 'pong' });
    await clock.advance(1000);
    assert.ok(last().take('ping').length, 'another one a beat later');
    await clock.advance(500);      // no pong
    assert.equal(client.status, 'reconnecting');
    await clock.advance(60000);
    assert.equal(sockets.length, 2);
    client.close();
});

// --- resume -------------------------------------------------------------------

test('resume: join with since = last seq, pages followed, no duplicates',
     async () => {
    const { clock, client, last } = setup();
    last().accept();
    const s = client.session('room').acquire();
    const first = await answerJoin(last(), 'room', [msg(1), msg(2), msg(3)]);
    assert.equal(first.since, undefined, 'the first join has no since');
    assert.equal(s.getSnapshot().status, 'live');

    // an event, then one out of order and a duplicate: kept sorted, once
    last().push({ op: 'message', session: 'room', ...msg(5) });
    last().push({ op: 'message', session: 'room', ...msg(4) });
    last().push({ op: 'message', session: 'room', ...msg(5) });
    await settle();
    assert.deepEqual(seqs(s), [1, 2, 3, 4, 5]);

    last().serverClose(1012);
    assert.equal(s.getSnapshot().status, 'joining');
    await clock.advance(1000);
    last().accept();

    // the first page overlaps what we hold and says more
    const j1 = await answerJoin(last(), 'room',
                                [msg(5), msg(6), msg(7)], true);
    assert.equal(j1.since, 5);
    assert.equal(s.getSnapshot().status, 'syncing');
    const j2 = await answerJoin(last(), 'room', [msg(8)], false);
    assert.equal(j2.since, 7, 'the next page from the last seq received');
    assert.equal(s.getSnapshot().status, 'live');
    assert.deepEqual(seqs(s), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert.equal(s.getSnapshot().lastSeq, 8);
    client.close();
});

test('events of other sessions and unknown ops are ignored', async () => {
    const { client, last } = setup();
    last().accept();
    const s = client.session('a').acquire();
    await answerJoin(last(), 'a', [msg(1)]);
    last().push({ op: 'message', session: 'b', ...msg(2) });
    last().push({ op: 'whatever', session: 'a', seq: 9 });
    await settle();
    assert.deepEqual(seqs(s), [1]);
    client.close();
});

test('a refused join is an error, not a retry loop', async () => {
    const { clock, client, last } = setup();
    last().accept();
    const s = client.session('secret').acquire();
    await settle();
    const [req] = last().take('join');
    last().reply(req, { op: 'error', code: 'ACCESS_DENIED', message: 'no' });
    await settle();
    assert.equal(s.getSnapshot().status, 'error');
    assert.equal(s.getSnapshot().error.code, 'ACCESS_DENIED');
    await clock.advance(60000);
    assert.equal(last().take('join').length, 0);
    client.close();
});

test('deleted, or this user removed: the session ends, queued sends fail',
     async () => {
    const { clock, client, last } = setup();
    last().accept();
    const gone = client.session('gone').acquire();
    const out = client.session('out').acquire();
    const other = client.session('other').acquire();
    await settle();
    for (const req of last().take('join')) {
        last().reply(req, { op: 'joined', session: { id: req.session },
                            lastSeq: 1, messages: [msg(1)], more: false,
                            presence: [] });
    }
    await settle();
    for (const s of [gone, out, other]) {
        assert.equal(s.getSnapshot().status, 'live');
    }

    // someone else removed: a member event like any other
    last().push({ op: 'member', session: 'other', user: 'u2',
                  action: 'removed' });
    await settle();
    assert.equal(other.getSnapshot().status, 'live');

    const q = gone.send('never acked');
    await settle();
    last().push({ op: 'deleted', session: 'gone' });
    last().push({ op: 'member', session: 'out', user: 'u1',
                  action: 'removed' });
    await settle();

    let snap = gone.getSnapshot();
    assert.equal(snap.status, 'error');
    assert.equal(snap.error.code, 'NOT_FOUND');
    assert.deepEqual(snap.messages.filter((m) => m.clientMsgId === q)
                         .map((m) => [m.state, m.error]),
                     [['failed', 'NOT_FOUND']]);
    snap = out.getSnapshot();
    assert.equal(snap.status, 'error');
    assert.equal(snap.error.code, 'ACCESS_DENIED');
    assert.equal(other.getSnapshot().status, 'live');

    // no rejoin of either after a reconnect; the other one comes back
    last().serverClose(1006);
    await clock.advance(60000);
    last().accept();
    await settle();
    assert.deepEqual(last().take('join').map((j) => j.session), ['other']);
    client.close();
});

test('an UNAVAILABLE join is retried', async () => {
    const { clock, client, last } = setup();
    last().accept();
    const s = client.session('room').acquire();
    await settle();
    const [req] = last().take('join');
    last().reply(req, { op: 'error', code: 'UNAVAILABLE', message: 'db' });
    await clock.advance(5000);
    await answerJoin(last(), 'room', []);
    assert.equal(s.getSnapshot().status, 'live');
    client.close();
});

// --- the send queue -----------------------------------------------------------

test('offline sends are queued and flushed once after the join', async () => {
    const { clock, client, last } = setup();
    const s = client.session('room').acquire();
    const id1 = s.send('hello');
    const id2 = s.send('world');
    await settle();
    let snap = s.getSnapshot();
    assert.deepEqual(snap.messages.map((m) => [m.body, m.state]),
                     [['hello', 'pending'], ['world', 'pending']]);
    assert.equal(last().sent.length, 0, 'nothing sent while connecting');

    last().accept();
    await settle();
    assert.equal(last().take('send').length, 0, 'not before the join');
    await answerJoin(last(), 'room', [msg(1)]);
    const sends = last().take('send');
    assert.deepEqual(sends.map((f) => [f.body, f.clientMsgId, f.session]),
                     [['hello', id1, 'room'], ['world', id2, 'room']]);

    // ack, then the event: one message, "sent"
    last().reply(sends[0], { op: 'ack', clientMsgId: id1, seq: 2,
                             createdAt: 'x', duplicate: false });
    await settle();
    snap = s.getSnapshot();
    assert.deepEqual(snap.messages.map((m) => [m.seq, m.body, m.state]),
                     [[1, 'm1', 'sent'], [2, 'hello', 'sent'],
                      [null, 'world', 'pending']]);
    last().push({ op: 'message', session: 'room',
                  ...msg(2, { user: 'u1', userName: 'Ann', body: 'hello',
                              clientMsgId: id1 }) });
    await settle();
    snap = s.getSnapshot();
    assert.deepEqual(snap.messages.map((m) => [m.seq, m.body, m.state, m.own]),
                     [[1, 'm1', 'sent', false], [2, 'hello', 'sent', true],
                      [null, 'world', 'pending', true]]);

    // the connection drops before "world" is acked; the server had stored
    // it: it comes back in the resume page and is not sent again
    last().serverClose(1006);
    await clock.advance(60000);
    last().accept();
    const j = await answerJoin(last(), 'room', [
        msg(3, { user: 'u1', userName: 'Ann', body: 'world', clientMsgId: id2 }),
    ]);
    assert.equal(j.since, 2);
    assert.equal(last().take('send').length, 0, 'no resend of a stored one');
    assert.deepEqual(s.getSnapshot().messages.map((m) => [m.seq, m.body]),
                     [[1, 'm1'], [2, 'hello'], [3, 'world']]);
    client.close();
});

test('an unacked send is resent with the same clientMsgId', async () => {
    const { clock, client, last } = setup();
    last().accept();
    const s = client.session('room').acquire();
    await answerJoin(last(), 'room', []);
    const id = s.send('again');
    await settle();
    const [first] = last().take('send');
    assert.equal(first.clientMsgId, id);
    last().serverClose(1006);
    await clock.advance(60000);
    last().accept();
    await answerJoin(last(), 'room', []);      // not stored before the drop
    const [second] = last().take('send');
    assert.equal(second.clientMsgId, id, 'same clientMsgId');
    last().reply(second, { op: 'ack', clientMsgId: id, seq: 1,
                           createdAt: 'x', duplicate: true });
    await settle();
    assert.deepEqual(s.getSnapshot().messages.map((m) => [m.seq, m.state]),
                     [[1, 'sent']]);
    client.close();
});

test('a picture goes with its send; BAD_IMAGE fails it', async () => {
    const { client, last } = setup();
    last().accept();
    const s = client.session('room').acquire();
    await answerJoin(last(), 'room', []);

    const url = 'data:image/png;base64,iVBORw==';
    const id = s.send('@ai make it blue', url);
    const plain = s.send('no picture');
    await settle();
    const sends = last().take('send');
    assert.deepEqual(sends.map((f) => [f.clientMsgId, f.image]),
                     [[id, url], [plain, undefined]]);
    assert.ok(!('image' in sends[1]), 'no image field without a picture');
    let m = s.getSnapshot().messages.find((x) => x.clientMsgId === id);
    assert.deepEqual(m.metadata, { image: url }, 'shown while pending');

    last().reply(sends[0], { op: 'error', code: 'BAD_IMAGE', message: 'no' });
    await settle();
    m = s.getSnapshot().messages.find((x) => x.clientMsgId === id);
    assert.equal(m.state, 'failed');
    assert.equal(m.error, 'BAD_IMAGE');
    client.close();
});

test('transient send errors are retried, permanent ones fail', async () => {
    const { clock, client, last } = setup();
    last().accept();
    const s = client.session('room').acquire();
    await answerJoin(last(), 'room', []);

    const big = s.send('x'.repeat(10));
    await settle();
    let [req] = last().take('send');
    last().reply(req, { op: 'error', code: 'TOO_LARGE', message: 'big' });
    await settle();
    let m = s.getSnapshot().messages.find((x) => x.clientMsgId === big);
    assert.equal(m.state, 'failed');
    assert.equal(m.error, 'TOO_LARGE');
    await clock.advance(60000);
    assert.equal(last().take('send').length, 0, 'a failed one stays');

    s.retry(big);
    await settle();
    [req] = last().take('send');
    assert.equal(req.clientMsgId, big, 'retry() resends it');
    assert.equal(s.getSnapshot().messages.find((x) => x.clientMsgId === big)
                 .state, 'pending');

    // RATE_LIMITED with retryAfter: resent after that long
    last().reply(req, { op: 'error', code: 'RATE_LIMITED', message: 'slow',
                        retryAfter: 700 });
    await clock.advance(699);
    assert.equal(last().take('send').length, 0);
    await clock.advance(1);
    [req] = last().take('send');
    assert.equal(req.clientMsgId, big);
    client.close();
});

// --- typing and presence ----------------------------------------------------

test('typing: throttled refresh and auto-stop', async () => {
    const { clock, client, last } = setup();
    last().accept();
    const s = client.session('room').acquire();
    await answerJoin(last(), 'room', []);
    const typing = () => last().take('typing').map((f) => f.on);

    for (let i = 0; i < 10; i++) {          // a keystroke every 150 ms
        s.setTyping(true);
        await clock.advance(150);
    }
    assert.deepEqual(typing(), [true], 'one "on" within 1.5 s');
    for (let i = 0; i < 5; i++) {
        s.setTyping(true);
        await clock.advance(150);
    }
    assert.deepEqual(typing(), [true], 'refreshed after ~2 s');
    await clock.advance(3000);
    assert.deepEqual(typing(), [false], 'stopped after idle');
    await clock.advance(10000);
    assert.deepEqual(typing(), []);

    s.setTyping(true);
    s.send('done');
    await settle();
    assert.deepEqual(typing(), [true, false], 'sending stops typing');
    client.close();
});

test('typing and presence events show display names', async () => {
    const { clock, client, last } = setup();
    last().accept();
    const s = client.session('room').acquire();
    await answerJoin(last(), 'room', [], false, [
        { user: 'u1', userName: 'Ann', status: 'online', typing: false },
        { user: 'u2', userName: 'Bob', status: 'online', typing: false },
    ]);
    last().push({ op: 'typing', session: 'room', user: 'u2', on: true });
    await settle();
    assert.deepEqual(s.getSnapshot().typingUsers,
                     [{ user: 'u2', userName: 'Bob' }]);
    assert.equal(formatTyping(s.getSnapshot().typingUsers),
                 'Bob is typing…');
    last().push({ op: 'typing', session: 'room', user: 'u2', on: false });
    await settle();
    assert.deepEqual(s.getSnapshot().typingUsers, []);

    last().push({ op: 'presence', session: 'room',
                  joins: [{ user: 'u3', userName: 'Cy', status: 'online' }],
                  leaves: [{ user: 'u2', status: 'offline', lastSeen: 5 }],
                  updates: [{ user: 'u1', status: 'away' }] });
    await settle();
    const p = Object.fromEntries(s.getSnapshot().presence
                                 .map((x) => [x.user, [x.userName, x.status]]));
    assert.deepEqual(p, { u1: ['Ann', 'away'], u2: ['Bob', 'offline'],
                          u3: ['Cy', 'online'] });

    // a typing indicator whose "off" never comes still ends
    last().push({ op: 'typing', session: 'room', user: 'u3', on: true });
    await clock.advance(20000);
    assert.deepEqual(s.getSnapshot().typingUsers, []);
    client.close();
});

test('presence away while the page is hidden, again after a reconnect',
     async () => {
    let hidden = false;
    let fire = () => {};
    const { clock, client, last } = setup({
        visibility: {
            hidden: () => hidden,
            subscribe: (fn) => { fire = fn; return () => {}; },
        },
    });
    last().accept();
    client.session('room').acquire();
    await answerJoin(last(), 'room', []);
    hidden = true;
    fire();
    await settle();
    assert.deepEqual(last().take('presence').map((f) => f.status), ['away']);
    last().serverClose(1012);
    await clock.advance(2000);
    last().accept();
    await answerJoin(last(), 'room', []);
    assert.deepEqual(last().take('presence').map((f) => f.status), ['away'],
                     'a new connection is told again');
    hidden = false;
    fire();
    await settle();
    assert.deepEqual(last().take('presence').map((f) => f.status), ['online']);
    client.close();
});

test('formatTyping', () => {
    const u = (n) => ({ user: n.toLowerCase(), userName: n });
    assert.equal(formatTyping([]), '');
    assert.equal(formatTyping([{ user: 'x1', userName: null }]),
                 'x1 is typing…');
    assert.equal(formatTyping([u('Ann'), u('Bob')]),
                 'Ann and Bob are typing…');
    assert.equal(formatTyping([u('A'), u('B'), u('C'), u('D'), u('E')]),
                 'A, B and 3 others are typing…');
});

test('requests: replies matched by ref, errors rejected', async () => {
    const { client, last } = setup();
    last().accept();
    const p1 = client.createSession({ title: 'One', isPublic: true });
    const p2 = client.listSessions();
    await settle();
    const [c] = last().take('create');
    const [l] = last().take('sessions');
    assert.equal(c.title, 'One');
    assert.equal(c.isPublic, true);
    last().reply(l, { op: 'sessions', sessions: [{ id: 'a', title: 'A' }] });
    last().reply(c, { op: 'error', code: 'BAD_REQUEST', message: 'bad' });
    assert.deepEqual(await p2, [{ id: 'a', title: 'A' }]);
    await assert.rejects(p1, (e) => e.code === 'BAD_REQUEST');
    client.close();
});
