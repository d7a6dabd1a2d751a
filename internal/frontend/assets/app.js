// imgmill upload page: plain JavaScript, no build step, no dependencies. It speaks the frontend's JSON
// API (/api/operations, /api/limits, /api/tasks, /api/events, /api/tasks/{id}[/result|/source|/cancel|
// /retry], /api/tasks.zip) and remembers this browser's tasks in localStorage. Served from /assets/
// under a strict CSP: no inline code anywhere.
'use strict';

(() => {
  const HISTORY_KEY = 'imgmill.tasks.v1';
  const MAX_HISTORY = 50;
  const PARALLEL_UPLOADS = 3; // with the one status stream, under the browser's 6 connections a site
  const MAX_IDS = 200; // ids one /api/events or /api/tasks.zip takes
  const REOPEN_DELAY = 200; // ms: a batch of accepted uploads reopens the status stream once
  const THUMB_WIDTH = 480;

  const $ = (sel, root = document) => root.querySelector(sel);
  const isTerminal = (state) => state === 'finished' || state === 'failed' || state === 'cancelled';

  const els = {
    opPick: $('#op-pick'),
    opDesc: $('#op-desc'),
    params: $('#op-params'),
    stepForm: $('#step-form'),
    stepError: $('#step-error'),
    chain: $('#chain'),
    chainEmpty: $('#chain-empty'),
    chainClear: $('#chain-clear'),
    spec: $('#spec'),
    specNote: $('#spec-note'),
    specError: $('#spec-error'),
    opList: $('#op-list'),
    drop: $('#drop'),
    files: $('#files'),
    tasks: $('#tasks'),
    tasksSection: $('#tasks-section'),
    tasksEmpty: $('#tasks-empty'),
    history: $('#history'),
    historySection: $('#history-section'),
    historyClear: $('#history-clear'),
    announce: $('#announce'),
    builder: $('#builder'),
    chainSummary: $('#chain-summary'),
    limits: $('#limits'),
    uploadError: $('#upload-error'),
    tasksStatus: $('#tasks-status'),
    downloadAll: $('#download-all'),
    cmp: $('#compare'),
    cmpTitle: $('#compare-title'),
    cmpStage: $('#compare-stage'),
    cmpLayer: $('#compare-layer'),
    cmpBefore: $('#compare-before'),
    cmpAfter: $('#compare-after'),
    cmpDivide: $('#compare-divide'),
    cmpPos: $('#compare-pos'),
    cmpZoom: $('#compare-zoom'),
    cmpClose: $('#compare-close'),
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
    finished: 'Finished', failed: 'Failed', cancelled: 'Cancelled', refused: 'Refused', error: 'Error', waiting: 'Waiting to retry',
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
        el('div', { class: 'h-meta' }, el('code', { class: 'op', text: t.op || 'swap' }),
          ' · ' + [stateWords[t.state] || t.state, fmtTime(t.created)].filter(Boolean).join(' · ')));
      const open = el('button', { type: 'button', class: 'secondary small', text: 'Show', 'aria-label': 'Show ' + name });
      open.addEventListener('click', () => {
        const v = reopen(t);
        v.focusTarget.focus();
      });
      els.history.append(el('li', {}, text, open));
    }
    els.historySection.hidden = list.length === 0;
  }

  // ---- operations: the chain builder ---------------------------------------------------------------
  //
  // The spec text field (#spec) is what is sent with each upload: operations separated by commas,
  // applied in order (resize:800x600,grayscale). The list of steps (#chain) is a view of it: the
  // builder (#step-form) and the step buttons rewrite the text, and typing in the text redraws the
  // list. The server validates the spec; the page only points out names it does not know.

  const SPEC_KEY = 'imgmill.spec.v1';
  let operations = [{
    name: 'swap', aliases: [], summary: 'Swap the red and green channels',
    description: 'Swaps the red and green channels, keeping blue and alpha. The default when no operation is given.',
    syntax: 'swap', params: [], example: 'swap',
  }];
  let steps = []; // the spec's items, trimmed, as written
  let operationsLoaded = false; // names are checked (and a chain blocked) only against the server's list

  function findOp(name) {
    const n = String(name || '').trim().toLowerCase();
    return operations.find((o) => o.name === n || (o.aliases || []).includes(n));
  }

  const itemName = (item) => item.split(':')[0].trim();

  function currentSpec() {
    return els.spec.value.trim();
  }

  // splitSpec returns the non-empty items of a spec, and what the page can tell is wrong with it.
  function splitSpec(text) {
    const items = [];
    const problems = [];
    if (!text.trim()) return { items, problems };
    text.split(',').forEach((raw, i) => {
      const item = raw.trim();
      if (!item) {
        problems.push('step ' + (i + 1) + ' is empty (two commas in a row, or one at an end)');
        return;
      }
      items.push(item);
      if (!findOp(itemName(item))) problems.push('“' + itemName(item) + '” is not an operation the server lists');
    });
    return { items, problems };
  }

  function saveSpec() {
    try { localStorage.setItem(SPEC_KEY, els.spec.value); } catch { /* works without */ }
  }

  // setSteps replaces the chain by items and writes the spec text from it.
  function setSteps(items) {
    steps = items.slice();
    els.spec.value = steps.join(',');
    saveSpec();
    clearSpecError();
    showSpecNote([]);
    renderChain();
  }

  // specEdited follows the text field: the list shows what was typed.
  function specEdited(final) {
    const { items, problems } = splitSpec(els.spec.value);
    steps = items;
    saveSpec();
    clearSpecError();
    if (final) showSpecNote(problems);
    else if (!problems.length) showSpecNote([]);
    renderChain();
  }

  function showSpecNote(problems) {
    els.specNote.hidden = !problems.length;
    els.specNote.textContent = problems.length
      ? 'Check the list: ' + problems.join('; ') + '. Images are not sent until it is fixed.' : '';
  }

  function showSpecError(spec, msg) {
    if (currentSpec() !== spec && !(spec === 'swap' && currentSpec() === '')) return;
    els.specError.textContent = 'The server refused “' + spec + '”: ' + msg;
    els.specError.hidden = false;
    els.spec.setAttribute('aria-invalid', 'true');
  }

  function clearSpecError() {
    els.specError.hidden = true;
    els.specError.textContent = '';
    els.spec.removeAttribute('aria-invalid');
  }

  function renderChain() {
    els.chainSummary.textContent = steps.length ? steps.join(',') : 'swap';
    if (!chainProblem()) showUploadError('');
    els.chainClear.disabled = steps.length === 0;
    els.chainEmpty.hidden = steps.length > 0;
    els.chain.hidden = steps.length === 0;
    els.chain.replaceChildren(...steps.map((item, i) => {
      const op = findOp(itemName(item));
      const label = 'step ' + (i + 1) + ', ' + item;
      const button = (act, text, title, disabled) => el('button', {
        type: 'button', class: 'secondary small step-' + act, 'data-act': act, 'data-index': String(i),
        title, 'aria-label': title + ': ' + label, disabled, text,
      });
      return el('li', { class: 'step' + (op ? '' : ' unknown') },
        el('div', { class: 'step-text' },
          el('code', { text: item }),
          el('span', { class: 'step-summary', text: op ? op.summary || op.description || '' : 'unknown operation' })),
        el('div', { class: 'step-buttons' },
          button('up', '↑', 'Move up', i === 0),
          button('down', '↓', 'Move down', i === steps.length - 1),
          button('remove', '✕', 'Remove', false)));
    }));
  }

  function chainClicked(e) {
    const btn = e.target.closest('button[data-act]');
    if (!btn || btn.disabled) return;
    const i = Number(btn.dataset.index);
    const act = btn.dataset.act;
    const item = steps[i];
    const next = steps.slice();
    let focusIndex = i;
    if (act === 'up' && i > 0) {
      [next[i - 1], next[i]] = [next[i], next[i - 1]];
      focusIndex = i - 1;
      announce('Moved ' + item + ' to step ' + i);
    } else if (act === 'down' && i < next.length - 1) {
      [next[i + 1], next[i]] = [next[i], next[i + 1]];
      focusIndex = i + 1;
      announce('Moved ' + item + ' to step ' + (i + 2));
    } else if (act === 'remove') {
      next.splice(i, 1);
      focusIndex = Math.min(i, next.length - 1);
      announce('Removed ' + item + (next.length ? '' : '; no steps left, the default is swap'));
    } else {
      return;
    }
    setSteps(next);
    // Keep the keyboard where it was: the same button of the moved step, else another one of it.
    const li = els.chain.children[focusIndex];
    const target = li && (li.querySelector('.step-' + act + ':not([disabled])') || li.querySelector('.step-remove'));
    (target || els.opPick).focus();
  }

  // ---- the step form: inputs from the catalogue's params

  const fmtNum = (v) => (v === undefined || v === null ? undefined : String(v));

  function rangeText(p) {
    const hasRange = p.min !== undefined && p.max !== undefined;
    switch (p.type) {
      case 'size': return hasRange ? 'sides ' + fmtNum(p.min) + '–' + fmtNum(p.max) : '';
      case 'geometry': return hasRange ? 'sides ' + fmtNum(p.min) + '–' + fmtNum(p.max) + ', offsets from 0' : '';
      case 'enum': return '';
      default: return hasRange ? fmtNum(p.min) + ' to ' + fmtNum(p.max) : '';
    }
  }

  function numberInput(id, p, attrs = {}) {
    return el('input', {
      id, type: 'number', inputmode: p.type === 'number' ? 'decimal' : 'numeric',
      step: p.type === 'number' ? 'any' : '1', min: fmtNum(p.min), max: fmtNum(p.max), ...attrs,
    });
  }

  function renderParams() {
    const op = operations.find((o) => o.name === els.opPick.value) || operations[0];
    els.opDesc.replaceChildren(
      (op.description || op.summary || '') + ' ',
      el('span', { class: 'syntax' }, 'Syntax: ', el('code', { text: op.syntax || op.name })));
    els.stepError.hidden = true;
    const params = Array.isArray(op.params) ? op.params : [];
    els.params.hidden = params.length === 0;
    els.params.replaceChildren(...params.map((p, i) => {
      const id = 'param-' + i;
      const hintId = id + '-hint';
      const title = [el('span', { text: p.name }),
        p.required ? el('span', { class: 'req', text: ' (required)' }) : el('span', { class: 'opt', text: ' (optional)' })];
      const hint = el('p', {
        class: 'hint', id: hintId,
        text: [p.description, rangeText(p), p.default ? 'default ' + p.default : ''].filter(Boolean).join('; '),
      });
      const box = (label, inputs) => el('div', { class: 'param', 'data-param': String(i), 'data-type': p.type }, label, inputs, hint);
      if (p.type === 'enum' && Array.isArray(p.allowed)) {
        const sel = el('select', { id, 'aria-describedby': hintId, required: p.required },
          ...p.allowed.map((a) => el('option', { value: a, text: a })));
        sel.value = p.default && p.allowed.includes(p.default) ? p.default : p.allowed[0];
        return box(el('label', { for: id }, ...title), sel);
      }
      if (p.type === 'size' || p.type === 'geometry') {
        const side = (suffix, what, extra = {}) => numberInput(id + '-' + suffix, p, {
          'aria-label': p.name + ' ' + what, 'aria-describedby': hintId, 'data-part': suffix, ...extra,
        });
        const geometry = p.type === 'geometry';
        const parts = [side('w', 'width', { placeholder: 'W', required: geometry && p.required }), el('span', { text: '×', 'aria-hidden': 'true' }),
          side('h', 'height', { placeholder: 'H', required: geometry && p.required })];
        if (geometry) {
          const off = { type: 'integer', min: 0, max: p.max };
          parts.push(el('span', { text: '+', 'aria-hidden': 'true' }),
            numberInput(id + '-x', off, { 'aria-label': p.name + ' x offset (optional)', 'aria-describedby': hintId, 'data-part': 'x', placeholder: 'X' }),
            el('span', { text: '+', 'aria-hidden': 'true' }),
            numberInput(id + '-y', off, { 'aria-label': p.name + ' y offset (optional)', 'aria-describedby': hintId, 'data-part': 'y', placeholder: 'Y' }));
        }
        return el('fieldset', { class: 'param', 'data-param': String(i), 'data-type': p.type },
          el('legend', {}, ...title), el('div', { class: 'size-inputs' }, ...parts), hint);
      }
      const input = p.type === 'number' || p.type === 'integer'
        ? numberInput(id, p, { 'aria-describedby': hintId, required: p.required })
        : el('input', { id, type: 'text', 'aria-describedby': hintId, required: p.required, autocomplete: 'off', spellcheck: 'false' });
      input.value = p.default || '';
      return box(el('label', { for: id }, ...title), input);
    }));
    if (op.name === 'convert') {
      // A PNG has no quality: the quality input only counts for jpeg.
      const fmt = els.params.querySelector('select');
      const quality = els.params.querySelector('input');
      const sync = () => { if (fmt && quality) quality.disabled = fmt.value === 'png'; };
      if (fmt) fmt.addEventListener('change', sync);
      sync();
    }
  }

  class StepError extends Error {
    constructor(msg, input) { super(msg); this.input = input; }
  }

  function checkInput(input, what) {
    if (input && !input.disabled && !input.checkValidity()) throw new StepError(what + ': ' + input.validationMessage, input);
  }

  // stepFromForm returns the spec item the form describes, or throws a StepError.
  function stepFromForm() {
    const op = operations.find((o) => o.name === els.opPick.value) || operations[0];
    const params = Array.isArray(op.params) ? op.params : [];
    const args = params.map((p, i) => {
      const box = els.params.querySelector('[data-param="' + i + '"]');
      if (!box) return '';
      if (p.type === 'size' || p.type === 'geometry') {
        const part = (k) => box.querySelector('[data-part="' + k + '"]');
        for (const k of ['w', 'h', 'x', 'y']) checkInput(part(k), p.name);
        const w = part('w').value.trim();
        const h = part('h').value.trim();
        if (!w && !h) {
          if (p.required) throw new StepError(p.name + ': enter a width or a height', part('w'));
          return '';
        }
        if (p.type === 'geometry') {
          if (!w || !h) throw new StepError(p.name + ': enter both the width and the height', part(w ? 'h' : 'w'));
          const x = part('x').value.trim();
          const y = part('y').value.trim();
          return w + 'x' + h + (x || y ? '+' + (x || '0') + '+' + (y || '0') : '');
        }
        // thumbnail:N is a square box: one side given is N.
        if ((!w || !h) && /:N\b/.test(op.syntax || '')) return w || h;
        return w + 'x' + h;
      }
      const input = box.querySelector('input, select');
      checkInput(input, p.name);
      if (input.disabled) return '';
      const v = input.value.trim();
      if (!v && p.required) throw new StepError(p.name + ' is required', input);
      return v;
    });
    // Parameters are positional: an empty one before a given one takes its default, and optional ones
    // at the end that are empty or at their default are left out.
    while (args.length && !params[args.length - 1].required &&
      (args[args.length - 1] === '' || args[args.length - 1] === params[args.length - 1].default)) args.pop();
    args.forEach((a, i) => { if (a === '') args[i] = params[i].default || ''; });
    return [op.name, ...args].join(':');
  }

  function addStep(e) {
    e.preventDefault();
    let item;
    try {
      item = stepFromForm();
    } catch (err) {
      if (!(err instanceof StepError)) throw err;
      els.stepError.textContent = err.message;
      els.stepError.hidden = false;
      if (err.input) err.input.focus();
      return;
    }
    els.stepError.hidden = true;
    const next = steps.slice();
    const existing = next.findIndex((s) => itemName(s).toLowerCase() === 'convert');
    if (itemName(item) === 'convert' && existing >= 0) {
      next[existing] = item; // one output format per chain
      announce('Replaced the output format: ' + item);
    } else {
      next.push(item);
      announce('Added step ' + next.length + ': ' + item);
    }
    setSteps(next);
  }

  function renderReference() {
    els.opList.replaceChildren(...operations.flatMap((o) => [
      el('dt', {}, el('code', { text: o.syntax || o.name }),
        (o.aliases && o.aliases.length) ? el('span', { class: 'hint', text: ' also ' + o.aliases.join(', ') }) : null),
      el('dd', {}, (o.description || o.summary || '') + (o.example ? ' Example: ' : ''),
        o.example ? el('code', { text: o.example }) : null),
    ]));
  }

  async function loadOperations() {
    try {
      const r = await fetch('/api/operations', { headers: { Accept: 'application/json' } });
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const body = await r.json();
      if (Array.isArray(body.operations) && body.operations.length) {
        operations = body.operations;
        operationsLoaded = true;
      }
    } catch {
      // Keep the default operation.
    }
    const current = els.opPick.value;
    els.opPick.replaceChildren(...operations.map((o) => el('option', {
      value: o.name, text: o.name + (o.summary ? ' — ' + o.summary : ''),
    })));
    if (operations.some((o) => o.name === current)) els.opPick.value = current;
    renderParams();
    renderReference();
    specEdited(true); // names are known now
  }

  // ---- task views ----------------------------------------------------------------------------------

  const views = new Map(); // task id, or a local key while uploading -> view
  let localSeq = 0;

  // newView adds a task card: name is the file's, op the spec it was sent with, extra more of the
  // meta line (size, or when it was made).
  function newView(name, op, extra) {
    const key = 'local-' + ++localSeq;
    const titleId = 'task-title-' + localSeq;
    const v = { key, name, op, extra, id: null, urls: null, state: null, inputType: '', blobUrls: [] };
    v.badge = el('span', { class: 'badge' });
    v.title = el('h3', { class: 'task-name', id: titleId, text: name, tabindex: '-1' });
    v.meta = el('p', { class: 'task-meta' });
    renderMeta(v);
    v.progress = el('progress', { class: 'progress', max: '100', 'aria-label': 'Upload progress of ' + name });
    v.message = el('p', { class: 'message', hidden: true });
    v.body = el('div', { class: 'task-body' });
    v.actions = el('div', { class: 'task-actions' });
    v.li = el('li', { class: 'task', 'aria-labelledby': titleId },
      el('div', { class: 'task-head' }, el('div', {}, v.title, v.meta), v.badge),
      v.progress, v.message, v.body, v.actions);
    v.focusTarget = v.title;
    views.set(key, v);
    els.tasks.prepend(v.li);
    els.tasksSection.hidden = false;
    els.tasksEmpty.hidden = true;
    return v;
  }

  function renderMeta(v) {
    v.meta.replaceChildren(el('code', { class: 'op', title: 'Operations', text: v.op }), v.extra ? ' · ' + v.extra : '',
      v.expires ? ' · kept until ' + fmtTime(v.expires) : '');
  }

  function setState(v, state, detail) {
    const changed = v.state !== state;
    v.state = state;
    v.li.dataset.state = state;
    v.badge.className = 'badge ' + state;
    v.badge.textContent = stateWords[state] || state;
    if (detail !== undefined) setMessage(v, detail.text, detail.kind);
    if (changed && state !== 'waiting' && state !== 'refused') renderActions(v);
    summarize();
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
    const v = newView(t.name || 'image', t.op || 'swap', fmtTime(t.created));
    v.inputType = t.type || typeFromName(t.name || '');
    bindId(v, t.id, urlsOf(t));
    setState(v, t.state && !isTerminal(t.state) ? t.state : 'queued');
    v.progress.removeAttribute('value');
    v.progress.setAttribute('aria-label', 'Progress of ' + v.name);
    follow(v);
    renderHistory();
    return v;
  }

  function urlsOf(t) {
    const base = '/api/tasks/' + encodeURIComponent(t.id);
    return {
      statusUrl: t.statusUrl || base,
      resultUrl: t.resultUrl || base + '/result',
      sourceUrl: t.sourceUrl || base + '/source',
    };
  }

  // summarize writes the list's status line and points "Download all" at the finished tasks.
  function summarize() {
    const counts = {};
    const finished = [];
    for (const v of views.values()) {
      counts[v.state] = (counts[v.state] || 0) + 1;
      if (v.state === 'finished' && v.id) finished.push(v.id);
    }
    const order = ['uploading', 'waiting', 'queued', 'processing', 'finished', 'failed', 'cancelled', 'refused', 'error'];
    const parts = order.filter((s) => counts[s]).map((s) => counts[s] + ' ' + (stateWords[s] || s).toLowerCase());
    els.tasksStatus.textContent = views.size ? views.size + (views.size === 1 ? ' task: ' : ' tasks: ') + parts.join(', ') + '.' : '';
    const zipIds = finished.slice(0, MAX_IDS);
    els.downloadAll.hidden = zipIds.length === 0;
    els.downloadAll.href = '/api/tasks.zip?ids=' + zipIds.map(encodeURIComponent).join(',');
    els.downloadAll.textContent = 'Download all (' + zipIds.length + ')';
    els.tasksEmpty.hidden = views.size > 0;
  }

  // applyStatus shows one status answer of the API.
  function applyStatus(v, st) {
    if (!st || !st.state) return;
    if (typeof st.op === 'string' && st.op && st.op !== v.op) {
      // The server's canonical form of the spec (names in full, defaults left out).
      v.op = st.op;
      renderMeta(v);
      if (v.id) updateRemembered(v.id, { op: st.op });
    }
    if (st.expiresAt && st.expiresAt !== v.expires) {
      // When retention removes the task, its images and record (absent while it runs, or kept forever).
      v.expires = st.expiresAt;
      renderMeta(v);
    }
    const before = v.state;
    setState(v, st.state);
    // Attempts count only while a task is retried after a transient failure; a failure is final.
    const attempts = st.maxAttempts > 1 && st.attempts > 1 ? 'attempt ' + st.attempts + ' of ' + st.maxAttempts : '';
    if (st.state === 'queued') {
      v.progress.hidden = false;
      v.progress.removeAttribute('value');
      setMessage(v, st.retryAt && st.error ? 'Waiting to run again: ' + st.error + '.' : 'Waiting for a worker…');
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
      setMessage(v, sentence(st.error) || 'Processing failed. Retry it, or change the operations and upload the image again.', 'error');
    } else if (st.state === 'cancelled') {
      v.progress.hidden = true;
      setMessage(v, 'Cancelled: it will not run. Retry runs it again.');
    }
    if (before !== st.state) {
      // Only outcomes are read out: a batch's queued and processing steps would drown them.
      if (isTerminal(st.state)) {
        announce(v.name + ': ' + (stateWords[st.state] || st.state).toLowerCase() +
          (st.state === 'failed' && st.error ? ', ' + st.error : ''));
      }
      if (v.id) updateRemembered(v.id, { state: st.state });
    }
  }

  // gone marks a task the server no longer knows (deleted, or removed after its retention).
  function gone(v, why) {
    unfollow(v.id);
    v.progress.hidden = true;
    setState(v, 'error', { text: 'The server no longer has this task' + (why ? ' (' + why + ')' : '') + ': it was deleted or expired. Remove it from this list.', kind: 'error' });
    if (v.id) updateRemembered(v.id, { state: 'error' });
  }

  // sentence turns a server's message into one: no "Error:" prefix, a capital, a full stop.
  function sentence(msg) {
    let s = String(msg || '').replace(/^error:\s*/i, '').trim();
    if (!s) return '';
    s = s.charAt(0).toUpperCase() + s.slice(1);
    return /[.!?…]$/.test(s) ? s : s + '.';
  }

  const extOfType = {
    'image/png': '.png', 'image/jpeg': '.jpg', 'image/gif': '.gif', 'image/webp': '.webp',
    'image/bmp': '.bmp', 'image/tiff': '.tiff',
  };
  const formatOfExt = { '.png': 'PNG', '.jpg': 'JPEG', '.gif': 'GIF', '.webp': 'WebP', '.bmp': 'BMP', '.tiff': 'TIFF' };

  function typeFromName(name) {
    const m = /\.([A-Za-z0-9]+)$/.exec(name);
    const ext = m ? m[1].toLowerCase() : '';
    return { png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', gif: 'image/gif', webp: 'image/webp',
      bmp: 'image/bmp', tif: 'image/tiff', tiff: 'image/tiff' }[ext] || '';
  }

  // ---- per-task actions

  function actionButton(text, label, onClick, cls = 'secondary small') {
    const b = el('button', { type: 'button', class: cls, text, 'aria-label': label });
    b.addEventListener('click', () => onClick(b));
    return b;
  }

  // renderActions offers what can be done to a task in its state.
  function renderActions(v) {
    const items = [];
    const s = v.state;
    if (s === 'finished' && v.urls) {
      // The server names the download after the upload and the chain (Content-Disposition).
      items.push(el('a', { class: 'button small download', href: v.urls.resultUrl, 'aria-label': 'Download the result of ' + v.name, text: 'Download' }));
      items.push(el('a', { class: 'button secondary small open', href: v.urls.resultUrl + '?download=0', target: '_blank', rel: 'noopener', text: 'Open in new tab', 'aria-label': 'Open in new tab: the result of ' + v.name }));
      items.push(actionButton('Compare', 'Compare the original and the result of ' + v.name, (b) => openCompare(v, b), 'secondary small compare-open'));
    }
    if ((s === 'queued' || s === 'processing') && v.id) items.push(actionButton('Cancel', 'Cancel ' + v.name, () => cancelTask(v), 'secondary small cancel'));
    if ((s === 'failed' || s === 'cancelled') && v.id) items.push(actionButton('Retry', 'Retry ' + v.name, () => retryTask(v), 'secondary small retry'));
    if (v.id && s !== 'uploading' && s !== 'error') items.push(deleteButton(v));
    if (s !== 'uploading') items.push(actionButton('Remove', 'Remove ' + v.name + ' from this list (it stays on the server)', () => removeView(v, true), 'secondary small remove'));
    v.actions.replaceChildren(...items);
  }

  // deleteButton asks once more in place (no dialog): the first press arms it for a few seconds.
  function deleteButton(v) {
    const b = el('button', { type: 'button', class: 'secondary small delete', text: 'Delete', 'aria-label': 'Delete ' + v.name + ' from the server' });
    let armed = null;
    b.addEventListener('click', async () => {
      if (!armed) {
        b.textContent = 'Really delete?';
        b.classList.add('danger');
        b.setAttribute('aria-label', 'Really delete? Press again to delete ' + v.name + ' from the server');
        announce('Press again to delete ' + v.name + ' from the server');
        armed = setTimeout(() => {
          armed = null;
          b.textContent = 'Delete';
          b.classList.remove('danger');
          b.setAttribute('aria-label', 'Delete ' + v.name + ' from the server');
        }, 4000);
        return;
      }
      clearTimeout(armed);
      b.disabled = true;
      const r = await send('DELETE', v.urls.statusUrl);
      if (r.ok || r.status === 404) {
        announce(v.name + ' deleted from the server');
        removeView(v, false);
      } else {
        b.disabled = false;
        setMessage(v, 'Not deleted: ' + sentence(r.error) + (r.retryAfter ? ' Try again in ' + r.retryAfter + ' s.' : ' Try again shortly.'), 'error');
      }
    });
    return b;
  }

  // send makes an API call and answers { ok, status, body, error, retryAfter }.
  async function send(method, url) {
    try {
      const r = await fetch(url, { method, headers: { Accept: 'application/json' }, cache: 'no-store' });
      let body = {};
      try { body = r.status === 204 ? {} : await r.json(); } catch { body = {}; }
      return { ok: r.ok, status: r.status, body, error: body.error || r.statusText, retryAfter: r.headers.get('Retry-After') };
    } catch (err) {
      return { ok: false, status: 0, body: {}, error: 'the server could not be reached (' + err.message + ')' };
    }
  }

  async function cancelTask(v) {
    const r = await send('POST', v.urls.statusUrl + '/cancel');
    if (r.ok) {
      applyStatus(v, r.body);
      unfollow(v.id);
    } else {
      setMessage(v, 'Not cancelled: ' + sentence(r.error), 'error');
    }
  }

  async function retryTask(v) {
    const r = await send('POST', v.urls.statusUrl + '/retry');
    if (r.ok) {
      v.shown = false;
      v.body.replaceChildren();
      applyStatus(v, r.body.state ? r.body : { state: 'queued' });
      follow(v);
      v.focusTarget.focus();
    } else if (r.status === 410) {
      setMessage(v, 'Not retried: the server no longer has the upload. Upload the image again.', 'error');
    } else {
      setMessage(v, 'Not retried: ' + sentence(r.error), 'error');
    }
  }

  // removeView takes a card off the page; forget also takes it off this browser's list.
  function removeView(v, forget) {
    const next = v.li.nextElementSibling || v.li.previousElementSibling;
    if (v.id) unfollow(v.id);
    if (v.xhr) v.xhr.abort();
    const qi = queue.indexOf(v);
    if (qi >= 0) queue.splice(qi, 1);
    for (const u of v.blobUrls) URL.revokeObjectURL(u);
    v.blobUrls = [];
    v.li.remove();
    views.delete(v.key);
    if (v.id) saveHistory(loadHistory().filter((t) => t.id !== v.id));
    if (forget) announce(v.name + ' removed from this list');
    renderHistory();
    summarize();
    // Keep the keyboard in the list: the next card, else the list's status line.
    const target = next && next.querySelector('.task-name');
    (target || els.tasksStatus).focus();
  }

  // ---- results: thumbnails with sizes, and the comparison

  // fetchImage gets a (thumbnail) image as a blob URL with the full image's size, from the
  // X-Image-* headers, or from the image itself when the server sends the full one.
  async function fetchImage(url) {
    const r = await fetch(url);
    if (!r.ok) throw new Error('HTTP ' + r.status);
    const blob = await r.blob();
    const num = (h) => { const n = parseInt(r.headers.get(h), 10); return Number.isFinite(n) ? n : undefined; };
    const width = num('X-Image-Width');
    // Without the headers the server sent the full image: its bytes are the blob's.
    const bytes = num('X-Image-Bytes') ?? (width === undefined ? blob.size : undefined);
    return { url: URL.createObjectURL(blob), width, height: num('X-Image-Height'), bytes };
  }

  const browserShows = (type) => ['image/png', 'image/jpeg', 'image/gif', 'image/webp', 'image/bmp'].includes(type);

  function fmtPixels(w, h) { return w && h ? w + '×' + h : ''; }

  function changeText(from, to) {
    if (!from || !to) return '';
    const pct = Math.round(((to - from) / from) * 100);
    return (pct > 0 ? '+' : pct < 0 ? '−' : '±') + Math.abs(pct) + ' %';
  }

  // showResult shows the finished task's images small, with the pixel size and bytes of both and the
  // change: the original from the local file when this page uploaded it, else a server thumbnail.
  function showResult(v) {
    if (v.shown) return;
    v.shown = true;
    const figure = (caption, alt) => {
      const img = el('img', { alt, decoding: 'async' });
      const cap = el('figcaption', {}, el('strong', { text: caption }));
      const f = el('figure', {}, img, cap);
      f.dataset.caption = caption;
      img.addEventListener('error', () => {
        // A TIFF original, say: not every browser shows every format the server reads.
        img.replaceWith(el('p', { class: 'no-preview hint', text: 'No preview of this image in this browser.' }));
      });
      return { f, img, cap };
    };
    const orig = figure('Original', 'Original: ' + v.name);
    const res = figure('Result', 'Result of ' + v.op + ': ' + v.name);
    orig.f.classList.add('original');
    res.f.classList.add('result');
    v.body.replaceChildren(el('div', { class: 'thumbs' }, orig.f, res.f));
    v.orig = { bytes: v.original ? v.original.size : undefined };
    v.res = {};
    const caption = () => {
      const o = v.orig;
      const r = v.res;
      orig.cap.replaceChildren(el('strong', { text: 'Original' }), ' ' + [fmtPixels(o.width, o.height), fmtSize(o.bytes)].filter(Boolean).join(' · '));
      const change = changeText(o.bytes, r.bytes);
      res.cap.replaceChildren(el('strong', { text: 'Result' }), ' ' + [fmtPixels(r.width, r.height), r.format, fmtSize(r.bytes)].filter(Boolean).join(' · '),
        change ? el('span', { class: 'change', text: ', ' + change }) : '');
      res.f.dataset.size = fmtPixels(r.width, r.height);
      res.f.dataset.format = r.format || '';
      res.f.dataset.bytes = r.bytes === undefined ? '' : String(r.bytes);
      orig.f.dataset.size = fmtPixels(o.width, o.height);
      orig.f.dataset.bytes = o.bytes === undefined ? '' : String(o.bytes);
    };
    const natural = (img, into, onlyIfUnknown) => img.addEventListener('load', () => {
      if (onlyIfUnknown && into.width) return;
      into.width = img.naturalWidth;
      into.height = img.naturalHeight;
      caption();
    });
    // A server thumbnail into fig, with the full image's sizes into sizes.
    const thumbnail = (url, fig, sizes, what) => fetchImage(url + '?w=' + THUMB_WIDTH).then((t) => {
      v.blobUrls.push(t.url);
      Object.assign(sizes, { width: t.width, height: t.height, bytes: sizes.bytes ?? t.bytes });
      natural(fig.img, sizes, true);
      fig.img.src = t.url;
      caption();
    }).catch(() => fig.img.replaceWith(el('p', { class: 'no-preview hint', text: 'No preview of the ' + what + '.' })));
    if (v.original && browserShows(v.inputType)) {
      v.localUrl = v.localUrl || URL.createObjectURL(v.original);
      if (!v.blobUrls.includes(v.localUrl)) v.blobUrls.push(v.localUrl);
      natural(orig.img, v.orig, false);
      orig.img.src = v.localUrl;
    } else {
      thumbnail(v.urls.sourceUrl, orig, v.orig, 'original');
    }
    thumbnail(v.urls.resultUrl, res, v.res, 'result');
    // The result's own Content-Type and length: its format, and its bytes if the thumbnail did not say.
    fetch(v.urls.resultUrl, { method: 'HEAD' }).then((r) => {
      if (!r.ok) return;
      const type = (r.headers.get('Content-Type') || '').split(';')[0].trim().toLowerCase();
      if (extOfType[type]) v.res.format = formatOfExt[extOfType[type]];
      const n = parseInt(r.headers.get('Content-Length'), 10);
      if (Number.isFinite(n) && v.res.bytes === undefined) v.res.bytes = n;
      caption();
    }).catch(() => { /* the caption does without */ });
    caption();
  }

  // The comparison dialog: original and result in one box, at the result's pixel size (the original
  // stretched to it when a resize or crop changed it), the result clipped at a divide the slider moves.
  const cmp = { v: null, opener: null, zoomed: false };

  function openCompare(v, opener) {
    cmp.v = v;
    cmp.opener = opener;
    const before = els.cmpBefore;
    const after = els.cmpAfter;
    before.src = v.localUrl && browserShows(v.inputType) ? v.localUrl : v.urls.sourceUrl;
    after.src = v.urls.resultUrl;
    before.alt = 'Original: ' + v.name;
    after.alt = 'Result of ' + v.op + ': ' + v.name;
    els.cmpTitle.textContent = 'Compare: ' + v.name;
    setZoom(false);
    els.cmpPos.value = '50';
    setDivide();
    const size = () => {
      cmp.w = v.res.width || after.naturalWidth || 1;
      cmp.h = v.res.height || after.naturalHeight || 1;
      layout();
    };
    size();
    after.addEventListener('load', size, { once: true });
    els.cmp.showModal();
    els.cmpPos.focus();
  }

  function layout() {
    const layer = els.cmpLayer;
    layer.style.aspectRatio = cmp.w + ' / ' + cmp.h;
    if (cmp.zoomed) {
      layer.style.width = cmp.w + 'px';
      layer.style.height = cmp.h + 'px';
    } else {
      layer.style.height = '';
      layer.style.width = 'min(100%, ' + cmp.w + 'px, calc(66vh * ' + (cmp.w / cmp.h).toFixed(4) + '))';
    }
  }

  function setZoom(on) {
    cmp.zoomed = on;
    els.cmpStage.classList.toggle('zoomed', on);
    els.cmpZoom.setAttribute('aria-pressed', String(on));
    els.cmpZoom.textContent = on ? 'Fit to window' : 'Zoom to 100 %';
    if (cmp.w) layout();
    if (on) {
      // Start at the middle of the image, where the divide is.
      const s = els.cmpStage;
      s.scrollLeft = (s.scrollWidth - s.clientWidth) / 2;
      s.scrollTop = (s.scrollHeight - s.clientHeight) / 2;
    }
  }

  function setDivide() {
    const pos = Number(els.cmpPos.value);
    els.cmpAfter.style.clipPath = 'inset(0 0 0 ' + pos + '%)';
    els.cmpDivide.style.left = pos + '%';
    els.cmpPos.setAttribute('aria-valuetext', pos + ' % original, ' + (100 - pos) + ' % result');
  }

  function initCompare() {
    els.cmpPos.addEventListener('input', setDivide);
    els.cmpZoom.addEventListener('click', () => setZoom(!cmp.zoomed));
    els.cmpClose.addEventListener('click', () => els.cmp.close());
    els.cmp.addEventListener('close', () => {
      els.cmpBefore.removeAttribute('src');
      els.cmpAfter.removeAttribute('src');
      if (cmp.opener && cmp.opener.isConnected) cmp.opener.focus();
      cmp.v = null;
    });
    // Pan at 100 %: drag with a pointer; the stage scrolls by itself with the arrow keys and the wheel.
    const stage = els.cmpStage;
    let drag = null;
    stage.addEventListener('pointerdown', (e) => {
      if (!cmp.zoomed) return;
      drag = { x: e.clientX, y: e.clientY, left: stage.scrollLeft, top: stage.scrollTop };
      stage.setPointerCapture(e.pointerId);
      stage.classList.add('dragging');
    });
    stage.addEventListener('pointermove', (e) => {
      if (!drag) return;
      stage.scrollLeft = drag.left - (e.clientX - drag.x);
      stage.scrollTop = drag.top - (e.clientY - drag.y);
    });
    const end = () => { drag = null; stage.classList.remove('dragging'); };
    stage.addEventListener('pointerup', end);
    stage.addEventListener('pointercancel', end);
    stage.addEventListener('keydown', (e) => {
      if (!cmp.zoomed) return;
      const step = e.shiftKey ? 200 : 40;
      const d = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] }[e.key];
      if (!d) return;
      e.preventDefault();
      stage.scrollBy(d[0], d[1]);
    });
  }

  // ---- status: one event stream for every task the page follows, polling as the fallback ----------
  //
  // Browsers open at most 6 HTTP/1.1 connections to a site: a stream per task would hold them all and
  // make uploads wait. The page opens one stream, GET /api/events?ids=..., and opens it again (a
  // moment later, so that a batch of uploads makes one reopen) when it follows more tasks. Where there
  // is no such endpoint, or it keeps failing, it polls the tasks one after another: one connection too.

  const hub = { ids: new Set(), es: null, timer: null, mode: 'EventSource' in window ? 'stream' : 'poll', failures: 0, polling: false };

  function follow(v) {
    if (!v.id || isTerminal(v.state)) return;
    hub.ids.add(v.id);
    // Close the old stream now, not when the new one opens: the server has seen it go by then, so the
    // page never holds two. The new one starts with every task's status, so nothing is missed.
    if (hub.es) hub.es.close();
    hub.es = null;
    schedule(REOPEN_DELAY);
  }

  // unfollow stops following id; the stream is reopened without it only when nothing else changes it.
  function unfollow(id) {
    if (!hub.ids.delete(id)) return;
    if (!hub.ids.size) stopStream();
  }

  function stopStream() {
    clearTimeout(hub.timer);
    if (hub.es) hub.es.close();
    hub.es = null;
  }

  function schedule(delay) {
    clearTimeout(hub.timer);
    hub.timer = setTimeout(openStream, delay);
  }

  function openStream() {
    if (hub.es) hub.es.close();
    hub.es = null;
    if (!hub.ids.size) return;
    if (hub.mode === 'poll') {
      startPolling();
      return;
    }
    const url = '/api/events?ids=' + Array.from(hub.ids).slice(0, MAX_IDS).map(encodeURIComponent).join(',');
    const es = new EventSource(url);
    hub.es = es;
    let opened = false;
    es.addEventListener('open', () => { opened = true; hub.failures = 0; });
    es.addEventListener('status', (e) => {
      let st;
      try { st = JSON.parse(e.data); } catch { return; }
      const v = st && views.get(st.id);
      if (!v) return;
      applyStatus(v, st);
      if (isTerminal(st.state)) hub.ids.delete(st.id);
    });
    es.addEventListener('error', (e) => {
      if (hub.es !== es) return;
      if (e.data) {
        // The server's word on one task: unknown or deleted. The stream goes on without it.
        let d = {};
        try { d = JSON.parse(e.data); } catch { /* keep {} */ }
        const v = d.id && views.get(d.id);
        if (v) gone(v, d.error);
        else if (d.id) hub.ids.delete(d.id);
        return;
      }
      // The stream ended (every task settled, or the server's time limit) or never opened.
      es.close();
      hub.es = null;
      if (!hub.ids.size) return;
      if (opened) {
        schedule(1000);
        return;
      }
      hub.failures++;
      probe(url).then((status) => {
        // No such endpoint (an older server), or it keeps failing (429: too many streams): poll.
        if (status === 404 || status === 405 || hub.failures >= 3) hub.mode = 'poll';
        schedule(hub.mode === 'poll' ? 0 : 1000 * 2 ** hub.failures);
      });
    });
  }

  // probe answers the HTTP status of url (0 when unreachable), without waiting for its body.
  async function probe(url) {
    const ac = new AbortController();
    try {
      const r = await fetch(url, { signal: ac.signal, cache: 'no-store' });
      ac.abort();
      return r.status;
    } catch {
      return 0;
    }
  }

  async function startPolling() {
    if (hub.polling) return;
    hub.polling = true;
    let delay = 500;
    while (hub.ids.size) {
      let failed = false;
      for (const id of Array.from(hub.ids)) {
        const v = views.get(id);
        if (!v) { hub.ids.delete(id); continue; }
        try {
          const r = await fetch(v.urls.statusUrl, { headers: { Accept: 'application/json' }, cache: 'no-store' });
          if (r.status === 404) {
            gone(v);
          } else if (r.ok) {
            const st = await r.json();
            if (hub.ids.has(id)) applyStatus(v, st);
            if (isTerminal(st.state)) hub.ids.delete(id);
          } else {
            failed = true;
          }
        } catch {
          failed = true;
        }
      }
      delay = failed ? Math.min(delay * 2, 10000) : 1000;
      await new Promise((r) => setTimeout(r, delay));
    }
    hub.polling = false;
  }

  // ---- uploads -------------------------------------------------------------------------------------

  const queue = [];
  let active = 0;
  let limits = {};

  function showUploadError(text) {
    els.uploadError.textContent = text;
    els.uploadError.hidden = !text;
  }

  // chainProblem says why the chain must not be sent, or ''.
  function chainProblem() {
    const { problems } = splitSpec(els.spec.value);
    if (operationsLoaded && problems.length) return 'Not uploaded: ' + problems.join('; ') + '. Fix the operation list (see All operations), then choose the images again.';
    const bytes = new TextEncoder().encode(currentSpec()).length;
    if (limits.maxChainLength && bytes > limits.maxChainLength) {
      return 'Not uploaded: the operation list is ' + bytes + ' bytes long, the server takes up to ' + limits.maxChainLength +
        '. Remove some steps, then choose the images again.';
    }
    return '';
  }

  function addFiles(fileList) {
    const files = Array.from(fileList || []);
    if (!files.length) return;
    const problem = chainProblem();
    if (problem) {
      showUploadError(problem);
      announce(problem);
      els.builder.open = true;
      els.spec.setAttribute('aria-invalid', 'true');
      return;
    }
    showUploadError('');
    const op = currentSpec() || 'swap';
    let first = null;
    let sending = 0;
    for (const file of files) {
      const v = newView(file.name || 'image', op, fmtSize(file.size));
      first = v;
      v.original = file;
      v.inputType = file.type || typeFromName(file.name || '');
      if (limits.maxUploadBytes && file.size > limits.maxUploadBytes) {
        v.progress.hidden = true;
        // Rounded alike ("6.0 MB, up to 6.0 MB"), the sizes say nothing: then in bytes.
        const same = fmtSize(file.size) === fmtSize(limits.maxUploadBytes);
        const size = (n) => (same ? n.toLocaleString() + ' bytes' : fmtSize(n));
        setState(v, 'refused', { text: 'Too big: ' + size(file.size) + ', the server takes up to ' + size(limits.maxUploadBytes) +
          '. Scale it down or choose a smaller image. Not sent.', kind: 'error' });
        renderActions(v);
        continue;
      }
      // One key for every attempt of this upload: a retry whose first answer was lost creates nothing.
      v.idemKey = randomKey();
      v.retries = 0;
      setState(v, 'uploading');
      v.progress.value = 0;
      queue.push(v);
      sending++;
    }
    // The newest cards are first in the list: show them, and take the keyboard there.
    const reduce = window.matchMedia('(prefers-reduced-motion: reduce)').matches;
    first.li.scrollIntoView({ behavior: reduce ? 'auto' : 'smooth', block: 'nearest' });
    els.tasksStatus.focus({ preventScroll: true });
    announce(sending === files.length
      ? (files.length === 1 ? 'Uploading ' + files[0].name : files.length + ' images uploading')
      : sending + ' of ' + files.length + ' images uploading; the others are too big');
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
      form.append('file', v.original, v.original.name); // the spec goes in the query
      const xhr = new XMLHttpRequest();
      v.xhr = xhr;
      xhr.open('POST', '/api/tasks?op=' + encodeURIComponent(v.op)); // the name is the file part's
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.setRequestHeader('Idempotency-Key', v.idemKey);
      xhr.upload.addEventListener('progress', (e) => {
        if (e.lengthComputable) v.progress.value = Math.round((e.loaded / e.total) * 100);
      });
      xhr.addEventListener('load', () => {
        v.xhr = null;
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
        v.xhr = null;
        refused(v, 0, 'the network request failed');
        resolve();
      });
      xhr.addEventListener('abort', () => {
        v.xhr = null;
        v.aborted = true;
        resolve();
      });
      xhr.send(form);
    });
  }

  function accepted(v, body) {
    v.progress.value = 100;
    v.progress.setAttribute('aria-label', 'Progress of ' + v.name);
    bindId(v, body.id, urlsOf(body));
    remember({ id: body.id, name: v.name, op: v.op, type: v.inputType, created: Date.now(), state: 'queued', ...v.urls });
    applyStatus(v, { state: body.state || body.status || 'queued' });
    follow(v);
  }

  // randomKey is 128 random bits in hex, an upload's Idempotency-Key.
  function randomKey() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }

  // Answers that mean "come back later": the page retries them by itself, as the server's
  // Retry-After says (at least an exponential backoff), up to AUTO_RETRIES times.
  const AUTO_RETRIES = 10;
  const transientStatus = (status) => status === 0 || status === 429 || status === 502 || status === 503 || status === 504 || status === 507;

  // refused says why an upload was not taken (the reason first, then what to do) and, when it is
  // worth it, sends it again.
  function refused(v, status, msg, retryAfter) {
    v.progress.hidden = true;
    const reason = sentence(msg);
    let text;
    let retryIn = 0;
    // The server's messages say the reason and then what to do: they are shown as they are, and the
    // page adds its own advice only when the server said nothing.
    switch (status) {
      case 400:
        text = reason || 'The server refused the upload. Check the operation list, then choose the image again.';
        showSpecError(v.op, msg || 'bad request');
        break;
      case 413:
        text = reason || 'Too big for the server. Make it smaller (fewer pixels, or saved as JPEG) and choose it again.';
        break;
      case 415:
        text = reason || 'Not an image the server reads. Save it as PNG or JPEG, then choose it again.';
        break;
      case 422:
        text = reason || 'The image is too costly to decode. Save it again as PNG or JPEG, then choose it again.';
        break;
      case 429:
        retryIn = Math.max(1, parseInt(retryAfter, 10) || 1);
        text = (reason || 'Too many uploads right now.') + ' Wait ' + retryIn + ' s, then retry.';
        break;
      case 502:
      case 503:
      case 504:
      case 507:
        retryIn = parseInt(retryAfter, 10) || 0;
        text = (reason || 'The service is busy or unavailable.');
        break;
      case 0:
        text = 'The upload did not reach the server (' + msg + ').';
        break;
      default:
        text = (reason || 'The server refused the upload (' + status + ').');
    }
    const transient = transientStatus(status);
    if (transient && status !== 429 && !v.aborted && v.retries < AUTO_RETRIES) {
      // Wait as the server asked, and at least 1, 2, 4 ... 30 s, then send it again by itself.
      v.retries++;
      const wait = Math.min(60, Math.max(retryIn, Math.min(30, 2 ** (v.retries - 1))));
      setState(v, 'waiting', { text: text + ' Retrying by itself in ' + wait + ' s (attempt ' + (v.retries + 1) + ').', kind: 'warn' });
      announce(v.name + ': ' + text + ' Retrying in ' + wait + ' s.');
      offerRetry(v, wait, true);
      return;
    }
    if (transient && status !== 429) text += ' Retry' + (retryIn ? ' in ' + retryIn + ' s.' : ' shortly.');
    setState(v, 'refused', { text, kind: transient ? 'warn' : 'error' });
    announce(v.name + ': ' + text);
    if (transient) offerRetry(v, retryIn, false);
    else renderActions(v);
  }

  // offerRetry adds a Retry button. Without auto, it is disabled (with a countdown) while the server
  // asked us to wait; with auto, it says "Retry now" and the upload is sent again by itself when the
  // countdown ends.
  function offerRetry(v, wait, auto) {
    const btn = el('button', { type: 'button', class: 'secondary small' });
    let left = wait;
    let sent = false;
    const send = () => {
      if (sent || !v.li.isConnected) return;
      sent = true;
      queue.push(v);
      v.body.replaceChildren();
      setState(v, 'uploading', { text: 'Waiting to upload…' });
      pump();
    };
    const tick = () => {
      if (sent) return;
      if (auto) {
        btn.textContent = 'Retry now';
        if (left <= 0) { send(); return; }
        left--;
        setTimeout(tick, 1000);
      } else if (left > 0) {
        btn.disabled = true;
        btn.textContent = 'Retry in ' + left + ' s';
        left--;
        setTimeout(tick, 1000);
      } else {
        btn.disabled = false;
        btn.textContent = 'Retry';
      }
    };
    tick();
    btn.addEventListener('click', send);
    v.actions.replaceChildren(btn, actionButton('Remove', 'Remove ' + v.name + ' from this list', () => removeView(v, true), 'secondary small remove'));
  }

  // loadLimits shows what the server takes, before anything is sent (nothing, from a server that
  // does not say).
  async function loadLimits() {
    try {
      const r = await fetch('/api/limits', { headers: { Accept: 'application/json' } });
      if (!r.ok) return;
      limits = await r.json();
    } catch {
      return;
    }
    const parts = [];
    if (limits.maxUploadBytes) parts.push('up to ' + fmtSize(limits.maxUploadBytes));
    if (limits.maxPixels) parts.push(+(limits.maxPixels / 1e6).toFixed(1) + ' megapixels');
    els.limits.textContent = parts.length ? 'Images of ' + parts.join(' and ') + '.' : '';
  }

  // ---- wiring --------------------------------------------------------------------------------------

  function init() {
    for (const e of document.querySelectorAll('.js-only')) e.hidden = false;
    for (const e of document.querySelectorAll('.origin')) e.textContent = location.origin;
    els.tasksSection.hidden = true;
    // On a phone the drop zone comes first and the builder is folded below it.
    if (!window.matchMedia('(min-width: 900px)').matches) els.builder.open = false;

    els.opPick.addEventListener('change', renderParams);
    els.stepForm.addEventListener('submit', addStep);
    els.chain.addEventListener('click', chainClicked);
    els.chainClear.addEventListener('click', () => {
      setSteps([]);
      announce('Steps cleared: the default is swap');
      els.opPick.focus();
    });
    els.spec.addEventListener('input', () => specEdited(false));
    els.spec.addEventListener('change', () => specEdited(true));
    try { els.spec.value = localStorage.getItem(SPEC_KEY) || ''; } catch { /* none saved */ }
    specEdited(false);
    renderParams();
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
    // A pasted image (a screenshot, say) uploads as a dropped one; pasted text stays text.
    document.addEventListener('paste', (e) => {
      const files = Array.from((e.clipboardData && e.clipboardData.files) || []).filter((f) => f.type.startsWith('image/'));
      if (!files.length) return;
      e.preventDefault();
      addFiles(files);
    });

    els.historyClear.addEventListener('click', () => {
      saveHistory([]);
      renderHistory();
      announce('List of earlier tasks cleared');
      els.files.focus();
    });
    window.addEventListener('storage', (e) => { if (e.key === HISTORY_KEY) renderHistory(); });

    initCompare();
    renderHistory();
    loadOperations();
    loadLimits();
  }

  init();
})();
