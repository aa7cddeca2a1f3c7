// Test harness around the README's herdgateSocket (loaded just before this file).
//
// It does not change the snippet: it swaps the global WebSocket for a subclass that
// records every attempt the snippet makes (URL, open, close code/reason, times from
// performance.now()), opens N sockets at once through herdgateSocket, sends one message
// through the snippet's `send` on each open, and counts the echoes. The Playwright
// driver (check.mjs) reads window.herdgateCheck.state() and asserts on it.
'use strict';

(function () {
  const params = new URLSearchParams(location.search);
  const wsBase = params.get('ws');             // e.g. ws://127.0.0.1:PORT/chat
  const n = Number(params.get('n') || 8);
  const room = params.get('room') || 'lobby';  // the route's sticky key: one node for all

  const clients = [];                          // per socket: { attempts: [...] }
  const handles = [];
  let phase = 'connecting';

  const NativeWebSocket = window.WebSocket;
  class RecordingWebSocket extends NativeWebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      const u = new URL(String(url));
      const id = Number(u.searchParams.get('client'));
      const c = clients[id];
      const rec = {
        url: u.pathname + u.search,
        ticket: u.searchParams.get('herdgate_ticket'),
        acceptTicket: u.searchParams.get('herdgate_accept_ticket'),
        t0: performance.now(),
        tOpen: null, tClose: null, code: null, reason: null, wasClean: null,
        echoes: 0, tEcho: null,
      };
      const k = c.attempts.push(rec) - 1;
      // Registered before the snippet sets onclose/onmessage, so these run first.
      this.addEventListener('open', () => {
        rec.tOpen = performance.now();
        // Through the snippet's own handle: it must send on the socket it just opened.
        try { handles[id].send(`echo:${id}:${k}`); } catch (e) { rec.sendError = String(e); }
        render();
      });
      this.addEventListener('close', (ev) => {
        rec.tClose = performance.now();
        rec.code = ev.code;
        rec.reason = ev.reason;
        rec.wasClean = ev.wasClean;
        render();
      });
    }
  }
  window.WebSocket = RecordingWebSocket;

  function onMessage(id, data) {
    const m = /^echo:(\d+):(\d+)$/.exec(String(data));
    const c = clients[id];
    if (!m || Number(m[1]) !== id || !c.attempts[Number(m[2])]) {
      c.strayMessages = (c.strayMessages || 0) + 1;
      return;
    }
    const rec = c.attempts[Number(m[2])];
    rec.echoes += 1;
    if (rec.tEcho === null) rec.tEcho = performance.now();
    render();
  }

  function hintOf(reason) {
    try { return JSON.parse(reason); } catch (_) { return null; }
  }

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
  }

  let renderQueued = false;
  function render() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      document.getElementById('phase').textContent = `phase: ${phase} (${wsBase})`;
      const body = document.getElementById('rows');
      body.textContent = '';
      clients.forEach((c, id) => {
        const a = c.attempts;
        const last = a[a.length - 1];
        const tr = document.createElement('tr');
        cell(tr, `#${id}`);
        let state = 'waiting', cls = 'wait';
        if (last && last.tClose === null && last.echoes > 0) { state = 'echoing'; cls = 'ok'; }
        else if (last && last.tClose === null && last.tOpen !== null) state = 'open';
        else if (last && last.tClose === null) state = 'connecting';
        cell(tr, state, cls);
        cell(tr, String(a.length), 'num');
        const closes = [];
        a.forEach((r, k) => {
          if (r.code === null) return;
          const h = hintOf(r.reason);
          const next = a[k + 1];
          const waited = next ? `${Math.round(next.t0 - r.tClose)} ms` : '…';
          const hint = h && Number.isFinite(h.retry_after_ms) ? `${h.retry_after_ms} ms` : 'no hint';
          const ticket = h && h.ticket ? ' + ticket' : '';
          closes.push(`${r.code}: ${hint}${ticket} → ${waited}`);
        });
        cell(tr, closes.join('; ') || '–');
        cell(tr, String(a.filter((r) => r.ticket).length), 'num');
        cell(tr, String(a.reduce((s, r) => s + r.echoes, 0)), 'num');
        body.appendChild(tr);
      });
    });
  }

  window.herdgateCheck = {
    state: () => ({ now: performance.now(), phase, clients }),
    setPhase: (p) => { phase = p; render(); },
  };

  if (typeof herdgateSocket !== 'function') {
    phase = 'FAIL: herdgateSocket is not defined (README extraction?)';
    render();
    return;
  }
  for (let id = 0; id < n; id++) clients.push({ attempts: [] });
  // All at once, as after a deploy: N sockets in the same task.
  for (let id = 0; id < n; id++) {
    const url = `${wsBase}?room=${encodeURIComponent(room)}&client=${id}`;
    handles[id] = herdgateSocket(url, (data) => onMessage(id, data));
  }
  render();
})();
