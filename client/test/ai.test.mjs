// Unit tests of the AI participant's side of the client (dist/) against a
// fake WebSocket: streamed replies (ai_delta, ai_progress, ai_error, the
// final "ai" message), ai_cancel, and the owner's update of aiTrigger.

import test from 'node:test';
import assert from 'node:assert/strict';

import { createCollabClient, CollabError } from '../dist/index.js';
import { FakeClock, makeFakeWebSocket, settle, msg } from './fakes.mjs';

const S = 'sess1';

// a client, connected, with session S joined (messages 1..2)
async function joined() {
    const clock = new FakeClock();
    const { FakeWebSocket, sockets } = makeFakeWebSocket();
    const client = createCollabClient({
        url: 'ws://test/collab/ws?user=u1&name=Ann',
        WebSocket: FakeWebSocket,
        timers: clock,
        random: () => 0.5,
        visibility: null,
        heartbeatMs: 0,
    });
    client.setIdentity('u1', 'Ann');
    const ws = () => sockets[sockets.length - 1];
    ws().accept();
    const session = client.session(S).acquire();
    await settle();
    const [req] = ws().take('join');
    ws().reply(req, {
        op: 'joined',
        session: { id: S, title: 'T', owner: 'u1', role: 'owner',
                   aiTrigger: null },
        lastSeq: 2, messages: [msg(1), msg(2)], more: false, presence: [],
    });
    await settle();
    assert.equal(session.getSnapshot().status, 'live');
    return { clock, sockets, client, session, ws };
}

function delta(replyTo, index, text) {
    return { op: 'ai_delta', session: S, replyTo, index, text };
}

function aiMessage(seq, replyTo, body, meta = {}) {
    return {
        op: 'message', session: S, seq, user: null, userName: 'AI',
        kind: 'ai', body, clientMsgId: `ai:${replyTo}`,
        createdAt: '2025-01-01T00:00:01.000Z',
        metadata: { replyTo, model: 'm', ...meta },
    };
}

test('deltas accumulate in index order, across coalesced events',
     async () => {
    const { client, session, ws } = await joined();
    let calls = 0;
    session.subscribe(() => { calls++; });

    // three deltas in one tick: one notification, all the text
    ws().push(delta(2, 0, 'Tuesday '));
    ws().push(delta(2, 1, 'works '));
    ws().push(delta(2, 2, 'for '));
    await settle();
    assert.equal(calls, 1);
    assert.deepEqual(session.getSnapshot().aiReplies,
                     [{ replyTo: 2, text: 'Tuesday works for ' }]);

    // a duplicate and an old index change nothing
    ws().push(delta(2, 1, 'works '));
    ws().push(delta(2, 0, 'Tuesday '));
    // one out of turn waits for the one before it
    ws().push(delta(2, 4, '!'));
    await settle();
    assert.equal(session.getSnapshot().aiReplies[0].text,
                 'Tuesday works for ');
    ws().push(delta(2, 3, 'me'));
    await settle();
    assert.equal(session.getSnapshot().aiReplies[0].text,
                 'Tuesday works for me!');

    // deltas with a missing start (joined mid-reply) show no text yet
    ws().push(delta(7, 3, 'tail'));
    await settle();
    assert.deepEqual(session.getSnapshot().aiReplies[1],
                     { replyTo: 7, text: '' });
    client.close();
});

test('the final message replaces the entry and is in messages', async () => {
    const { client, session, ws } = await joined();
    ws().push(delta(2, 0, 'Tuesday works for me.'));
    ws().push(aiMessage(3, 2, 'Tuesday works for me.'));
    await settle();

    const st = session.getSnapshot();
    assert.deepEqual(st.aiReplies, []);
    const last = st.messages[st.messages.length - 1];
    assert.equal(last.seq, 3);
    assert.equal(last.kind, 'ai');
    assert.equal(last.body, 'Tuesday works for me.');
    assert.equal(last.metadata.replyTo, 2);
    assert.equal(last.own, false);

    // a late delta of that reply does not bring it back
    ws().push(delta(2, 1, 'late'));
    await settle();
    assert.deepEqual(session.getSnapshot().aiReplies, []);
    client.close();
});

test('ai_progress sets the stage; pictures keep their metadata', async () => {
    const { client, session, ws } = await joined();
    ws().push({ op: 'ai_progress', session: S, replyTo: 2,
                stage: 'generating' });
    await settle();
    assert.deepEqual(session.getSnapshot().aiReplies,
                     [{ replyTo: 2, text: '', stage: 'generating' }]);

    ws().push(aiMessage(3, 2, 'A red square',
                        { image: 'data:image/png;base64,AAAA' }));
    await settle();
    const st = session.getSnapshot();
    assert.deepEqual(st.aiReplies, []);
    assert.equal(st.messages[2].metadata.image, 'data:image/png;base64,AAAA');
    client.close();
});

test('ai_error is shown until dismissed or a later message', async () => {
    const { client, session, ws } = await joined();
    ws().push(delta(2, 0, 'Tues'));
    ws().push({ op: 'ai_error', session: S, replyTo: 2,
                code: 'PROVIDER_FAILED',
                message: 'the AI provider answered 503' });
    await settle();
    assert.deepEqual(session.getSnapshot().aiReplies, [{
        replyTo: 2, text: '',
        error: { code: 'PROVIDER_FAILED',
                 message: 'the AI provider answered 503' },
    }]);

    // deltas after the error change nothing
    ws().push(delta(2, 1, 'day'));
    await settle();
    assert.equal(session.getSnapshot().aiReplies[0].text, '');

    session.dismissAiError(2);
    await settle();
    assert.deepEqual(session.getSnapshot().aiReplies, []);

    // an error for a question nothing streamed for (BUSY) ...
    ws().push({ op: 'ai_error', session: S, replyTo: 2, code: 'BUSY',
                message: 'busy' });
    await settle();
    assert.equal(session.getSnapshot().aiReplies[0].error.code, 'BUSY');
    // ... goes with the next message
    ws().push({ op: 'message', session: S, ...msg(3) });
    await settle();
    assert.deepEqual(session.getSnapshot().aiReplies, []);
    client.close();
});

test('a reconnect drops replies in progress; the resume brings the message',
     async () => {
    const { clock, client, session, ws, sockets } = await joined();
    ws().push(delta(2, 0, 'Tues'));
    await settle();
    assert.equal(session.getSnapshot().aiReplies.length, 1);

    ws().serverClose(1006);
    await settle();
    assert.deepEqual(session.getSnapshot().aiReplies, []);

    await clock.advance(60000);
    assert.equal(sockets.length, 2);
    ws().accept();
    await settle();
    const [req] = ws().take('join');
    assert.equal(req.since, 2);
    ws().reply(req, {
        op: 'joined', session: { id: S, title: 'T' }, lastSeq: 3,
        messages: [{ ...aiMessage(3, 2, 'Tuesday.'), op: undefined }],
        more: false, presence: [],
    });
    await settle();
    const st = session.getSnapshot();
    assert.deepEqual(st.aiReplies, []);
    assert.deepEqual(st.messages.map((m) => m.seq), [1, 2, 3]);
    client.close();
});

test('cancelAi sends ai_cancel and resolves on ai_cancelled', async () => {
    const { client, session, ws } = await joined();
    const p = session.cancelAi();
    await settle();
    const [req] = ws().take('ai_cancel');
    assert.ok(req, 'ai_cancel was sent');
    assert.deepEqual(Object.keys(req).sort(), ['op', 'ref', 'session', 'taken']);
    assert.equal(req.session, S);
    ws().reply(req, { op: 'ai_cancelled', session: S });
    await p;

    // an error reply rejects with a CollabError
    const q = session.cancelAi();
    await settle();
    const [req2] = ws().take('ai_cancel');
    ws().reply(req2, { op: 'error', code: 'NOT_FOUND',
                       message: 'no reply is being made' });
    await assert.rejects(q, (e) => e instanceof CollabError
                                   && e.code === 'NOT_FOUND');
    client.close();
});

test('updateSession sends update and takes the reply', async () => {
    const { client, session, ws } = await joined();
    const p = client.updateSession(S, { aiTrigger: 'always', title: 'New' });
    await settle();
    const [req] = ws().take('update');
    assert.ok(req, 'update was sent');
    assert.equal(req.session, S);
    assert.equal(req.aiTrigger, 'always');
    assert.equal(req.title, 'New');
    ws().reply(req, {
        op: 'updated',
        session: { id: S, title: 'New', owner: 'u1', role: 'owner',
                   aiTrigger: 'always' },
    });
    const info = await p;
    assert.equal(info.aiTrigger, 'always');
    assert.equal(session.getSnapshot().info.aiTrigger, 'always');
    assert.equal(session.getSnapshot().info.title, 'New');

    // null gives the session back the server's setting
    const q = client.updateSession(S, { aiTrigger: null });
    await settle();
    const [req2] = ws().take('update');
    assert.ok('aiTrigger' in req2);
    assert.equal(req2.aiTrigger, null);
    ws().reply(req2, { op: 'error', code: 'ACCESS_DENIED', message: 'no' });
    await assert.rejects(q, (e) => e instanceof CollabError
                                   && e.code === 'ACCESS_DENIED');
    client.close();
});

test('a session event applies the changes to info', async () => {
    const { client, session, ws } = await joined();
    ws().push({
        op: 'session', session: S,
        changes: { id: S, title: 'T2', owner: 'u1', aiTrigger: 'off',
                   isPublic: false },
    });
    await settle();
    const info = session.getSnapshot().info;
    assert.equal(info.aiTrigger, 'off');
    assert.equal(info.title, 'T2');
    assert.equal(info.role, 'owner', 'what the event lacks is kept');
    client.close();
});

test('createSession passes aiTrigger', async () => {
    const { client, ws } = await joined();
    const p = client.createSession({ title: 'X', aiTrigger: 'mention' });
    await settle();
    const [req] = ws().take('create');
    assert.equal(req.aiTrigger, 'mention');
    ws().reply(req, { op: 'created',
                      session: { id: 's2', title: 'X', aiTrigger: 'mention' } });
    assert.equal((await p).aiTrigger, 'mention');
    client.close();
});
