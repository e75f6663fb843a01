// Unit tests of the compiled client (dist/) for invitations: the owner's
// ops, the invitee's live list (client.invitations) and the "member"
// event, against the fake WebSocket and clock of fakes.mjs.

import test from 'node:test';
import assert from 'node:assert/strict';

import { createCollabClient } from '../dist/index.js';
import { FakeClock, makeFakeWebSocket, settle } from './fakes.mjs';

function setup() {
    const clock = new FakeClock();
    const { FakeWebSocket, sockets } = makeFakeWebSocket();
    const client = createCollabClient({
        url: 'ws://test/collab/ws?user=bob&name=Bob',
        WebSocket: FakeWebSocket,
        timers: clock,
        random: () => 0.5,
        visibility: null,
        heartbeatMs: 0,
    });
    client.setIdentity('bob', 'Bob');
    const last = () => sockets[sockets.length - 1];
    return { clock, sockets, client, last };
}

function inv(id, extra = {}) {
    return {
        id, session: `s${id}`, title: `Room ${id}`, invitedBy: 'ann',
        invitee: 'bob', status: 'pending',
        expiresAt: '2025-05-09T09:00:00.000Z',
        createdAt: '2025-05-02T09:00:00.000Z', ...extra,
    };
}

const ids = (client) =>
    client.invitations.getSnapshot().invitations.map((i) => i.id);

test('invite, invitations, revoke: frames sent and replies returned',
     async () => {
    const { client, last } = setup();
    last().accept();

    const p1 = client.invite('s1', 'bob');
    await settle();
    const [r1] = last().take('invite');
    assert.deepEqual({ session: r1.session, user: r1.user },
                     { session: 's1', user: 'bob' });
    last().reply(r1, { op: 'invited', invitation: inv(1) });
    assert.deepEqual(await p1, inv(1));

    const p2 = client.listInvitations('s1');
    const p3 = client.listInvitations();
    await settle();
    const [r2, r3] = last().take('invitations');
    assert.equal(r2.session, 's1', 'a session\'s invitations');
    assert.equal('session' in r3, false, 'mine: no session field');
    last().reply(r3, { op: 'invitations', invitations: [] });
    last().reply(r2, { op: 'invitations', invitations: [inv(1)] });
    assert.deepEqual(await p2, [inv(1)]);
    assert.deepEqual(await p3, []);

    const p4 = client.revokeInvitation(1);
    await settle();
    const [r4] = last().take('revoke');
    assert.equal(r4.invitation, 1);
    last().reply(r4, { op: 'revoked', invitation: 1 });
    await p4;

    // the owner's errors are rejected with their code
    const p5 = client.invite('s1', 'bob');
    await settle();
    last().reply(last().take('invite')[0],
                 { op: 'error', code: 'CONFLICT', message: 'pending' });
    await assert.rejects(p5, (e) => e.code === 'CONFLICT');
    client.close();
});

test('the invitation list: read on subscribe, live events, no lost race',
     async () => {
    const { clock, client, last } = setup();
    last().accept();
    let calls = 0;
    const off = client.invitations.subscribe(() => { calls++; });
    assert.equal(client.invitations.getSnapshot().loaded, false);

    await settle();
    const [r] = last().take('invitations');
    assert.ok(r, 'the list is read when it gets a subscriber');

    // events while the read is in flight: one added, one revoked
    last().push({ op: 'invitation', invitation: inv(3) });
    last().push({ op: 'invitation_revoked', invitation: 1, session: 's1' });
    await settle();
    assert.deepEqual(ids(client), [3], 'shown at once');
    last().reply(r, { op: 'invitations', invitations: [inv(1), inv(2)] });
    await settle();
    const st = client.invitations.getSnapshot();
    assert.equal(st.loaded, true);
    assert.deepEqual(ids(client), [3, 2],
                     'the answer, plus what came meanwhile, newest first');
    assert.ok(calls >= 2, 'subscribers are told');
    assert.equal(client.invitations.getSnapshot(), st,
                 'the snapshot is stable while nothing changes');

    // a live invitation after the read
    last().push({ op: 'invitation', invitation: inv(4) });
    await settle();
    assert.deepEqual(ids(client), [4, 3, 2]);

    // a reconnect reads the list again (one may have expired meanwhile)
    last().serverClose(1012);
    await clock.advance(2000);
    last().accept();
    await settle();
    const [again] = last().take('invitations');
    assert.ok(again, 'read again after the reconnect');
    last().reply(again, { op: 'invitations', invitations: [inv(4), inv(2)] });
    await settle();
    assert.deepEqual(ids(client), [4, 2]);

    // without subscribers it is not read again
    off();
    last().serverClose(1012);
    await clock.advance(2000);
    last().accept();
    await settle();
    assert.deepEqual(last().take('invitations'), []);
    client.close();
});

test('accept and decline leave the list; accept rejoins a refused session',
     async () => {
    const { client, last } = setup();
    last().accept();
    client.invitations.subscribe(() => {});
    await settle();
    last().reply(last().take('invitations')[0],
                 { op: 'invitations',
                   invitations: [inv(1), inv(2), inv(3)] });

    // Bob opened the private session before accepting: refused
    const s = client.session('s1').acquire();
    await settle();
    const [j1] = last().take('join');
    last().reply(j1, { op: 'error', code: 'ACCESS_DENIED',
                       message: 'not a participant' });
    await settle();
    assert.equal(s.getSnapshot().status, 'error');
    assert.equal(s.getSnapshot().error.code, 'ACCESS_DENIED');

    const pa = client.acceptInvitation(1);
    await settle();
    const [a] = last().take('accept');
    assert.equal(a.invitation, 1);
    last().reply(a, { op: 'accepted',
                      session: { id: 's1', title: 'Room 1', role: 'member' } });
    assert.equal((await pa).id, 's1');
    assert.deepEqual(ids(client), [3, 2], 'accepted: gone from the list');

    await settle();
    const [j2] = last().take('join');
    assert.ok(j2, 'the held session joins again');
    last().reply(j2, { op: 'joined', session: { id: 's1', title: 'Room 1' },
                       lastSeq: 0, messages: [], more: false, presence: [] });
    await settle();
    assert.equal(s.getSnapshot().status, 'live');
    assert.equal(s.getSnapshot().error, null);

    const pd = client.declineInvitation(2);
    await settle();
    const [d] = last().take('decline');
    last().reply(d, { op: 'declined', session: { id: 's2', title: 'R' } });
    assert.equal((await pd).id, 's2');
    assert.deepEqual(ids(client), [3]);

    // not pending any more (expired, revoked elsewhere): it goes too
    const pc = client.acceptInvitation(3);
    await settle();
    last().reply(last().take('accept')[0],
                 { op: 'error', code: 'CONFLICT', message: 'expired' });
    await assert.rejects(pc, (e) => e.code === 'CONFLICT');
    assert.deepEqual(ids(client), []);

    // a transient failure keeps it
    last().push({ op: 'invitation', invitation: inv(5) });
    const pu = client.acceptInvitation(5);
    await settle();
    last().reply(last().take('accept')[0],
                 { op: 'error', code: 'UNAVAILABLE', message: 'db' });
    await assert.rejects(pu, (e) => e.code === 'UNAVAILABLE');
    assert.deepEqual(ids(client), [5]);
    client.close();
});

test('invitation, invitation_revoked and member events reach listeners',
     async () => {
    const { client, last } = setup();
    last().accept();
    const seen = [];
    client.onInvitation((i) => seen.push(['invitation', i.id, i.title]));
    client.onInvitationRevoked((e) => seen.push(['revoked', e.invitation,
                                                 e.session]));
    const offMember = client.onMember((e) => seen.push(
        ['member', e.session, e.user, e.userName, e.action]));

    const s = client.session('s1').acquire();
    await settle();
    last().reply(last().take('join')[0],
                 { op: 'joined', session: { id: 's1', title: 'T' },
                   lastSeq: 0, messages: [], more: false, presence: [] });
    await settle();

    last().push({ op: 'invitation', invitation: inv(7) });
    last().push({ op: 'invitation_revoked', invitation: 7, session: 's7' });
    last().push({ op: 'member', session: 's1', user: 'cy', userName: 'Cy',
                  action: 'joined' });
    last().push({ op: 'member', session: 's1', user: 'cy',
                  action: 'removed' });
    // malformed events are ignored
    last().push({ op: 'invitation', invitation: { id: 'x' } });
    last().push({ op: 'member', session: 's1' });
    // a reply is not an event
    last().push({ op: 'invitation', ref: 'r999', invitation: inv(8) });
    await settle();

    assert.deepEqual(seen, [
        ['invitation', 7, 'Room 7'],
        ['revoked', 7, 's7'],
        ['member', 's1', 'cy', 'Cy', 'joined'],
        ['member', 's1', 'cy', undefined, 'removed'],
    ]);
    assert.deepEqual(ids(client), []);

    // the newcomer's name is known to the session before any message
    last().push({ op: 'typing', session: 's1', user: 'cy', on: true });
    await settle();
    assert.deepEqual(s.getSnapshot().typingUsers,
                     [{ user: 'cy', userName: 'Cy' }]);

    offMember();
    last().push({ op: 'member', session: 's1', user: 'dee',
                  action: 'joined' });
    await settle();
    assert.equal(seen.length, 4, 'unsubscribed');
    client.close();
});
