// imgmill upload page: plain JavaScript, no build step, no dependencies. It speaks the frontend's JSON
// API (/api/operations, /api/tasks, /api/tasks/{id}[/events|/result|/source]) and remembers this
// browser's tasks in localStorage. Served from /assets/ under a strict CSP: no inline code anywhere.
'use strict';

(() => {
  const HISTORY_KEY = 'imgmill.tasks.v1';
  const MAX_HISTORY = 50;
  const PARALLEL_UPLOADS = 3;

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
      ? 'Check the list: ' + problems.join('; ') + '. The server will say what it refuses.' : '';
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
      if (Array.isArray(body.operations) && body.operations.length) operations = body.operations;
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
    const v = { key, name, op, extra, id: null, urls: null, state: null, stopWatch: null, inputType: '' };
    v.badge = el('span', { class: 'badge' });
    v.title = el('h3', { class: 'task-name', id: titleId, text: name, tabindex: '-1' });
    v.meta = el('p', { class: 'task-meta' });
    renderMeta(v);
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

  function renderMeta(v) {
    v.meta.replaceChildren(el('code', { class: 'op', title: 'Operations', text: v.op }), v.extra ? ' · ' + v.extra : '',
      v.expires ? ' · kept until ' + fmtTime(v.expires) : '');
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
    const v = newView(t.name || 'image', t.op || 'swap', fmtTime(t.created));
    v.inputType = t.type || typeFromName(t.name || '');
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
    } else if (st.state === 'cancelled') {
      v.progress.hidden = true;
      setMessage(v, 'Cancelled.');
    }
    if (before !== st.state) {
      announce(v.name + ': ' + (stateWords[st.state] || st.state).toLowerCase() +
        (st.state === 'failed' && st.error ? ', ' + st.error : ''));
      if (v.id) updateRemembered(v.id, { state: st.state });
    }
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

  // guessExt is the result's extension before the server says: convert's format, else a JPEG stays
  // JPEG and everything else becomes PNG.
  function guessExt(op, inputType) {
    const m = /(?:^|,)\s*convert\s*:\s*(png|jpe?g)\b/i.exec(op || '');
    if (m) return m[1].toLowerCase() === 'png' ? '.png' : '.jpg';
    return inputType === 'image/jpeg' ? '.jpg' : '.png';
  }

  // fileSlug turns a spec into something fit for a file name: resize:800x600,grayscale ->
  // resize-800x600_grayscale.
  function fileSlug(op) {
    return String(op || 'swap').replace(/\s+/g, '').replace(/,/g, '_').replace(/:/g, '-')
      .replace(/[^A-Za-z0-9._+-]+/g, '').slice(0, 80) || 'swap';
  }

  function showResult(v) {
    if (v.shown) return;
    v.shown = true;
    const base = v.name.replace(/\.[A-Za-z0-9]+$/, '') || 'image';
    const download = el('a', { class: 'button download', href: v.urls.resultUrl, text: 'Download result' });
    const setExt = (ext) => { download.setAttribute('download', base + '-' + fileSlug(v.op) + ext); };
    setExt(guessExt(v.op, v.inputType));
    const fig = (caption, src, alt) => {
      const cap = el('figcaption', { text: caption });
      const img = el('img', { src, alt, decoding: 'async' });
      const f = el('figure', {}, cap, img);
      f.dataset.caption = caption;
      img.addEventListener('load', () => {
        f.dataset.width = String(img.naturalWidth);
        f.dataset.height = String(img.naturalHeight);
        f.dataset.size = img.naturalWidth + '×' + img.naturalHeight;
        cap.textContent = [caption, f.dataset.size, f.dataset.format].filter(Boolean).join(' · ');
      });
      img.addEventListener('error', () => {
        // A TIFF original, say: not every browser shows every format the server reads.
        img.replaceWith(el('p', { class: 'no-preview hint', text: 'No preview of this image in this browser.' }));
      });
      return f;
    };
    const original = fig('Original', v.urls.sourceUrl, 'Original: ' + v.name);
    const result = fig('Result', v.urls.resultUrl, 'Result of ' + v.op + ': ' + v.name);
    v.body.replaceChildren(
      el('div', { class: 'compare' }, original, result),
      el('div', { class: 'actions' }, download,
        el('a', { class: 'button secondary', href: v.urls.resultUrl + '?download=0', target: '_blank', rel: 'noopener', text: 'Open in new tab' })));
    // The result's Content-Type says its format (and so the download's extension) for sure.
    fetch(v.urls.resultUrl, { method: 'HEAD', cache: 'no-store' }).then((r) => {
      const type = (r.ok && (r.headers.get('Content-Type') || '').split(';')[0].trim().toLowerCase()) || '';
      const ext = extOfType[type];
      if (!ext) return;
      setExt(ext);
      download.dataset.type = type;
      result.dataset.format = formatOfExt[ext];
      const cap = result.querySelector('figcaption');
      cap.textContent = [result.dataset.caption, result.dataset.size, result.dataset.format].filter(Boolean).join(' · ');
    }).catch(() => { /* keep the guess */ });
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
    const op = currentSpec() || 'swap';
    for (const file of files) {
      const v = newView(file.name || 'image', op, fmtSize(file.size));
      v.file = file;
      // One key for every attempt of this upload: a retry whose first answer was lost creates nothing.
      v.key = randomKey();
      v.retries = 0;
      v.inputType = file.type || typeFromName(file.name || '');
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
      form.append('file', v.file, v.file.name); // the spec goes in the query
      const xhr = new XMLHttpRequest();
      xhr.open('POST', '/api/tasks?op=' + encodeURIComponent(v.op));
      xhr.setRequestHeader('Accept', 'application/json');
      xhr.setRequestHeader('Idempotency-Key', v.key);
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
        v.aborted = true;
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
    remember({ id: body.id, name: v.name, op: v.op, type: v.inputType, created: Date.now(), state: 'queued', ...v.urls });
    applyStatus(v, { state: body.state || 'queued' });
    watch(v);
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

  function refused(v, status, msg, retryAfter) {
    v.progress.hidden = true;
    let text;
    let retryIn = 0;
    switch (status) {
      case 400:
        // The spec, most likely: the server names what it refuses.
        text = 'Refused: ' + (msg || 'bad request') + '.';
        showSpecError(v.op, msg || 'bad request');
        break;
      case 413:
        text = 'Too big: ' + v.name + ' is ' + fmtSize(v.file.size) + ', more than the server accepts' + (msg ? ' (' + msg + ')' : '') + '.';
        break;
      case 415:
        text = 'Not an image the server can read: use PNG, JPEG, GIF, WebP, BMP or TIFF' + (msg ? ' (' + msg + ')' : '') + '.';
        break;
      case 429: {
        retryIn = Math.max(1, parseInt(retryAfter, 10) || 1);
        text = 'Too many uploads right now: wait ' + retryIn + ' s, then retry.';
        break;
      }
      case 502:
      case 503:
      case 504:
        retryIn = parseInt(retryAfter, 10) || 0;
        text = 'The service is busy or unavailable' + (msg ? ' (' + msg + ')' : '') + '.';
        break;
      case 507:
        retryIn = parseInt(retryAfter, 10) || 0;
        text = 'The server is out of space for now' + (msg ? ' (' + msg + ')' : '') + '.';
        break;
      case 0:
        text = 'Upload failed: ' + msg + '.';
        break;
      default:
        text = 'Refused (' + status + '): ' + (msg || 'unknown error') + '.';
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
    if (transient && status !== 429) text += ' Please try again' + (retryIn ? ' in ' + retryIn + ' s' : ' shortly') + '.';
    setState(v, 'refused', { text, kind: transient ? 'warn' : 'error' });
    announce(v.name + ': ' + text);
    if (transient) offerRetry(v, retryIn, false);
  }

  // offerRetry adds a Retry button. Without auto, it is disabled (with a countdown) while the server
  // asked us to wait; with auto, it says "Retry now" and the upload is sent again by itself when the
  // countdown ends.
  function offerRetry(v, wait, auto) {
    const btn = el('button', { type: 'button', class: 'secondary small' });
    let left = wait;
    let sent = false;
    const send = () => {
      if (sent) return;
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
    v.body.replaceChildren(el('div', { class: 'actions' }, btn));
  }

  // ---- wiring --------------------------------------------------------------------------------------

  function init() {
    for (const e of document.querySelectorAll('.js-only')) e.hidden = false;
    for (const e of document.querySelectorAll('.origin')) e.textContent = location.origin;
    els.tasksSection.hidden = true;

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
