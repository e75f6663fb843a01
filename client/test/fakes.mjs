// Test doubles: a WebSocket whose "server" side the test drives, and a
// clock whose timers run only when the test advances it.

export class FakeClock {
    constructor() {
        this.t = 1000000;
        this.timers = new Map();
        this.nextId = 1;
    }

    setTimeout(fn, ms) {
        const id = this.nextId++;
        this.timers.set(id, { at: this.t + Math.max(0, ms), fn, id });
        return id;
    }

    clearTimeout(id) {
        this.timers.delete(id);
    }

    now() {
        return this.t;
    }

    // the delays (from now) of the pending timers, sorted
    pending() {
        return [...this.timers.values()].map((x) => x.at - this.t)
            .sort((a, b) => a - b);
    }

    // runs every timer due within ms, in time order, letting promises
    // settle between them
    async advance(ms) {
        const end = this.t + ms;
        for (;;) {
            await settle();
            let next = null;
            for (const x of this.timers.values()) {
                if (x.at <= end && (next === null || x.at < next.at
                                    || (x.at === next.at && x.id < next.id))) {
                    next = x;
                }
            }
            if (next === null) {
                break;
            }
            this.timers.delete(next.id);
            this.t = next.at;
            next.fn();
        }
        this.t = end;
        await settle();
    }

    timers_() {
        return this.timers;
    }
}

// let promise chains and queued microtasks run
export async function settle() {
    for (let i = 0; i < 5; i++) {
        await new Promise((r) => setImmediate(r));
    }
}

export function makeFakeWebSocket() {
    const sockets = [];

    class FakeWebSocket {
        constructor(url, protocols) {
            this.url = url;
            this.protocols = protocols;
            this.readyState = 0;
            this.sent = [];
            this.onopen = null;
            this.onmessage = null;
            this.onclose = null;
            this.onerror = null;
            sockets.push(this);
        }

        send(data) {
            if (this.readyState !== 1) {
                throw new Error('send on a socket that is not open');
            }
            this.sent.push(JSON.parse(data));
        }

        close(code = 1000, reason = '') {
            if (this.readyState >= 2) {
                return;
            }
            this.readyState = 3;
            this.closedByClient = { code, reason };
            this.onclose && this.onclose({ code: 1005, reason: '' });
        }

        // --- the server side ---

        accept() {
            this.readyState = 1;
            this.onopen && this.onopen({});
        }

        fail() {
            this.readyState = 3;
            this.onerror && this.onerror({});
            this.onclose && this.onclose({ code: 1006, reason: '' });
        }

        serverClose(code, reason = '') {
            this.readyState = 3;
            this.onclose && this.onclose({ code, reason });
        }

        push(frame) {
            this.onmessage && this.onmessage({ data: JSON.stringify(frame) });
        }

        // the requests with this op not answered yet (and mark them taken)
        take(op) {
            const out = this.sent.filter((f) => f.op === op && !f.taken);
            for (const f of out) {
                f.taken = true;
            }
            return out;
        }

        reply(req, frame) {
            this.push({ ref: req.ref, ...frame });
        }
    }

    return { FakeWebSocket, sockets };
}

export function msg(seq, extra = {}) {
    return {
        seq, user: 'u2', userName: 'Bob', kind: 'user', body: `m${seq}`,
        clientMsgId: `c${seq}`, createdAt: '2025-01-01T00:00:00.000Z',
        ...extra,
    };
}
