// imgmill upload page: plain JavaScript, no build step, no dependencies. It speaks the frontend's JSON
// API (/api/operations, /api/tasks, /api/tasks/{id}[/events|/result|/source]) and remembers this
// browser's tasks in localStorage. Served from /assets/ under a strict CSP: no inline code anywhere.
'use strict';

(() => {
  const HISTORY_KEY = 'imgmill.tasks.v1';
  const MAX_HISTORY = 50;
  const PARALLEL_UPLOADS = 3;

  const $ = (sel, root = document) => root.querySelector(sel);
  const isTerminal = (state) => state === 'finished' || state === 'failed';

  const els = {
    op: $('#op'),
    opDesc: $('#op-desc'),
    drop: $('#drop'),
    files: $('#files'),
    tasks: $('#tasks'),
    tasksSection: $('#tasks-section'),
    tasksEmpty: $('#tasks-empty'),
    history: $('#history'),
    historySection: $('#history-section'),
    historyClear: $('#history-clear'),
    announce: $('#announce'),
  };

  // ---- small helpers -------------------------------------------------------------------------------

  function el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.className = v;
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children) if (c) e.append(c);
    return e;
  }

  function fmtSize(n) {
    if (!Number.isFinite(n)) return '';
    if (n < 1024) return n + ' B';
    if (n < 1024 * 1024) return (n / 1024).toFixed(1) + ' KB';
    return (n / 1024 / 1024).toFixed(1) + ' MB';
  }

  function fmtTime(t) {
    const d = new Date(t);
    if (Number.isNaN(d.getTime())) return '';
    return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
  }

  let announceTimer;
  function announce(text) {
    // Clear, then set, so that a repeated message is read again.
    els.announce.textContent = '';
    clearTimeout(announceTimer);
    announceTimer = setTimeout(() => { els.announce.textContent = text; }, 50);
  }

  const stateWords = {
    uploading: 'Uploading', queued: 'Queued', processing: 'Processing',
    finished: 'Finished', failed: 'Failed', refused: 'Refused', error: 'Error',
  };

  // ---- history (localStorage) ----------------------------------------------------------------------

  function loadHistory() {
    try {
      const list = JSON.parse(localStorage.getItem(HISTORY_KEY) || '[]');
      return Array.isArray(list) ? list.filter((t) => t && typeof t.id === 'string') : [];
    } catch {
      return [];
    }
  }

  function saveHistory(list) {
    try {
      localStorage.setItem(HISTORY_KEY, JSON.stringify(list.slice(0, MAX_HISTORY)));
    } catch {
      // Private mode or full storage: the page works without a history.
    }
  }

  function remember(entry) {
    const list = loadHistory().filter((t) => t.id !== entry.id);
    list.unshift(entry);
    saveHistory(list);
    renderHistory();
  }

  function updateRemembered(id, fields) {
    const list = loadHistory();
    const t = list.find((x) => x.id === id);
    if (!t) return;
    Object.assign(t, fields);
    saveHistory(list);
    renderHistory();
  }

  function renderHistory() {
    const list = loadHistory().filter((t) => !views.has(t.id));
    els.history.replaceChildren();
    for (const t of list) {
      const name = t.name || 'image';
      const text = el('div', { class: 'h-text' },
        el('div', { class: 'h-name', text: name }),
        el('div', { class: 'h-meta', text: [t.op, stateWords[t.state] || t.state, fmtTime(t.created)].filter(Boolean).join(' · ') }));
      const open = el('button', { type: 'button', class: 'secondary small', text: 'Show', 'aria-label': 'Show ' + name });
      open.addEventListener('click', () => {
        const v = reopen(t);
        v.focusTarget.focus();
      });
      els.history.append(el('li', {}, text, open));
    }
    els.historySection.hidden = list.length === 0;
  }

  // ---- operations ----------------------------------------------------------------------------------

  let operations = [{ name: 'swap', description: 'Swap the red and green channels.' }];

  function describeOp() {
    const op = operations.find((o) => o.name === els.op.value);
    els.opDesc.textContent = (op && op.description) || '';
  }

  async function loadOperations() {
    try {
      const r = await fetch('/api/operations', { headers: { Accept: 'application/json' } });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const body = await r.json();
      if (Array.isArray(body.operations) && body.operations.length) operations = body.operations;
    } catch {
      // Keep the default operation.
    }
    const current = els.op.value;
    els.op.replaceChildren(...operations.map((o) => el('option', { value: o.name, text: o.name })));
    if (operations.some((o) => o.name === current)) els.op.value = current;
    describeOp();
  }

  // ---- task views ----------------------------------------------------------------------------------

  const views = new Map(); // task id, or a local key while uploading -> view
  let localSeq = 0;

  function newView(name, op, meta) {
    const key = 'local-' + ++localSeq;
    const titleId = 'task-title-' + localSeq;
    const v = { key, name, op, id: null, urls: null, state: null, stopWatch: null };
    v.badge = el('span', { class: 'badge' });
    v.title = el('h3', { class: 'task-name', id: titleId, text: name, tabindex: '-1' });
    v.meta = el('p', { class: 'task-meta', text: meta });
    v.progress = el('progress', { class: 'progress', max: '100', 'aria-label': 'Upload progress of ' + name });
    v.message = el('p', { class: 'message', hidden: true });
    v.body = el('div', { class: 'task-body' });
    v.li = el('li', { class: 'task', 'aria-labelledby': titleId },
      el('div', { class: 'task-head' }, el('div', {}, v.title, v.meta), v.badge),
      v.progress, v.message, v.body);
    v.focusTarget = v.title;
    views.set(key, v);
    els.tasks.prepend(v.li);
    els.tasksSection.hidden = false;
    els.tasksEmpty.hidden = true;
    return v;
  }

  function setState(v, state, detail) {
    v.state = state;
    v.li.dataset.state = state;
    v.badge.className = 'badge ' + state;
    v.badge.textContent = stateWords[state] || state;
    if (detail !== undefined) setMessage(v, detail.text, detail.kind);
  }

  function setMessage(v, text, kind) {
    v.message.hidden = !text;
    v.message.className = 'message' + (kind ? ' ' + kind : '');
    v.message.textContent = text || '';
  }

  function bindId(v, id, urls) {
    views.delete(v.key);
    v.key = id;
    v.id = id;
    v.urls = urls;
    views.set(id, v);
  }

  // reopen shows a remembered task again (or brings its card back into view) and follows its status.
  function reopen(t) {
    const existing = views.get(t.id);
    if (existing) return existing;
    const v = newView(t.name || 'image', t.op, [t.op, fmtTime(t.created)].filter(Boolean).join(' · '));
    bindId(v, t.id, urlsOf(t));
    setState(v, t.state && !isTerminal(t.state) ? t.state : 'queued');
    v.progress.removeAttribute('value');
    v.progress.setAttribute('aria-label', 'Progress of ' + v.name);
    watch(v);
    renderHistory();
    return v;
  }

  function urlsOf(t) {
    const base = '/api/tasks/' + encodeURIComponent(t.id);
    return {
      statusUrl: t.statusUrl || base,
      resultUrl: t.resultUrl || base + '/result',
      eventsUrl: t.eventsUrl || base + '/events',
      sourceUrl: t.sourceUrl || base + '/source',
    };
  }

  // applyStatus shows one status answer of the API.
  function applyStatus(v, st) {
    if (!st || !st.state) return;
    const before = v.state;
    setState(v, st.state);
    const attempts = st.maxAttempts > 1 && st.attempts > 0 ? 'attempt ' + st.attempts + ' of ' + st.maxAttempts : '';
    if (st.state === 'queued') {
      v.progress.hidden = false;
      v.progress.removeAttribute('value');
      setMessage(v, 'Waiting for a worker…');
    } else if (st.state === 'processing') {
      v.progress.hidden = false;
      v.progress.removeAttribute('value');
      setMessage(v, 'Processing' + (attempts ? ' (' + attempts + ')' : '') + '…');
    } else if (st.state === 'finished') {
      v.progress.hidden = true;
      setMessage(v, '');
      showResult(v);
    } else if (st.state === 'failed') {
      v.progress.hidden = true;
      setMessage(v, 'Processing failed: ' + (st.error || 'unknown reason') + (attempts ? ' (' + attempts + ')' : '') + '.', 'error');
    }
    if (before !== st.state) {
      announce(v.name + ': ' + (stateWords[st.state] || st.state).toLowerCase() +
        (st.state === 'failed' && st.error ? ', ' + st.error : ''));
      if (v.id) updateRemembered(v.id, { state: st.state });
    }
  }

  function showResult(v) {
    if (v.shown) return;
    v.shown = true;
    const base = v.name.replace(/\.[A-Za-z0-9]+$/, '') || 'image';
    const fig = (caption, src, alt) => el('figure', {},
      el('figcaption', { text: caption }),
      el('img', { src, alt, loading: 'lazy', decoding: 'async' }));
    v.body.replaceChildren(
      el('div', { class: 'compare' },
        fig('Original', v.urls.sourceUrl, 'Original: ' + v.name),
        fig('Result', v.urls.resultUrl, 'Result of ' + v.op + ': ' + v.name)),
      el('div', { class: 'actions' },
        el('a', { class: 'button download', href: v.urls.resultUrl, download: base + '-' + v.op + '.png', text: 'Download result' }),
        el('a', { class: 'button secondary', href: v.urls.resultUrl, target: '_blank', rel: 'noopener', text: 'Open in new tab' })));
  }

  // ---- status: EventSource, polling as the fallback ------------------------------------------------

  function watch(v) {
    if (v.stopWatch) v.stopWatch();
    if (!('EventSource' in window)) {
      poll(v);
      return;
    }
    const es = new EventSource(v.urls.eventsUrl);
    let stopped = false;
    v.stopWatch = () => { stopped = true; es.close(); };
    es.addEventListener('status', (e) => {
      let st;
      try { st = JSON.parse(e.data); } catch { return; }
      applyStatus(v, st);
      if (isTerminal(st.state)) v.stopWatch();
    });
    es.addEventListener('error', () => {
      // The stream broke (or was never there): close it, so that it does not reconnect forever, and poll.
      if (stopped) return;
      v.stopWatch();
      if (!isTerminal(v.state)) poll(v);
    });
  }

  function poll(v) {
    let delay = 500;
    let timer = null;
    let stopped = false;
    v.stopWatch = () => { stopped = true; clearTimeout(timer); };
    const tick = async () => {
      if (stopped) return;
      try {
        const r = await fetch(v.urls.statusUrl, { headers: { Accept: 'application/json' }, cache: 'no-store' });
        if (r.status === 404) {
          setState(v, 'error', { text: 'This task is not known (any more) to the server.', kind: 'error' });
          v.progress.hidden = true;
          if (v.id) updateRemembered(v.id, { state: 'error' });
          return;
        }
        if (r.ok) {
          const st = await r.json();
          applyStatus(v, st);
          if (isTerminal(st.state)) return;
          delay = 1000;
        } else {
          delay = Math.min(delay * 2, 10000);
        }
      } catch {
        delay = Math.min(delay * 2, 10000);
      }
      if (!stopped) timer = setTimeout(tick, delay);
    };
    tick();
  }

  // ---- uploads -------------------------------------------------------------------------------------

  const queue = [];
  let active = 0;

  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    const op = els.op.value || 'swap';
    for (const file of files) {
      const v = newView(file.name || 'image', op, op + ' · ' + fmtSize(file.size));
      v.file = file;
      setState(v, 'uploading');
      v.progress.value = 0;
      queue.push(v);
    }
    announce(files.length === 1 ? 'Uploading ' + files[0].name : 'Uploading ' + files.length + ' images');
    pump();
  }

  function pump() {
    while (active < PARALLEL_UPLOADS && queue.length) {
      active++;
      upload(queue.shift()).finally(() => { active--; pump(); });
    }
  }

  function upload(v) {
    return new Promise((resolve) => {
      setState(v, 'uploading', { text: '' });
      v.body.replaceChildren();
      v.progress.hidden = false;
      v.progress.value = 0;
      const form = new FormData();
      form.append('op', v.op);
      form.append('file', v.file, v.file.name);
      const xhr = new XMLHttpRequest();
      xhr.open('POST', '/api/tasks?op=' + encodeURIComponent(v.op));
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.upload.addEventListener('progress', (e) => {
        if (e.lengthComputable) v.progress.value = Math.round((e.loaded / e.total) * 100);
      });
      xhr.addEventListener('load', () => {
        let body = {};
        try { body = JSON.parse(xhr.responseText || '{}'); } catch { body = {}; }
        if (xhr.status === 201 || (xhr.status === 200 && body.id)) {
          accepted(v, body);
        } else {
          refused(v, xhr.status, body.error || xhr.statusText, xhr.getResponseHeader('Retry-After'));
        }
        resolve();
      });
      xhr.addEventListener('error', () => {
        refused(v, 0, 'the network request failed');
        resolve();
      });
      xhr.addEventListener('abort', () => {
        refused(v, 0, 'the upload was cancelled');
        resolve();
      });
      xhr.send(form);
    });
  }

  function accepted(v, body) {
    v.progress.value = 100;
    v.progress.setAttribute('aria-label', 'Progress of ' + v.name);
    bindId(v, body.id, urlsOf(body));
    v.file = null;
    remember({ id: body.id, name: v.name, op: v.op, created: Date.now(), state: 'queued', ...v.urls });
    applyStatus(v, { state: body.status || 'queued' });
    watch(v);
  }

  function refused(v, status, msg, retryAfter) {
    v.progress.hidden = true;
    let text;
    let retryIn = 0;
    switch (status) {
      case 413:
        text = 'Too big: ' + v.name + ' is ' + fmtSize(v.file.size) + ', more than the server accepts' + (msg ? ' (' + msg + ')' : '') + '.';
        break;
      case 415:
        text = 'Not an image the server can read: use PNG, JPEG or GIF' + (msg ? ' (' + msg + ')' : '') + '.';
        break;
      case 429: {
        retryIn = Math.max(1, parseInt(retryAfter, 10) || 1);
        text = 'Too many uploads right now: wait ' + retryIn + ' s, then retry.';
        break;
      }
      case 503:
        retryIn = parseInt(retryAfter, 10) || 0;
        text = 'The service is busy or unavailable' + (msg ? ' (' + msg + ')' : '') + '. Please try again' + (retryIn ? ' in ' + retryIn + ' s' : ' shortly') + '.';
        break;
      case 0:
        text = 'Upload failed: ' + msg + '.';
        break;
      default:
        text = 'Refused (' + status + '): ' + (msg || 'unknown error') + '.';
    }
    setState(v, 'refused', { text, kind: status === 429 || status === 503 || status === 0 ? 'warn' : 'error' });
    announce(v.name + ': ' + text);
    if (status === 429 || status === 503 || status === 0) offerRetry(v, retryIn);
  }

  // offerRetry adds a Retry button, disabled (with a countdown) while the server asked us to wait.
  function offerRetry(v, wait) {
    const btn = el('button', { type: 'button', class: 'secondary small' });
    const label = 'Retry';
    let left = wait;
    const tick = () => {
      if (left > 0) {
        btn.disabled = true;
        btn.textContent = label + ' in ' + left + ' s';
        left--;
        setTimeout(tick, 1000);
      } else {
        btn.disabled = false;
        btn.textContent = label;
      }
    };
    tick();
    btn.addEventListener('click', () => {
      queue.push(v);
      v.body.replaceChildren();
      setState(v, 'uploading', { text: 'Waiting to upload…' });
      pump();
    });
    v.body.replaceChildren(el('div', { class: 'actions' }, btn));
  }

  // ---- wiring --------------------------------------------------------------------------------------

  function init() {
    for (const e of document.querySelectorAll('.js-only')) e.hidden = false;
    for (const e of document.querySelectorAll('.origin')) e.textContent = location.origin;
    els.tasksSection.hidden = true;

    els.op.addEventListener('change', describeOp);
    els.files.addEventListener('change', () => {
      addFiles(els.files.files);
      els.files.value = '';
    });

    // Dropping anywhere on the page uploads; the drop zone shows it is the target.
    let depth = 0;
    const hasFiles = (e) => e.dataTransfer && Array.from(e.dataTransfer.types || []).includes('Files');
    window.addEventListener('dragenter', (e) => {
      if (!hasFiles(e)) return;
      depth++;
      els.drop.classList.add('over');
    });
    window.addEventListener('dragleave', () => {
      depth = Math.max(0, depth - 1);
      if (!depth) els.drop.classList.remove('over');
    });
    window.addEventListener('dragover', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      e.dataTransfer.dropEffect = 'copy';
    });
    window.addEventListener('drop', (e) => {
      if (!hasFiles(e)) return;
      e.preventDefault();
      depth = 0;
      els.drop.classList.remove('over');
      addFiles(e.dataTransfer.files);
    });

    els.historyClear.addEventListener('click', () => {
      saveHistory([]);
      renderHistory();
      announce('List of earlier tasks cleared');
      els.files.focus();
    });
    window.addEventListener('storage', (e) => { if (e.key === HISTORY_KEY) renderHistory(); });

    renderHistory();
    loadOperations();
  }

  init();
})();
