// The ngx_collab demo: the plain SDK (collab-client.js, built from
// client/src by `make client`), no framework.  One client, one session
// shown at a time, the session id in the URL's fragment (#s=<id>).
// Sessions are private by default: the owner invites people by name, and
// they accept from their list of invitations, which updates live.  A
// public session can also be joined by anyone who has its link.  When the
// server has an AI participant, its replies stream in below the messages
// (with a Cancel button) and then become ordinary messages; the owner
// chooses which messages call on it.

import { createCollabClient, formatTyping } from './collab-client.js';

const $ = (id) => document.getElementById(id);

// --- identity: demo only ----------------------------------------------------
// conf/collab.conf says collab_user $arg_user; collab_user_name $arg_name;
// so the name typed here becomes the identity.  A real site takes it from
// its own authentication instead.

function userIdFor(name) {
    const id = name.trim().toLowerCase().normalize('NFKD')
        .replace(/[^\w-]+/g, '-').replace(/^-+|-+$/g, '');
    return id || 'user';
}

let me = null;
try {
    me = JSON.parse(localStorage.getItem('collab.me') || 'null');
} catch {
    me = null;
}
// ?as=<name> signs in directly (handy for trying two users in two windows)
const as = new URLSearchParams(location.search).get('as');
if (as) {
    me = { id: userIdFor(as), name: as.trim() };
}

if (!me) {
    $('signin').hidden = false;
    $('signin').onsubmit = (ev) => {
        ev.preventDefault();
        const name = $('signin-name').value.trim();
        if (!name) {
            return;
        }
        localStorage.setItem('collab.me', JSON.stringify(
            { id: userIdFor(name), name }));
        location.reload();
    };
} else {
    start(me);
}

function start(me) {
    $('app').hidden = false;
    $('me').hidden = false;
    $('me').textContent = `Signed in as ${me.name}`;
    $('signout').hidden = false;
    $('signout').onclick = () => {
        localStorage.removeItem('collab.me');
        location.href = location.pathname + location.hash;
    };

    const wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://')
        + location.host + '/collab/ws?user=' + encodeURIComponent(me.id)
        + '&name=' + encodeURIComponent(me.name);

    const client = createCollabClient({ url: wsUrl });
    client.setIdentity(me.id, me.name);
    window.collabClient = client;           // for the console and tests

    // --- connection banner ---------------------------------------------------

    let bannerTimer = null;

    function renderBanner() {
        const c = client.connection;
        const b = $('banner');
        clearTimeout(bannerTimer);
        if (c.status === 'open' || c.status === 'idle') {
            b.hidden = true;
            return;
        }
        b.hidden = false;
        b.className = c.status === 'reconnecting' ? 'error' : '';
        b.textContent = '';
        if (c.status === 'connecting') {
            b.textContent = c.attempt ? 'Reconnecting…' : 'Connecting…';
        } else if (c.status === 'reconnecting') {
            const s = Math.max(0, Math.ceil((c.retryAt - Date.now()) / 1000));
            b.textContent = `Connection lost (code ${c.lastCloseCode}). `
                + `Reconnecting in ${s} s… Messages you send now are queued. `;
            const btn = document.createElement('button');
            btn.textContent = 'Reconnect now';
            btn.onclick = () => client.reconnectNow();
            b.appendChild(btn);
            bannerTimer = setTimeout(renderBanner, 500);
        } else if (c.status === 'closed') {
            b.textContent = 'Disconnected.';
        }
    }

    client.onStatus((c) => {
        renderBanner();
        if (c.status === 'open') {
            refreshSessions();
        }
    });
    renderBanner();
    window.addEventListener('online', () => client.reconnectNow());

    // --- my invitations --------------------------------------------------------
    // client.invitations is read from the server when subscribed to (and
    // after every reconnect) and updated by the live "invitation" events.

    function renderInvitations() {
        const st = client.invitations.getSnapshot();
        const ul = $('invitations');
        ul.textContent = '';
        ul.dataset.loaded = st.loaded ? 'yes' : 'no';
        for (const inv of st.invitations) {
            const li = document.createElement('li');
            li.dataset.id = inv.id;
            li.dataset.session = inv.session;
            const title = document.createElement('strong');
            title.textContent = inv.title;
            const from = document.createElement('span');
            from.className = 'from';
            from.textContent = `invited by ${inv.invitedBy}`;
            const accept = document.createElement('button');
            accept.className = 'accept';
            accept.textContent = 'Accept';
            accept.onclick = () => respond(inv, true);
            const decline = document.createElement('button');
            decline.className = 'decline';
            decline.textContent = 'Decline';
            decline.onclick = () => respond(inv, false);
            li.append(title, from, accept, decline);
            ul.appendChild(li);
        }
        if (st.invitations.length === 0) {
            ul.innerHTML = st.loaded ? '<li class="hint">None.</li>'
                : '<li class="hint">Loading…</li>';
        }
    }

    async function respond(inv, yes) {
        try {
            if (!yes) {
                await client.declineInvitation(inv.id);
                return;
            }
            const s = await client.acceptInvitation(inv.id);
            // open it: a participant now (if it is open already, refused,
            // the SDK joins it again by itself)
            location.hash = 's=' + s.id;
            refreshSessions();
        } catch (e) {
            alert(`Could not ${yes ? 'accept' : 'decline'} the invitation: `
                  + (e.message || e));
        }
    }

    client.invitations.subscribe(renderInvitations);
    renderInvitations();

    // --- the session list ----------------------------------------------------

    let currentId = null;

    async function refreshSessions() {
        let list;
        try {
            list = await client.listSessions();
        } catch {
            return;
        }
        const ul = $('sessions');
        ul.textContent = '';
        for (const s of list) {
            const li = document.createElement('li');
            const btn = document.createElement('button');
            btn.textContent = s.title + ' ';
            btn.dataset.id = s.id;
            if (s.id === currentId) {
                btn.className = 'current';
            }
            const n = document.createElement('span');
            n.className = 'count';
            n.textContent = s.activeUsers ? `(${s.activeUsers} here)` : '';
            btn.appendChild(n);
            btn.onclick = () => { location.hash = 's=' + s.id; };
            li.appendChild(btn);
            ul.appendChild(li);
        }
        if (list.length === 0) {
            ul.innerHTML = '<li class="hint">None yet.</li>';
        }
    }

    $('create-form').onsubmit = async (ev) => {
        ev.preventDefault();
        const title = $('create-title').value.trim();
        if (!title) {
            return;
        }
        try {
            const s = await client.createSession(
                { title, isPublic: $('create-public').checked,
                  type: $('create-type').value });
            $('create-title').value = '';
            $('create-public').checked = false;
            $('create-type').value = 'text';
            location.hash = 's=' + s.id;
            refreshSessions();
        } catch (e) {
            alert('Could not create the session: ' + (e.message || e));
        }
    };

    // --- the open session ----------------------------------------------------

    let session = null;
    let unsubscribe = null;
    let renderedSeqKey = '';
    let wasLive = false;

    // "Bob joined": the "member" event of the open session
    client.onMember((ev) => {
        if (ev.session !== currentId) {
            return;
        }
        const li = document.createElement('li');
        li.dataset.user = ev.user;
        li.dataset.action = ev.action;
        const who = ev.userName || ev.user;
        li.textContent = ev.action === 'joined'
            ? `${who} accepted the invitation and joined`
            : `${who} was removed from the session`;
        $('notices').appendChild(li);
        while ($('notices').children.length > 3) {
            $('notices').firstChild.remove();
        }
    });

    function openFromHash() {
        const m = /^#s=([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
        const id = m ? m[1] : null;
        if (id === currentId) {
            return;
        }
        if (session) {
            unsubscribe();
            session.release();
            session = null;
        }
        currentId = id;
        $('room').hidden = !id;
        $('empty').hidden = !!id;
        for (const b of document.querySelectorAll('#sessions button')) {
            b.classList.toggle('current', b.dataset.id === id);
        }
        if (!id) {
            return;
        }
        $('share-link').value = location.origin + location.pathname
            + '#s=' + id;
        $('messages').textContent = '';
        $('notices').textContent = '';
        $('invite-status').textContent = '';
        renderedSeqKey = '';
        session = client.session(id).acquire();
        unsubscribe = session.subscribe(render);
        render();
    }

    window.addEventListener('hashchange', openFromHash);
    openFromHash();

    $('copy').onclick = async () => {
        try {
            await navigator.clipboard.writeText($('share-link').value);
            $('copy').textContent = 'Copied';
        } catch {
            $('share-link').select();
        }
        setTimeout(() => { $('copy').textContent = 'Copy'; }, 1500);
    };

    // the owner invites by name: the demo's user id is the name lowercased
    $('invite-form').onsubmit = async (ev) => {
        ev.preventDefault();
        const name = $('invite-name').value.trim();
        const status = $('invite-status');
        if (!name || !currentId) {
            return;
        }
        status.className = '';
        status.textContent = 'Inviting…';
        try {
            await client.invite(currentId, userIdFor(name));
            $('invite-name').value = '';
            status.textContent = `Invited ${name}.`;
        } catch (e) {
            status.className = 'error';
            status.textContent = `Could not invite ${name}: `
                + (e.message || e);
        }
    };

    // the owner chooses which messages call on the assistant ("" = the
    // server's collab_ai_trigger); everyone's page follows the "session"
    // event
    $('ai-trigger').onchange = async () => {
        const sel = $('ai-trigger');
        try {
            await client.updateSession(currentId,
                                       { aiTrigger: sel.value || null });
        } catch (e) {
            alert('Could not change the assistant setting: '
                  + (e.message || e));
        }
        sel.blur();
        render();
    };

    $('compose-text').oninput = () => {
        if (session) {
            session.setTyping($('compose-text').value !== '');
        }
    };

    /*
     * A picture goes with the message as a data: URL, inside the one
     * WebSocket message: conf/collab.conf allows 512k messages
     * (collab_max_message_size), base64 makes 4 bytes of 3.
     */
    const PICTURE_MAX = 360 * 1024;
    let picture = null;

    $('compose-image').onchange = () => {
        const file = $('compose-image').files[0];
        picture = null;
        $('compose-image-name').textContent = '';
        if (!file) {
            return;
        }
        if (file.size > PICTURE_MAX) {
            $('compose-image-name').textContent =
                `${file.name} is too large (at most ${PICTURE_MAX >> 10} KB)`;
            $('compose-image').value = '';
            return;
        }
        const reader = new FileReader();
        reader.onload = () => {
            picture = reader.result;
            $('compose-image-name').textContent = file.name;
        };
        reader.readAsDataURL(file);
    };

    $('compose').onsubmit = (ev) => {
        ev.preventDefault();
        const text = $('compose-text').value;
        if (!session || text.trim() === '') {
            return;             /* a picture goes with a few words */
        }
        session.send(text, picture || undefined);
        $('compose-text').value = '';
        $('compose-image').value = '';
        $('compose-image-name').textContent = '';
        picture = null;
    };

    function render() {
        if (!session) {
            return;
        }
        const st = session.getSnapshot();

        $('room-title').textContent = st.info ? st.info.title
            : st.status === 'error' ? 'Cannot open this session'
            : 'Joining…';
        if (st.status === 'error') {
            $('room-title').textContent += ` (${st.error.code}: `
                + `${st.error.message})`;
            if (st.error.code === 'ACCESS_DENIED') {
                $('room-title').textContent +=
                    ' It is private: ask its owner to invite you.';
            }
        }
        // the link is worth sharing for a public session only; the owner
        // of any session may invite
        $('share').hidden = !(st.info && st.info.isPublic);
        $('invite-form').hidden = !(st.info && st.info.role === 'owner');
        $('ai-trigger-row').hidden = !(st.info && st.info.role === 'owner');
        if (st.info && document.activeElement !== $('ai-trigger')) {
            $('ai-trigger').value = st.info.aiTrigger || '';
        }
        if (st.status === 'live' && !wasLive) {
            refreshSessions();              // joining a link adds it
        }
        wasLive = st.status === 'live';

        // presence
        const pres = $('presence');
        pres.textContent = '';
        pres.classList.toggle('stale', st.status !== 'live');
        const people = [...st.presence].sort((a, b) =>
            (a.userName || a.user).localeCompare(b.userName || b.user));
        for (const p of people) {
            const li = document.createElement('li');
            li.dataset.user = p.user;
            li.dataset.status = p.status;
            const dot = document.createElement('span');
            dot.className = 'dot ' + p.status;
            dot.title = p.status;
            li.appendChild(dot);
            li.appendChild(document.createTextNode(
                (p.userName || p.user) + (p.user === me.id ? ' (you)' : '')
                + (p.status !== 'online' ? ` – ${p.status}` : '')));
            pres.appendChild(li);
        }

        // messages (rebuilt; the list is short in a demo)
        const ul = $('messages');
        const atBottom = ul.scrollHeight - ul.scrollTop - ul.clientHeight < 40;
        ul.textContent = '';
        if (st.hasOlder) {
            const older = document.createElement('button');
            older.id = 'older';
            older.textContent = 'Load older messages';
            older.onclick = () => session.loadOlder();
            ul.appendChild(older);
        }
        for (const m of st.messages) {
            const li = document.createElement('li');
            const ai = m.kind === 'ai';
            li.className = m.state + (m.own ? ' own' : '') + (ai ? ' ai' : '');
            if (m.seq !== null) {
                li.dataset.seq = m.seq;
            }
            li.dataset.clientMsgId = m.clientMsgId || '';
            const who = document.createElement('span');
            who.className = 'who';
            who.textContent = ai ? 'Assistant'
                : m.userName || m.user || m.kind;
            const when = document.createElement('span');
            when.className = 'when';
            when.textContent = m.createdAt
                ? new Date(m.createdAt).toLocaleTimeString() : '';
            const body = document.createElement('div');
            body.className = 'body';
            body.textContent = m.body;
            li.append(who, when);
            if (m.state !== 'sent') {
                const s = document.createElement('span');
                s.className = 'state';
                s.textContent = m.state === 'pending' ? 'sending…'
                    : `not sent (${m.error})`;
                if (m.state === 'failed') {
                    const r = document.createElement('button');
                    r.textContent = 'Retry';
                    r.onclick = () => session.retry(m.clientMsgId);
                    s.append(' ', r);
                }
                li.appendChild(s);
            }
            li.appendChild(body);
            if (m.metadata) {
                /* a user's picture is a data: URL (the server takes no
                 * other); the assistant's may be the provider's URL */
                const image = m.metadata.image;
                if (typeof image === 'string'
                    && (ai ? /^(data:image\/|https?:)/
                           : /^data:image\/(png|jpeg|webp);base64,/)
                       .test(image))
                {
                    const img = document.createElement('img');
                    img.src = image;
                    img.alt = m.body || 'picture';
                    li.appendChild(img);
                }
            }
            if (ai && m.metadata) {
                if (m.metadata.cancelled || m.metadata.truncated) {
                    const s = document.createElement('span');
                    s.className = 'state';
                    s.textContent = m.metadata.cancelled ? '(cancelled)'
                        : '(cut short)';
                    li.appendChild(s);
                }
            }
            ul.appendChild(li);
        }
        const key = st.messages.length + ':' + st.lastSeq;
        if (atBottom || key !== renderedSeqKey) {
            ul.scrollTop = ul.scrollHeight;
        }
        renderedSeqKey = key;

        renderAiReplies(st.aiReplies);
        $('typing').textContent = formatTyping(st.typingUsers);
    }

    // the assistant's replies being made: the text so far and a Cancel
    // button; one that failed is a small notice until dismissed (or the
    // next message)
    function renderAiReplies(replies) {
        const ul = $('ai-live');
        ul.textContent = '';
        for (const r of replies) {
            const li = document.createElement('li');
            li.dataset.replyTo = r.replyTo;
            const btn = document.createElement('button');
            if (r.error) {
                li.className = 'error';
                li.textContent = r.error.code === 'CANCELLED'
                    ? 'The assistant\'s reply was cancelled.'
                    : `The assistant could not answer: `
                      + `${r.error.message || r.error.code}`;
                btn.textContent = 'Dismiss';
                btn.onclick = () => session.dismissAiError(r.replyTo);
                li.appendChild(btn);
                ul.appendChild(li);
                continue;
            }
            const who = document.createElement('span');
            who.className = 'who';
            who.textContent = 'Assistant';
            const stage = document.createElement('span');
            stage.className = 'stage';
            stage.textContent = r.stage === 'generating'
                ? 'is drawing…' : 'is typing…';
            btn.textContent = 'Cancel';
            btn.onclick = () => {
                btn.disabled = true;
                session.cancelAi().catch((e) => {
                    // NOT_FOUND: it had just finished
                    if (e.code !== 'NOT_FOUND') {
                        alert('Could not cancel: ' + (e.message || e));
                    }
                });
            };
            const body = document.createElement('div');
            body.className = 'body';
            body.textContent = r.text;
            li.append(who, stage, btn, body);
            ul.appendChild(li);
        }
        ul.scrollTop = ul.scrollHeight;
    }
}
