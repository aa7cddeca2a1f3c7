// Playwright driver for scripts/browser-check.sh: serves the test page (with the README's
// herdgateSocket snippet extracted at request time), drives a real Chromium against a
// running herdgate, triggers a drain through the admin API and asserts what the browser saw.
//
// Inputs (environment, set by the script):
//   HG_TRANSPORT   ws or wss (default: from HG_WS_URL's scheme)
//   HG_WS_URL      ws://127.0.0.1:PORT/chat or wss://localhost:PORT/chat: herdgate's
//                  websocket-close route. For wss, Chromium accepts any certificate
//                  (the script's is self-signed) and the check also reads herdgate's
//                  metrics: a connection accepted for every attempt, no TLS handshake
//                  failed while the browser ran.
//   HG_ADMIN       http://127.0.0.1:PORT      herdgate's admin listener
//   HG_TOKEN_FILE  admin bearer token file
//   HG_POOL        pool name; HG_NODES: its two node names, comma separated
//   HG_LISTENER    herdgate listener name (metric label; default public)
//   HG_README      README.md to extract the snippet from
//   HG_SOCKETS     sockets to open at once (default 8)
//   HG_CHROMIUM    browser executable (default /usr/bin/chromium)
//   HG_PROFILE     fresh user-data-dir
//   HG_NETLOG      optional: where Chromium writes its net log (--log-net-log)
//   HG_SCREENSHOT  where to write the screenshot
// Exit status 0 on PASS, 1 on FAIL.

import { chromium } from 'playwright-core';
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const env = (k, d) => {
  const v = process.env[k] ?? d;
  if (v === undefined) throw new Error(`check.mjs: ${k} is not set`);
  return v;
};
const WS_URL = env('HG_WS_URL');
const TRANSPORT = env('HG_TRANSPORT', new URL(WS_URL).protocol.replace(':', ''));
const TLS = TRANSPORT === 'wss';
if (!['ws', 'wss'].includes(TRANSPORT) || new URL(WS_URL).protocol !== `${TRANSPORT}:`) {
  throw new Error(`check.mjs: HG_TRANSPORT=${TRANSPORT} does not match HG_WS_URL=${WS_URL}`);
}
const LISTENER = env('HG_LISTENER', 'public');
const NETLOG = env('HG_NETLOG', '');
const ADMIN = env('HG_ADMIN');
const TOKEN = readFileSync(env('HG_TOKEN_FILE'), 'utf8').trim();
const POOL = env('HG_POOL');
const NODES = env('HG_NODES').split(',');
const README = env('HG_README');
const N = Number(env('HG_SOCKETS', '8'));
const CHROMIUM = env('HG_CHROMIUM', '/usr/bin/chromium');
const PROFILE = env('HG_PROFILE');
const SCREENSHOT = env('HG_SCREENSHOT');

const SLACK_MS = 50;            // a timer may not fire early by more than this
const PHASE_DEADLINE_MS = 30000; // each phase: hints are at most N / admit_rate seconds

const failures = [];
const check = (ok, what) => {
  console.log(`  ${ok ? 'ok  ' : 'FAIL'} ${what}`);
  if (!ok) failures.push(what);
  return ok;
};

// ─── The snippet under test, exactly as README.md has it ────────────────────────────────
function extractSnippet() {
  const text = readFileSync(README, 'utf8');
  const blocks = [...text.matchAll(/```(?:js|javascript)\n([\s\S]*?)\n```/g)].map((m) => m[1]);
  const hits = blocks.filter((b) => /function herdgateSocket\s*\(/.test(b));
  if (hits.length !== 1) {
    throw new Error(`${README}: expected one js block defining herdgateSocket, found ${hits.length}`);
  }
  return hits[0] + '\n';
}

function serve() {
  const files = {
    '/': ['index.html', 'text/html; charset=utf-8'],
    '/harness.js': ['harness.js', 'text/javascript; charset=utf-8'],
  };
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    try {
      let body, type;
      if (path === '/herdgate-socket.js') {
        body = extractSnippet();
        type = 'text/javascript; charset=utf-8';
      } else if (files[path]) {
        body = readFileSync(join(here, files[path][0]));
        type = files[path][1];
      } else {
        res.writeHead(404).end();
        return;
      }
      res.writeHead(200, { 'content-type': type, 'cache-control': 'no-store' }).end(body);
    } catch (e) {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(String(e));
    }
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

async function admin(method, path) {
  const headers = method === 'POST' ? { authorization: `Bearer ${TOKEN}` } : {};
  const r = await fetch(ADMIN + path, { method, headers, signal: AbortSignal.timeout(5000) });
  return { status: r.status, body: await r.text() };
}

// Prometheus text: the sum of `name`'s samples whose labels include every one of `labels`.
async function metric(name, labels) {
  const r = await admin('GET', '/metrics');
  let sum = 0;
  for (const line of r.body.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = m[2] ?? '';
    if (Object.entries(labels).every(([k, v]) => have.includes(`${k}="${v}"`))) sum += Number(m[3]);
  }
  return sum;
}

async function nodeReports() {
  const r = await admin('GET', '/admin/nodes');
  return JSON.parse(r.body).filter((n) => n.pool === POOL);
}

async function until(what, deadlineMs, probe) {
  const end = Date.now() + deadlineMs;
  for (;;) {
    const v = await probe();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${deadlineMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const parseHint = (reason) => {
  try {
    const h = JSON.parse(reason);
    return h && typeof h === 'object' ? h : null;
  } catch (_) {
    return null;
  }
};

// Closes with `code` whose close time is after `since` (page clock), with what followed.
function closesOf(c, code, since) {
  const out = [];
  c.attempts.forEach((a, k) => {
    if (a.code === code && a.tClose >= since) out.push({ a, k, next: c.attempts[k + 1] });
  });
  return out;
}

// Every hinted close: parsable reason, next attempt no earlier than hint - slack, carrying
// exactly the ticket handed out (or none).
function checkHintedCloses(state, code, since, label) {
  let count = 0;
  const bad = [];
  const delays = [];
  state.clients.forEach((c, id) => {
    for (const { a, k, next } of closesOf(c, code, since)) {
      count++;
      const h = parseHint(a.reason);
      const where = `socket #${id} attempt ${k}`;
      if (!h || !Number.isInteger(h.retry_after_ms) || h.retry_after_ms < 0) {
        bad.push(`${where}: ${code} reason not a hint: ${JSON.stringify(a.reason)}`);
        continue;
      }
      // Every attempt announces herdgate_accept_ticket=1, so every hint must come with a
      // ticket: a bare promise cannot be claimed by a ticket-capable client.
      if (!(typeof h.ticket === 'string' && /^[A-Za-z0-9_=-]{1,64}$/.test(h.ticket))) {
        bad.push(`${where}: ${code} without a usable ticket: ${JSON.stringify(a.reason)}`);
      }
      if (!a.wasClean) bad.push(`${where}: ${code} close not clean (wasClean=false)`);
      if (!next) {
        bad.push(`${where}: no attempt after the ${code}`);
        continue;
      }
      const delay = next.t0 - a.tClose;
      delays.push({ hint: h.retry_after_ms, delay });
      if (delay < h.retry_after_ms - SLACK_MS) {
        bad.push(`${where}: came back after ${delay.toFixed(0)} ms, hint was ${h.retry_after_ms} ms`);
      }
      const want = h.ticket ?? null;
      if (next.ticket !== want) {
        bad.push(`${where}: next attempt carried ticket ${next.ticket}, expected ${want}`);
      }
    }
  });
  check(bad.length === 0, `${label}: every ${code} reason parsed, hint obeyed (delay >= hint - ${SLACK_MS} ms), ticket carried` +
    (bad.length ? `\n         ${bad.join('\n         ')}` : ` (${count} closes)`));
  return { count, delays };
}

function table(state, drainAt) {
  const rows = state.clients.map((c, id) => {
    const closes = c.attempts
      .map((a, k) => {
        if (a.code === null) return null;
        const h = parseHint(a.reason);
        const next = c.attempts[k + 1];
        const waited = next ? `${(next.t0 - a.tClose).toFixed(0)}ms` : '-';
        const hint = h && Number.isFinite(h.retry_after_ms) ? `${h.retry_after_ms}ms` : 'none';
        return `${a.code}(hint ${hint}, waited ${waited}${h && h.ticket ? ', ticket' : ''})`;
      })
      .filter(Boolean);
    const tickets = c.attempts.filter((a) => a.ticket).length;
    const echoes = c.attempts.reduce((s, a) => s + a.echoes, 0);
    const after = drainAt === null ? '' : c.attempts.some((a) => a.t0 > drainAt && a.echoes > 0) ? ' yes' : ' NO';
    return `  #${id} attempts=${c.attempts.length} tickets=${tickets} echoes=${echoes}` +
      (drainAt === null ? '' : ` echo-after-drain=${after.trim()}`) + `  ${closes.join(' ') || '-'}`;
  });
  console.log(rows.join('\n'));
}

async function main() {
  const snippet = extractSnippet();
  console.log(`snippet: ${snippet.split('\n').length - 1} lines of README.md (function herdgateSocket)`);
  const server = await serve();
  const pageUrl = `http://127.0.0.1:${server.address().port}/?ws=${encodeURIComponent(WS_URL)}&n=${N}`;

  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ];
  // wss: the script's certificate is self-signed; accept it (and only certificate errors:
  // a failed handshake still fails the socket).
  if (TLS) args.push('--ignore-certificate-errors');
  if (NETLOG) args.push(`--log-net-log=${NETLOG}`, '--net-log-capture-mode=Default');
  const context = await chromium.launchPersistentContext(PROFILE, {
    executablePath: CHROMIUM,
    headless: true,
    args,
    ignoreHTTPSErrors: TLS,
    viewport: { width: 1100, height: 420 },
  });
  let page;
  try {
    page = context.pages()[0] ?? (await context.newPage());
    const pageErrors = [];
    page.on('pageerror', (e) => pageErrors.push(String(e)));
    page.on('console', (m) => {
      if (m.type() === 'error') console.log(`  [browser console] ${m.text()}`);
    });
    // Socket-level errors as Playwright sees them (e.g. a TLS failure: net::ERR_...).
    page.on('websocket', (ws) => {
      ws.on('socketerror', (e) => console.log(`  [browser websocket] ${ws.url()}: ${e}`));
    });
    console.log(`browser: ${context.browser()?.version() ?? 'chromium'} (${CHROMIUM}); page ${pageUrl}`);
    console.log(`transport: ${TRANSPORT} (${WS_URL})` +
      (TLS ? '; TLS terminated by herdgate, certificate self-signed and accepted by the browser' : ''));
    // Counted from here: the script's readiness probe (a bare connect) is one failed TLS
    // handshake before the browser starts.
    const accepted0 = await metric('herdgate_connections_accepted_total', { listener: LISTENER });
    const tlsFailed0 = await metric('herdgate_tls_handshake_failures_total', { listener: LISTENER });
    await page.goto(pageUrl, { timeout: 10000 });
    const state = () => page.evaluate(() => window.herdgateCheck.state());

    // ── Phase 1: N sockets at once against admit_rate 2 / burst 1 ──────────────────────
    console.log(`\nphase 1: ${N} sockets at once, node admits 2/s (burst 1)`);
    let s1;
    try {
      s1 = await until(`all ${N} sockets echoing`, PHASE_DEADLINE_MS, async () => {
        const s = await state();
        return s.clients.length === N && s.clients.every((c) => c.attempts.some((a) => a.echoes > 0)) ? s : null;
      });
      check(true, `all ${N} sockets connected and echoing`);
    } catch (e) {
      s1 = await state();
      check(false, e.message);
    }
    table(s1, null);
    const rejected = s1.clients.filter((c) => c.attempts.some((a) => a.code === 1013)).length;
    check(rejected >= 1, `browser saw 1013 on ${rejected} of ${N} sockets (at least one expected)`);
    const p1 = checkHintedCloses(s1, 1013, 0, 'phase 1');
    const twice = s1.clients.filter((c) => c.attempts.filter((a) => a.code === 1013).length > 1).length;
    check(twice === 0, `every rejected socket was admitted when it came back at its hinted slot (${twice} rejected twice)`);
    const others1 = s1.clients.flatMap((c) => c.attempts.filter((a) => a.code !== null && a.code !== 1013));
    check(others1.length === 0, `no other close codes before the drain` +
      (others1.length ? `: ${others1.map((a) => `${a.code} ${JSON.stringify(a.reason)}`).join(', ')}` : ''));
    const rej1 = s1.clients.flatMap((c) => c.attempts.filter((a) => a.code === 1013));
    console.log(`  info 'open' fired before the 1013 on ${rej1.filter((a) => a.tOpen !== null).length} of ${rej1.length} rejected attempts ` +
      `(why the snippet counts a connection as live at its first message)`);
    const all1 = s1.clients.flatMap((c) => c.attempts);
    check(all1.every((a) => a.acceptTicket === '1'), `every attempt announced herdgate_accept_ticket=1 (${all1.length} attempts)`);

    const before = await nodeReports();
    const holder = before.find((n) => n.open_tunnels > 0);
    check(before.length === 2 && holder && holder.open_tunnels === N,
      `one node holds all ${N} tunnels (sticky room): ${before.map((n) => `${n.node}=${n.open_tunnels}`).join(' ')}`);
    const drained = holder ? holder.node : NODES[0];
    const other = NODES.find((n) => n !== drained);

    // ── Phase 2: drain that node through the admin API ─────────────────────────────────
    console.log(`\nphase 2: POST ${ADMIN}/admin/nodes/${POOL}/${drained}/drain (other node: ${other})`);
    await page.evaluate(() => window.herdgateCheck.setPhase('draining'));
    const drainAt = await page.evaluate(() => performance.now());
    const r = await admin('POST', `/admin/nodes/${POOL}/${drained}/drain`);
    check(r.status === 202, `drain accepted: ${r.status} ${r.body.trim()}`);
    let s2;
    try {
      s2 = await until(`every socket closed with 1012 and echoing again`, PHASE_DEADLINE_MS, async () => {
        const s = await state();
        return s.clients.every((c) => closesOf(c, 1012, drainAt).length > 0 &&
          c.attempts.some((a) => a.t0 > drainAt && a.echoes > 0 && a.tClose === null)) ? s : null;
      });
      check(true, `every socket got 1012, reconnected and echoes again`);
    } catch (e) {
      s2 = await state();
      check(false, e.message);
    }
    table(s2, drainAt);
    const got1012 = s2.clients.filter((c) => closesOf(c, 1012, drainAt).length > 0).length;
    check(got1012 === N, `browser saw 1012 on ${got1012} of ${N} sockets`);
    const p2 = checkHintedCloses(s2, 1012, drainAt, 'phase 2');
    const back = checkHintedCloses(s2, 1013, drainAt, 'phase 2 (rejections on the way back, if any)');
    check(back.count === 0, `every drained socket was admitted when it came back at its hinted slot (${back.count} rejected)`);
    const others2 = s2.clients.flatMap((c) => c.attempts.filter((a) => a.code !== null && a.tClose >= drainAt && a.code !== 1012 && a.code !== 1013));
    check(others2.length === 0, `no other close codes after the drain` +
      (others2.length ? `: ${others2.map((a) => `${a.code} ${JSON.stringify(a.reason)}`).join(', ')}` : ''));
    let after;
    try {
      after = await until('tunnels to move to the other node', 5000, async () => {
        const a = await nodeReports();
        const d = a.find((n) => n.node === drained);
        const o = a.find((n) => n.node === other);
        return d && o && d.open_tunnels === 0 && o.open_tunnels === N ? a : null;
      });
    } catch (_) {
      after = await nodeReports();
    }
    const d = after.find((n) => n.node === drained);
    const o = after.find((n) => n.node === other);
    check(d?.draining && d?.open_tunnels === 0 && o?.open_tunnels === N,
      `all ${N} tunnels now on ${other}: ${after.map((n) => `${n.node}=${n.open_tunnels}${n.draining ? '(draining)' : ''}`).join(' ')}`);
    check(pageErrors.length === 0, `no page errors${pageErrors.length ? ': ' + pageErrors.join('; ') : ''}`);

    if (TLS) {
      // Every attempt was a connection of its own to herdgate's TLS listener (every one
      // got its 101: it was closed by a code, or echoes), and no TLS handshake failed.
      const all = (await state()).clients.flatMap((c) => c.attempts);
      const attempts = all.length;
      const opened = all.filter((a) => a.tOpen !== null).length;
      check(opened === attempts, `wss: TLS and WebSocket handshakes completed ('open') on ${opened} of ${attempts} attempts`);
      const accepted = (await metric('herdgate_connections_accepted_total', { listener: LISTENER })) - accepted0;
      const failed = (await metric('herdgate_tls_handshake_failures_total', { listener: LISTENER })) - tlsFailed0;
      check(accepted >= attempts, `wss: herdgate's TLS listener ${LISTENER} accepted a connection for every attempt ` +
        `(${accepted} connections, ${attempts} attempts)`);
      check(failed === 0, `wss: no failed TLS handshake on listener ${LISTENER} while the browser ran (${failed})`);
    }

    const fmt = (ds) => ds.length
      ? `${ds.length} closes, hints ${Math.min(...ds.map((x) => x.hint))}–${Math.max(...ds.map((x) => x.hint))} ms, ` +
        `waited − hint ${Math.min(...ds.map((x) => x.delay - x.hint)).toFixed(0)}…${Math.max(...ds.map((x) => x.delay - x.hint)).toFixed(0)} ms`
      : 'none';
    console.log(`\nfigures (${TRANSPORT}): 1013 ${fmt(p1.delays)}; 1012 ${fmt(p2.delays)}`);
  } finally {
    if (page) {
      const verdict = failures.length ? `FAIL (${failures.length} failed checks)` : 'PASS';
      await page.evaluate((v) => window.herdgateCheck.setPhase(`done: ${v}`), verdict).catch(() => {});
      // The table renders on the next animation frame: wait for two.
      await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))).catch(() => {});
      await page.screenshot({ path: SCREENSHOT, fullPage: true }).catch((e) => console.log(`screenshot failed: ${e}`));
      console.log(`screenshot: ${SCREENSHOT}`);
    }
    await context.close();
    server.close();
  }
}

try {
  await main();
} catch (e) {
  failures.push(String(e && e.stack ? e.stack : e));
  console.log(`  FAIL ${e && e.stack ? e.stack : e}`);
}
if (failures.length) {
  console.log(`\nbrowser check (${TRANSPORT}): FAIL (${failures.length} failed check${failures.length > 1 ? 's' : ''})`);
  process.exit(1);
}
console.log(`\nbrowser check (${TRANSPORT}): PASS`);
process.exit(0);
