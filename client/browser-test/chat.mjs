// The demo page in a real browser (Debian's chromium through
// playwright-core), driven by t/070-browser.t, which starts PostgreSQL and
// nginx and reads this script's stdout line by line:
//
//   ok <name> / not ok <name>    one test each
//   diag <text>                  shown by the .t file
//   cmd stop-nginx | cmd start-nginx
//                                the .t file does it, then writes "done\n"
//                                to our stdin
//   screenshot <path>
//   end                          everything ran
//
// Usage: node chat.mjs <base url> <output dir>

import { createInterface } from 'node:readline';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [baseUrl, outDir] = process.argv.slice(2);
if (!baseUrl || !outDir) {
    console.error('usage: chat.mjs <base url> <output dir>');
    process.exit(2);
}

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

const out = (line) => process.stdout.write(line.replace(/\n/g, ' ') + '\n');
let failed = 0;

function ok(cond, name, detail) {
    out(`${cond ? 'ok' : 'not ok'} ${name}`);
    if (!cond) {
        failed++;
        if (detail) {
            out(`diag ${detail}`);
        }
    }
    return cond;
}

// the .t file answers each command with one line on stdin
const stdin = createInterface({ input: process.stdin });
const answers = [];
let waiting = null;
stdin.on('line', (l) => {
    if (waiting) {
        const w = waiting;
        waiting = null;
        w(l);
    } else {
        answers.push(l);
    }
});

function command(cmd) {
    out(`cmd ${cmd}`);
    return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`${cmd}: no answer`)),
                             60000);
        const done = (l) => {
            clearTimeout(t);
            l === 'done' ? resolve() : reject(new Error(`${cmd}: ${l}`));
        };
        if (answers.length) {
            done(answers.shift());
        } else {
            waiting = done;
        }
    });
}

// waits for fn() (run in the page) to return a truthy value
async function until(page, what, fn, arg, timeout = 15000) {
    try {
        await page.waitForFunction(fn, arg, { timeout, polling: 100 });
        return true;
    } catch (e) {
        out(`diag timed out waiting for: ${what}`);
        return false;
    }
}

// the bodies of the messages on a page, with their state
const bodies = (page) => page.$$eval('#messages li', (lis) => lis.map((li) =>
    ({ body: li.querySelector('.body')?.textContent,
       state: li.className.split(' ')[0], seq: li.dataset.seq })));

async function main() {
    let playwright;
    try {
        playwright = await import('playwright-core');
    } catch (e) {
        ok(false, 'playwright-core is installed (make client)', String(e));
        return;
    }

    const args = [
        '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--no-first-run', '--disable-gpu', '--disable-quic',
    ];
    if (process.getuid && process.getuid() === 0) {
        args.push('--no-sandbox');
    }

    // launch() runs chromium with a fresh temporary profile of its own
    // (the user data dir); TMPDIR points it at ours, removed at the end
    const tmp = mkdtempSync(join(tmpdir(), 'collab-chromium-'));
    process.env.TMPDIR = tmp;

    let browser;
    try {
        browser = await playwright.chromium.launch({
            executablePath: CHROMIUM, headless: true, args, timeout: 30000,
        });
    } catch (e) {
        ok(false, `chromium starts (${CHROMIUM})`, String(e).slice(0, 500));
        rmSync(tmp, { recursive: true, force: true });
        return;
    }
    ok(true, `chromium ${browser.version()} starts`);

    try {
        await scenario(browser);
    } finally {
        await browser.close().catch(() => {});
        rmSync(tmp, { recursive: true, force: true });
    }
}

async function scenario(browser) {
    const ctxA = await browser.newContext({ viewport: { width: 1100,
                                                        height: 720 } });
    const ctxB = await browser.newContext({ viewport: { width: 1100,
                                                        height: 720 } });
    const a = await ctxA.newPage();
    const b = await ctxB.newPage();
    for (const [p, who] of [[a, 'A'], [b, 'B']]) {
        p.on('pageerror', (e) => out(`diag page ${who} error: ${e.message}`));
        p.on('console', (m) => {
            if (m.type() === 'error') {
                out(`diag page ${who} console: ${m.text()}`);
            }
        });
    }

    // --- Ann signs in and creates a private session ---
    await a.goto(baseUrl);
    await a.fill('#signin-name', 'Ann');
    await a.click('#signin button');
    await a.waitForSelector('#create-title', { state: 'visible' });
    ok(!(await a.isChecked('#create-public')),
       'a new session is private unless asked');
    await a.fill('#create-title', 'Launch plan');
    await a.click('#create-form button');
    ok(await until(a, 'the room shows the title',
                   () => document.getElementById('room-title')
                         .textContent === 'Launch plan'),
       'Ann creates a private session and is in it');
    const link = a.url();
    ok(/#s=[A-Za-z0-9_-]+$/.test(link), 'the session id is in the address',
       link);
    ok(await until(a, 'the invite box, and no share link',
                   () => !document.getElementById('invite-form').hidden
                         && document.getElementById('share').hidden),
       'the owner has the invite box; a private session has no share link');
    ok(await until(a, 'the session in Ann\'s list',
                   () => [...document.querySelectorAll('#sessions button')]
                         .some((x) => x.textContent.startsWith('Launch plan'))),
       'the session is in Ann\'s list');

    // --- Bob signs in; Ann invites him; the invitation appears live ---
    await b.goto(baseUrl);
    await b.fill('#signin-name', 'Bob');
    await b.click('#signin button');
    ok(await until(b, 'Bob\'s invitation list read',
                   () => window.collabClient?.status === 'open'
                         && document.getElementById('invitations')
                            .dataset.loaded === 'yes'
                         && !document.querySelector('#invitations li[data-id]')),
       'Bob is connected and has no invitation yet');

    await a.fill('#invite-name', 'Bob');
    await a.click('#invite-form button');
    ok(await until(a, 'the invite status',
                   () => document.getElementById('invite-status')
                         .textContent === 'Invited Bob.'),
       'Ann invites "Bob" by name');
    const invitation = '#invitations li[data-id]';
    ok(await until(b, 'the invitation on Bob\'s page',
                   (sel) => [...document.querySelectorAll(sel)].some((li) =>
                       li.querySelector('strong')?.textContent
                       === 'Launch plan'
                       && /invited by ann/.test(li.textContent)),
                   invitation),
       'the invitation appears on Bob\'s page live, without a reload');
    await b.screenshot({ path: join(outDir, 'invitation.png') });

    // --- before accepting, the private session is closed to him; the
    //     invitation is still listed after a reload (read from the server)
    await b.goto('about:blank');
    await b.goto(link);
    ok(await until(b, 'ACCESS_DENIED on Bob\'s page',
                   () => /ACCESS_DENIED/.test(
                       document.getElementById('room-title').textContent)),
       'Bob cannot open the private session before accepting');
    ok(await until(b, 'the invitation listed after the reload',
                   (sel) => document.querySelectorAll(sel).length === 1,
                   invitation),
       'the pending invitation is listed after a reload');

    // --- Bob accepts: he joins, Ann is told ---
    await b.click(`${invitation} button.accept`);
    ok(await until(b, 'Bob sees the title',
                   () => document.getElementById('room-title')
                         .textContent === 'Launch plan'),
       'Bob accepts and joins the session');
    ok(await until(b, 'the invitation gone, the invite box hidden',
                   (sel) => document.querySelectorAll(sel).length === 0
                            && document.getElementById('invite-form').hidden,
                   invitation),
       'the invitation leaves Bob\'s list; a member has no invite box');
    ok(await until(a, 'the member notice on Ann\'s page',
                   () => [...document.querySelectorAll('#notices li')]
                         .some((li) => li.dataset.user === 'bob'
                               && li.dataset.action === 'joined'
                               && /^Bob /.test(li.textContent))),
       'Ann sees "Bob accepted the invitation and joined"');
    ok(await until(b, 'the session in Bob\'s list',
                   () => [...document.querySelectorAll('#sessions button')]
                         .some((x) => x.textContent.startsWith('Launch plan'))),
       'the session is in Bob\'s list');

    const presence = (user, status) =>
        `#presence li[data-user="${user}"][data-status="${status}"]`;
    ok(await until(a, 'Bob online on Ann\'s page',
                   (sel) => !!document.querySelector(sel),
                   presence('bob', 'online')),
       'Ann sees Bob online');
    ok(await until(b, 'Ann online on Bob\'s page',
                   (sel) => !!document.querySelector(sel),
                   presence('ann', 'online')),
       'Bob sees Ann online');

    // --- messages both ways ---
    await b.fill('#compose-text', 'Hello from Bob');
    await b.press('#compose-text', 'Enter');
    ok(await until(a, 'Bob\'s message on Ann\'s page',
                   () => [...document.querySelectorAll('#messages li')]
                         .some((li) => li.querySelector('.body')
                               ?.textContent === 'Hello from Bob'
                               && li.querySelector('.who')
                               ?.textContent === 'Bob')),
       'Bob\'s message appears on Ann\'s page, with his name');
    await a.fill('#compose-text', 'Hi Bob, Ann here');
    await a.press('#compose-text', 'Enter');
    ok(await until(b, 'Ann\'s reply on Bob\'s page',
                   () => [...document.querySelectorAll('#messages li')]
                         .some((li) => li.querySelector('.body')
                               ?.textContent === 'Hi Bob, Ann here')),
       'Ann\'s message appears on Bob\'s page');

    // --- typing: appears with the display name, then stops by itself ---
    await a.type('#compose-text', 'I am typ', { delay: 40 });
    ok(await until(b, 'typing indicator',
                   () => document.getElementById('typing').textContent
                         === 'Ann is typing…'),
       'Bob sees "Ann is typing…"');
    ok(await until(b, 'typing indicator gone',
                   () => document.getElementById('typing').textContent
                         === '', undefined, 20000),
       'the indicator disappears when Ann stops typing');
    await a.fill('#compose-text', '');

    // --- nginx stops and starts: the pages reconnect by themselves and
    //     what was sent meanwhile appears exactly once ---
    await command('stop-nginx');
    ok(await until(a, 'the reconnect banner',
                   () => !document.getElementById('banner').hidden
                         && /Reconnecting|Connecting/.test(
                             document.getElementById('banner').textContent)),
       'Ann\'s page shows the reconnect banner');
    const offline = ['Sent while nginx was down (1)',
                     'Sent while nginx was down (2)'];
    for (const text of offline) {
        await a.fill('#compose-text', text);
        await a.press('#compose-text', 'Enter');
    }
    const queued = (await bodies(a)).filter((m) => offline.includes(m.body));
    ok(queued.length === 2 && queued.every((m) => m.state === 'pending'),
       'messages sent while offline are shown as pending',
       JSON.stringify(queued));
    await a.screenshot({ path: join(outDir, 'offline.png') });

    await command('start-nginx');
    ok(await until(a, 'Ann\'s page reconnected',
                   () => document.getElementById('banner').hidden
                         && window.collabClient.status === 'open',
                   undefined, 45000),
       'Ann\'s page reconnects by itself');
    for (const [p, who] of [[a, 'Ann'], [b, 'Bob']]) {
        ok(await until(p, `queued messages on ${who}'s page`,
                       (texts) => texts.every((t) =>
                           [...document.querySelectorAll('#messages li.sent')]
                           .some((li) => li.querySelector('.body')
                                 ?.textContent === t)),
                       offline, 45000),
           `the queued messages reach ${who}'s page`);
    }
    // settle, then count: once each, in seq order, nothing pending
    await a.waitForTimeout(1500);
    for (const [p, who] of [[a, 'Ann'], [b, 'Bob']]) {
        const list = await bodies(p);
        for (const t of offline) {
            const n = list.filter((m) => m.body === t).length;
            ok(n === 1, `"${t}" is on ${who}'s page exactly once (${n})`);
        }
        const s = list.map((m) => Number(m.seq));
        ok(list.every((m) => m.state === 'sent')
           && s.every((x, i) => i === 0 || x > s[i - 1]),
           `${who}'s messages are all sent, in seq order`,
           JSON.stringify(list));
        ok(list.length === 4, `${who}'s page has the 4 messages`,
           JSON.stringify(list));
    }

    await aiScenario(a, b);

    // Bob types once more so that the screenshot shows the indicator
    await b.type('#compose-text', 'Shi', { delay: 30 });
    await until(a, 'typing indicator for the screenshot',
                () => document.getElementById('typing').textContent !== '');
    const shot = join(outDir, 'chat.png');
    await a.screenshot({ path: shot });
    out(`screenshot ${shot}`);

    await pictureScenario(a, b);

    // --- Bob closes his page: Ann sees him offline after the grace ---
    await ctxB.close();
    ok(await until(a, 'Bob offline',
                   (sel) => !!document.querySelector(sel),
                   presence('bob', 'offline'), 20000),
       'Ann sees Bob go offline after the grace period');
    await a.screenshot({ path: join(outDir, 'bob-left.png') });
    await ctxA.close();
}

// the mock provider's reply (t/lib/Collab/MockAI.pm, reply_text(n))
function mockReply(n) {
    const extra = ['', ' "q"', ' caf\u00e9', ' a\\b', ' \u{1F600}'];
    let s = '';
    for (let i = 0; i < n; i++) {
        s += `w${i}${extra[i % extra.length]} `;
    }
    return s;
}

// the ai messages on a page: who, body, the state note ("(cancelled)")
const aiMessages = (page) => page.$$eval('#messages li.ai', (lis) =>
    lis.map((li) => ({ who: li.querySelector('.who')?.textContent,
                       body: li.querySelector('.body')?.textContent,
                       note: li.querySelector('.state')?.textContent ?? '' })));

// --- the AI participant (the .t file's mock provider): a reply streams
//     into both pages and becomes a message; Cancel stops one; the owner
//     turns the assistant off ---
async function aiScenario(a, b) {
    ok(await a.isVisible('#ai-trigger'),
       'the owner sees the assistant setting');
    ok(!(await b.isVisible('#ai-trigger')), 'Bob does not');

    await a.fill('#compose-text', '@ai when do we ship?');
    await a.press('#compose-text', 'Enter');
    ok(await until(b, 'the streaming reply on Bob\'s page',
                   () => [...document.querySelectorAll('#ai-live li')]
                         .some((li) => /typing/.test(li.textContent)
                               && li.querySelector('.body')
                                    ?.textContent.startsWith('w0'))),
       'the reply streams into Bob\'s page ("Assistant is typing…")');
    const want = mockReply(10);
    for (const [p, who] of [[a, 'Ann'], [b, 'Bob']]) {
        ok(await until(p, `the reply on ${who}'s page`,
                       (w) => document.querySelectorAll('#ai-live li')
                                  .length === 0
                              && [...document.querySelectorAll(
                                  '#messages li.ai .body')]
                                  .some((x) => x.textContent === w),
                       want),
           `the reply becomes an Assistant message on ${who}'s page`,
           JSON.stringify(await aiMessages(p)));
    }
    const [m] = await aiMessages(b);
    ok(m && m.who === 'Assistant', 'shown as from "Assistant"',
       JSON.stringify(m));

    // a long reply, cancelled from Ann's page: what arrived is kept
    await a.fill('#compose-text', '@ai [long] tell me everything');
    await a.press('#compose-text', 'Enter');
    ok(await until(a, 'the long reply streaming',
                   () => !!document.querySelector('#ai-live li .body')
                         ?.textContent),
       'the long reply streams in');
    await a.screenshot({ path: join(outDir, 'ai-streaming.png') });
    await a.click('#ai-live li button');
    for (const [p, who] of [[a, 'Ann'], [b, 'Bob']]) {
        ok(await until(p, `the cancelled reply on ${who}'s page`,
                       () => document.querySelectorAll('#ai-live li')
                                 .length === 0
                             && [...document.querySelectorAll(
                                 '#messages li.ai .state')]
                                 .some((x) => x.textContent
                                       === '(cancelled)')),
           `Cancel stops it; ${who} sees it marked cancelled`,
           JSON.stringify(await aiMessages(p)));
    }

    // the owner turns the assistant off: Bob's client hears it
    await a.selectOption('#ai-trigger', 'off');
    ok(await until(b, 'aiTrigger off on Bob\'s page',
                   () => window.collabClient.session(location.hash.slice(3))
                             .getSnapshot().info?.aiTrigger === 'off'),
       'the owner turns the assistant off; Bob\'s session info follows');
    await b.fill('#compose-text', '@ai are you there?');
    await b.press('#compose-text', 'Enter');
    await b.waitForTimeout(1500);
    const n = (await aiMessages(a)).length;
    ok(n === 2 && (await a.$$('#ai-live li')).length === 0,
       `with the assistant off, "@ai" gets no reply (${n} ai messages)`);
    await a.fill('#compose-text', '');
}

// --- pictures: Ann makes a public image-to-image session, Bob opens its
//     link, Ann attaches a picture to "@ai ...": both pages show her
//     picture and then the assistant's edit of it (the mock's 1x1 PNG) ---
async function pictureScenario(a, b) {
    const dot = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42'
                + 'mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';

    await a.fill('#create-title', 'Pictures');
    await a.check('#create-public');
    await a.selectOption('#create-type', 'image-to-image');
    await a.click('#create-form button');
    ok(await until(a, 'the picture session',
                   () => document.getElementById('room-title')
                         .textContent === 'Pictures'),
       'Ann creates a public image-to-image session');
    await b.goto(a.url());
    ok(await until(b, 'Bob in the picture session',
                   () => document.getElementById('room-title')
                         .textContent === 'Pictures'),
       'Bob opens its link');

    await a.setInputFiles('#compose-image', {
        name: 'dot.png', mimeType: 'image/png',
        buffer: Buffer.from(dot, 'base64'),
    });
    ok(await until(a, 'the picture attached',
                   () => document.getElementById('compose-image-name')
                         .textContent === 'dot.png'),
       'Ann attaches a picture');
    await a.fill('#compose-text', '@ai make it blue');
    await a.press('#compose-text', 'Enter');

    for (const [p, who] of [[a, 'Ann'], [b, 'Bob']]) {
        ok(await until(p, `Ann's picture on ${who}'s page`,
                       (src) => [...document.querySelectorAll(
                                    '#messages li:not(.ai) img')]
                                .some((img) => img.getAttribute('src')
                                               === src),
                       'data:image/png;base64,' + dot),
           `Ann's picture shows on ${who}'s page`);
        ok(await until(p, `the assistant's picture on ${who}'s page`,
                       () => [...document.querySelectorAll(
                                  '#messages li.ai img')]
                             .some((img) => img.getAttribute('src')
                                   .startsWith('data:image/png;base64,'))),
           `the assistant's edit shows on ${who}'s page`,
           JSON.stringify(await aiMessages(p)));
    }
    await b.screenshot({ path: join(outDir, 'picture.png') });
}

mkdirSync(outDir, { recursive: true });
const watchdog = setTimeout(() => {
    ok(false, 'the browser test finished in time (120 s)');
    process.exit(1);
}, 120000);

main().then(() => {
    clearTimeout(watchdog);
    out('end');
    process.exit(failed ? 1 : 0);
}, (e) => {
    ok(false, 'the browser scenario ran to its end', String(e && e.stack || e));
    process.exit(1);
});
