// webqwen chat: an offline-capable chat app on top of the webqwen package. No framework,
// no build step: plain ES modules, served as they are.

import * as db from './db.js';

// Where the webqwen package lives, relative to this file. In the repository the app is
// www/app/ and pkg-build.sh writes the package to pkg/ at the root. This is the one line
// to change when the app is deployed next to a copy of the package.
const PACKAGE_URL = new URL('../../pkg/index.js', import.meta.url);

const PRESETS = [
  { id: 'Qwen/Qwen3-0.6B-MLX-4bit', name: 'Qwen3 0.6B', detail: '4-bit · ≈ 0.35 GB · fastest' },
  { id: 'Qwen/Qwen3-1.7B-MLX-4bit', name: 'Qwen3 1.7B', detail: '4-bit · ≈ 1 GB · balanced' },
  { id: 'Qwen/Qwen3-4B-MLX-4bit', name: 'Qwen3 4B', detail: '4-bit · ≈ 2.3 GB · best answers, recent devices' },
];
const CUSTOM = 'custom';
const HUB_ORIGIN = 'https://huggingface.co'; // where the presets and typed repo ids come from

// Qwen3's recommended sampling for each mode (generation_config.json has the thinking one).
const SAMPLING = {
  thinking: { temperature: 0.6, top_p: 0.95, top_k: 20 },
  direct: { temperature: 0.7, top_p: 0.8, top_k: 20 },
};

const params = new URLSearchParams(location.search);
// A model (`?model=`) and/or hub (`?endpoint=`, e.g. a mirror) named by the link that opened
// the app. Anyone can make such a link, so it is loaded only once the user has seen the
// model id and the origin its files (weights, tokenizer, chat template) come from, and
// agreed; it never changes what presets or other models load from.
const LINK_REQUEST = params.has('model') || params.has('endpoint')
  ? { model: params.get('model') || null, endpoint: params.get('endpoint') || null }
  : null;
// Sampling fixed from the URL (`?temperature=0&max_tokens=64&seed=1`): reproducible answers
// for comparing models and devices, and for the tests.
const URL_SAMPLING = Object.fromEntries(['temperature', 'top_p', 'top_k', 'min_p', 'presence_penalty', 'max_tokens', 'seed']
  .filter((k) => params.has(k) && Number.isFinite(Number(params.get(k))))
  .map((k) => [k, Number(params.get(k))]));

const $ = (id) => document.getElementById(id);
const ui = {
  body: document.body,
  modelsBtn: $('models-btn'),
  sidebar: $('sidebar'),
  scrim: $('scrim'),
  status: $('model-status').querySelector('.label'),
  statusOrigin: $('model-status').querySelector('.origin'),
  loadedFrom: $('loaded-from'),
  confirm: $('confirm-load'),
  newChat: $('new-chat'),
  options: $('model-options'),
  custom: $('custom-model'),
  loadBtn: $('load-btn'),
  progress: $('progress'),
  progressFill: $('progress-fill'),
  progressText: $('progress-text'),
  cachedList: $('cached-list'),
  storageHint: $('storage-hint'),
  notice: $('notice'),
  empty: $('empty'),
  messages: $('messages'),
  chat: $('chat'),
  form: $('composer'),
  input: $('input'),
  send: $('send'),
  stop: $('stop'),
  thinking: $('thinking'),
  speed: $('speed'),
};

const state = {
  webqwen: null,
  engine: null,
  engineModel: null,
  loadAbort: null,
  genAbort: null,
  messages: [], // {role: 'user'|'assistant', content, reasoning?, meta?, error?}
  cached: [],
};

// ---------------------------------------------------------------------------------------
// Start-up

init().catch((e) => {
  console.error(e);
  showNotice('Something went wrong', e?.message || String(e));
});

async function init() {
  registerServiceWorker();
  renderPresets();
  ui.thinking.checked = localStorage.getItem('webqwen.thinking') !== 'off';
  bindEvents();

  const saved = await db.load('conversation');
  if (Array.isArray(saved?.messages)) state.messages = saved.messages;
  renderMessages();

  const last = lastModel();
  setSelectedModel(last?.endpoint ? PRESETS[0].id : last?.model || PRESETS[0].id);

  if (!navigator.gpu) {
    setEngineState('error', 'WebGPU unavailable');
    showNotice('WebGPU is not available in this browser',
      'This app runs the model on your GPU through WebGPU. Use Safari 26 or newer on iPhone, iPad or Mac, ' +
      'or a recent Chrome or Edge. In Safari on older systems, WebGPU may be under Settings › Safari › Advanced › Feature Flags.');
    ui.loadBtn.disabled = true;
  }

  try {
    state.webqwen = await import(PACKAGE_URL.href);
  } catch (e) {
    console.error(e);
    showNotice('The webqwen package could not be loaded',
      `Tried ${PACKAGE_URL.href}. Build it with ./pkg-build.sh, or serve the app next to a copy of the package. (${e?.message || e})`);
    ui.loadBtn.disabled = true;
    return;
  }
  await refreshCached();

  // A model named by the link is loaded only when the user agrees. Otherwise load on open
  // the last one used once it is fully downloaded from where it was loaded from (that makes
  // the installed app usable offline straight away).
  if (LINK_REQUEST && navigator.gpu) {
    const request = await confirmLinkRequest(LINK_REQUEST, last);
    forgetLinkRequest();
    if (request) {
      loadModel(request.model, request.endpoint);
      return;
    }
  }
  const cached = last && state.cached.find((m) => sameSource(m, last) && m.complete);
  if (cached && navigator.gpu) loadModel(cached.model, cached.endpoint);
  else if (!state.engine && matchMedia('(max-width: 899px)').matches && !state.messages.length) openDrawer();
}

/** The model loaded last: {model, endpoint (null: a URL model or huggingface.co)}. */
function lastModel() {
  const model = localStorage.getItem('webqwen.model');
  return model ? { model, endpoint: localStorage.getItem('webqwen.endpoint') || null } : null;
}

/** Whether a cached entry holds `want` ({model, endpoint}) from the same source. */
function sameSource(entry, want) {
  if (!entry.model || entry.model !== want.model) return false;
  try {
    return entry.endpoint === state.webqwen.resolveModel(want.model, { endpoint: want.endpoint ?? undefined }).endpoint;
  } catch {
    return false;
  }
}

function isOfficial(entry) {
  return entry.endpoint != null && entry.origin === HUB_ORIGIN;
}

/**
 * Shows what the link asks to load (model id, and the origin its files come from) and waits
 * for the user: resolves to {model, endpoint} when they choose to load it, else null.
 * Without `?model=`, `?endpoint=` asks about the last used model (or the first preset).
 */
async function confirmLinkRequest(request, last) {
  const model = request.model || (last && !last.endpoint ? last.model : PRESETS[0].id);
  let where;
  try {
    where = state.webqwen.resolveModel(model, { endpoint: request.endpoint ?? undefined });
  } catch (e) {
    showNotice('The link names a model that cannot be loaded', e?.message || String(e));
    return null;
  }
  const d = ui.confirm;
  d.querySelector('.confirm-model').textContent = where.model;
  d.querySelector('.confirm-origin').textContent = where.origin;
  d.querySelector('.confirm-warning').hidden = where.official;
  d.classList.toggle('foreign', !where.official);
  d.returnValue = '';
  const answer = new Promise((resolve) => d.addEventListener('close', () => resolve(d.returnValue), { once: true }));
  d.showModal();
  d.querySelector('.confirm-cancel').focus();
  return (await answer) === 'load' ? { model: where.model, endpoint: where.endpoint } : null;
}

/** Drops ?model= and ?endpoint= from the address, so a reload does not ask again. */
function forgetLinkRequest() {
  const url = new URL(location.href);
  url.searchParams.delete('model');
  url.searchParams.delete('endpoint');
  history.replaceState(history.state, '', url);
}

function registerServiceWorker() {
  if (!('serviceWorker' in navigator) || location.protocol === 'file:') return;
  // The worker must control the package's files too, the engine worker's own imports
  // included, and a service worker controls only the folders under its scope. When the
  // package lies outside the app's folder (as in the repository: pkg/ and www/app/), the
  // scope has to be their common parent, which the server must allow by sending
  // `Service-Worker-Allowed` with sw.js. Without that the app still installs, but opens
  // offline only if the browser's HTTP cache happens to hold the package.
  const appDir = new URL('./', import.meta.url).href;
  const pkgDir = new URL('./', PACKAGE_URL).href;
  const scope = commonFolder(appDir, pkgDir);
  const script = new URL(`sw.js?pkg=${encodeURIComponent(pkgDir)}`, import.meta.url).href;
  navigator.serviceWorker.register(script, { scope }).catch((e) => {
    if (scope === appDir) throw e;
    console.warn(`webqwen app: the package (${pkgDir}) is outside the app's folder; serve sw.js with ` +
      `"Service-Worker-Allowed: ${new URL(scope).pathname}" or put the package inside the app's folder, ` +
      'or the app will not open offline.', e);
    return navigator.serviceWorker.register(script, { scope: appDir });
  }).catch((e) => {
    console.warn('webqwen app: no offline support (service worker registration failed)', e);
  });
}

function commonFolder(a, b) {
  const x = new URL(a);
  const y = new URL(b);
  if (x.origin !== y.origin) return a;
  const p = x.pathname.split('/');
  const q = y.pathname.split('/');
  let i = 0;
  while (i < p.length - 1 && i < q.length - 1 && p[i] === q[i]) i++;
  return new URL(p.slice(0, i).join('/') + '/', x).href;
}

function bindEvents() {
  ui.modelsBtn.addEventListener('click', () => (ui.sidebar.classList.contains('open') ? closeDrawer() : openDrawer()));
  ui.scrim.addEventListener('click', closeDrawer);
  document.addEventListener('keydown', (e) => { if (e.key === 'Escape') closeDrawer(); });
  ui.newChat.addEventListener('click', newChat);
  ui.options.addEventListener('change', () => {
    ui.custom.hidden = selectedOption() !== CUSTOM;
    if (!ui.custom.hidden) ui.custom.focus();
    updateLoadButton();
  });
  ui.custom.addEventListener('input', updateLoadButton);
  ui.custom.addEventListener('keydown', (e) => { if (e.key === 'Enter') ui.loadBtn.click(); });
  // The confirmation's buttons close it with their value; Escape closes it with ''.
  ui.confirm.querySelector('.confirm-load').addEventListener('click', () => ui.confirm.close('load'));
  ui.confirm.querySelector('.confirm-cancel').addEventListener('click', () => ui.confirm.close('cancel'));
  ui.loadBtn.addEventListener('click', () => {
    if (state.loadAbort) {
      state.loadAbort.abort();
      return;
    }
    const model = selectedModel();
    if (model) loadModel(model);
  });
  ui.form.addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  ui.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  ui.input.addEventListener('input', () => {
    autosize();
    ui.send.disabled = !canSend();
  });
  ui.stop.addEventListener('click', () => state.genAbort?.abort());
  ui.thinking.addEventListener('change', () => localStorage.setItem('webqwen.thinking', ui.thinking.checked ? 'on' : 'off'));
  // Keep a half-streamed answer when the page goes away (iOS kills background tabs).
  addEventListener('pagehide', saveConversation);
  document.addEventListener('visibilitychange', () => { if (document.hidden) saveConversation(); });
}

// ---------------------------------------------------------------------------------------
// Models

function renderPresets() {
  ui.options.replaceChildren();
  for (const p of [...PRESETS, { id: CUSTOM, name: 'Other model', detail: 'Hugging Face repo id or URL' }]) {
    const label = el('label', { class: 'model-option' });
    const input = el('input', { type: 'radio', name: 'model', value: p.id });
    const text = el('span', {}, [el('span', { class: 'name' }, p.name), el('small', {}, p.detail)]);
    label.append(input, text);
    ui.options.append(label);
  }
}

function markCachedPresets() {
  for (const label of ui.options.querySelectorAll('.model-option')) {
    label.querySelector('.badge')?.remove();
    const id = label.querySelector('input').value;
    const entry = state.cached.find((m) => m.model === id && isOfficial(m));
    if (entry) label.append(el('span', { class: `badge${entry.complete ? '' : ' partial'}` }, entry.complete ? 'Downloaded' : 'Partial'));
  }
}

function selectedOption() {
  return ui.options.querySelector('input:checked')?.value ?? null;
}

function selectedModel() {
  const v = selectedOption();
  return v === CUSTOM ? ui.custom.value.trim() : v;
}

function setSelectedModel(model) {
  const preset = PRESETS.find((p) => p.id === model);
  const value = preset ? preset.id : CUSTOM;
  for (const input of ui.options.querySelectorAll('input')) input.checked = input.value === value;
  if (!preset) ui.custom.value = model;
  ui.custom.hidden = value !== CUSTOM;
  updateLoadButton();
}

function updateLoadButton() {
  if (state.loadAbort) return;
  const model = selectedModel();
  // The load button loads from huggingface.co (or the URL typed): compare with that.
  const cached = model && state.cached.find((m) => sameSource(m, { model, endpoint: null }));
  const loaded = Boolean(state.engine) && state.engineModel === model && state.engine.endpoint === officialEndpoint(model);
  ui.loadBtn.disabled = !model || !navigator.gpu || !state.webqwen;
  ui.loadBtn.textContent = loaded ? 'Loaded' : cached?.complete ? 'Load' : 'Download & load';
  if (loaded) ui.loadBtn.disabled = true;
}

function officialEndpoint(model) {
  try {
    return state.webqwen.resolveModel(model).endpoint;
  } catch {
    return undefined;
  }
}

/** Loads `model` from `endpoint` (a hub; null: huggingface.co, or the URL's own server). */
async function loadModel(model, endpoint = null) {
  if (!state.webqwen) return;
  state.genAbort?.abort();
  setSelectedModel(model);
  if (state.engine) {
    const old = state.engine;
    state.engine = null;
    state.engineModel = null;
    showLoadedFrom(null);
    await old.unload().catch(() => {});
  }
  hideNotice();
  const abort = new AbortController();
  state.loadAbort = abort;
  setEngineState('loading', `Loading ${shortName(model)}…`);
  try {
    showOrigin(state.webqwen.resolveModel(model, { endpoint: endpoint ?? undefined }).origin);
  } catch {
    showOrigin(null); // not a model id or URL: createEngine says so below
  }
  ui.loadBtn.textContent = 'Cancel';
  ui.loadBtn.disabled = false;
  ui.progress.hidden = false;
  showProgress({ phase: 'download', file: null, loaded: 0, total: 0, bytesPerSecond: 0 });
  updateComposer();
  try {
    const engine = await state.webqwen.createEngine({
      model,
      endpoint: endpoint ?? undefined,
      signal: abort.signal,
      onProgress: showProgress,
    });
    state.engine = engine;
    // The package's normalised id (a URL loses its trailing slash), as the cached list names it.
    state.engineModel = engine.model;
    setSelectedModel(engine.model);
    localStorage.setItem('webqwen.model', engine.model);
    if (engine.endpoint && engine.origin !== HUB_ORIGIN) localStorage.setItem('webqwen.endpoint', engine.endpoint);
    else localStorage.removeItem('webqwen.endpoint');
    setEngineState('ready', shortName(engine.model));
    showLoadedFrom(engine, await engine.info().catch(() => null));
    ui.progress.hidden = true;
    if (matchMedia('(max-width: 899px)').matches) closeDrawer();
    ui.input.focus({ preventScroll: true });
  } catch (e) {
    ui.progress.hidden = true;
    showLoadedFrom(null);
    if (e?.name === 'AbortError') {
      setEngineState('none', 'No model loaded');
    } else {
      console.error(e);
      setEngineState('error', 'Load failed');
      showNotice(errorTitle(e), e?.message || String(e));
    }
  } finally {
    state.loadAbort = null;
    updateLoadButton();
    updateComposer();
    refreshCached();
  }
}

function showProgress(p) {
  const { phase, file, loaded, total, bytesPerSecond } = p;
  const pct = total > 0 ? Math.min(100, (loaded / total) * 100) : 0;
  ui.progress.classList.toggle('indeterminate', total === 0 && phase !== 'ready');
  ui.progressFill.style.width = `${phase === 'compile' || phase === 'ready' ? 100 : pct}%`;
  let text;
  if (phase === 'compile') text = 'Preparing the GPU…';
  else if (phase === 'verify') text = `Checking ${file} against the published checksum…`;
  else if (phase === 'ready') text = 'Ready';
  else if (total === 0) text = file ? `Fetching ${file}…` : 'Starting…';
  else {
    const verb = phase === 'cache' ? 'Loading from this device' : 'Downloading';
    const speed = bytesPerSecond > 0 ? ` · ${formatBytes(bytesPerSecond)}/s` : '';
    const eta = phase === 'download' && bytesPerSecond > 0 ? ` · ${formatDuration((total - loaded) / bytesPerSecond)} left` : '';
    text = `${verb} ${formatBytes(loaded)} of ${formatBytes(total)}${speed}${eta}`;
  }
  ui.progressText.textContent = text;
  ui.progress.dataset.phase = phase;
}

async function refreshCached() {
  if (!state.webqwen) return;
  try {
    state.cached = await state.webqwen.listCachedModels();
  } catch (e) {
    console.warn('webqwen app: could not list cached models', e);
    state.cached = [];
  }
  ui.cachedList.replaceChildren();
  if (!state.cached.length) ui.cachedList.append(el('li', { class: 'empty-row' }, 'No models downloaded yet.'));
  for (const m of state.cached) {
    const name = m.model ?? m.key;
    const size = m.complete || !m.totalBytes ? formatBytes(m.bytes) : `${formatBytes(m.bytes)} of ${formatBytes(m.totalBytes)}`;
    const inUse = Boolean(state.engine && state.engineModel === m.model && state.engine.endpoint === m.endpoint);
    const from = m.origin ? `from ${hostOf(m.origin)}` : 'unknown source';
    const info = el('div', { class: 'info' }, [
      el('strong', { title: name }, shortName(name)),
      el('small', { class: `from${m.origin && m.origin !== HUB_ORIGIN ? ' foreign' : ''}`, title: m.origin ?? '' }, from),
      el('small', {}, `${size}${m.complete ? '' : ' · partial'}${inUse ? ' · in use' : ''}`),
    ]);
    const buttons = [];
    if (m.model && !inUse) {
      buttons.push(el('button', { class: 'small-btn', type: 'button', 'aria-label': `Load ${name} from ${m.origin}` }, m.complete ? 'Load' : 'Resume'));
      buttons.at(-1).addEventListener('click', () => loadModel(m.model, m.endpoint));
    }
    const del = el('button', { class: 'small-btn danger', type: 'button', 'aria-label': `Delete ${name}` }, 'Delete');
    del.addEventListener('click', () => deleteModel(m));
    buttons.push(del);
    ui.cachedList.append(el('li', { 'data-model': name, 'data-origin': m.origin ?? '' }, [info, ...buttons]));
  }
  markCachedPresets();
  updateLoadButton();
  updateStorageHint();
}

async function deleteModel(m) {
  const name = m.model ?? m.key;
  if (!confirm(`Delete ${shortName(name)}${m.origin ? ` from ${hostOf(m.origin)}` : ''} (${formatBytes(m.bytes)}) from this device?`)) return;
  try {
    await state.webqwen.deleteCachedModel(m);
  } catch (e) {
    showNotice('Could not delete the model', e?.message || String(e));
  }
  refreshCached();
}

async function updateStorageHint() {
  try {
    const { usage, quota } = await navigator.storage.estimate();
    const persisted = await navigator.storage.persisted?.();
    ui.storageHint.textContent = `${formatBytes(usage)} used of ${formatBytes(quota)} available to this app.` +
      (persisted ? '' : ' Add the app to your home screen to keep downloads from being cleared.');
  } catch {
    ui.storageHint.textContent = '';
  }
}

// ---------------------------------------------------------------------------------------
// Chat

function canSend() {
  return Boolean(state.engine) && !state.genAbort && ui.input.value.trim().length > 0;
}

function updateComposer() {
  const ready = Boolean(state.engine);
  ui.input.disabled = !ready;
  ui.input.placeholder = ready ? 'Message' : state.loadAbort ? 'Loading the model…' : 'Load a model to start';
  const generating = Boolean(state.genAbort);
  ui.send.hidden = generating;
  ui.stop.hidden = !generating;
  ui.send.disabled = !canSend();
  ui.body.dataset.generating = String(generating);
}

async function send() {
  if (!canSend()) return;
  const text = ui.input.value.trim();
  ui.input.value = '';
  autosize();
  const thinking = ui.thinking.checked;
  state.messages.push({ role: 'user', content: text });
  const answer = { role: 'assistant', content: '', reasoning: '', meta: '' };
  const history = state.messages.filter((m) => !m.error).map((m) => ({ role: m.role, content: m.content }));
  state.messages.push(answer);
  // Append rather than re-render, so earlier thoughts the reader opened stay open.
  const view = messageView(answer);
  ui.messages.append(messageView(state.messages.at(-2)), view);
  ui.empty.hidden = true;
  saveConversation();

  view.classList.add('streaming');
  const abort = new AbortController();
  state.genAbort = abort;
  updateComposer();
  scrollToEnd(true);

  let usage = null;
  let frame = 0;
  ui.speed.textContent = ''; // the engine reports this answer's rate when it ends
  const paint = () => {
    frame = 0;
    updateAssistant(view, answer);
    scrollToEnd();
  };
  try {
    const stream = await state.engine.chat.completions.create({
      messages: history,
      stream: true,
      enable_thinking: thinking,
      ...(thinking ? SAMPLING.thinking : SAMPLING.direct),
      ...URL_SAMPLING,
      signal: abort.signal,
    });
    for await (const chunk of stream) {
      const choice = chunk.choices[0];
      const { content, reasoning_content: reasoning } = choice.delta;
      if (content || reasoning) {
        if (reasoning) answer.reasoning += reasoning;
        if (content) answer.content += content;
        frame ||= requestAnimationFrame(paint);
      }
      if (choice.finish_reason) {
        usage = chunk.usage;
        answer.meta = describeFinish(choice.finish_reason, usage);
      }
    }
  } catch (e) {
    console.error(e);
    answer.error = true;
    answer.content = `${errorTitle(e)}: ${e?.message || e}`;
  } finally {
    cancelAnimationFrame(frame);
    state.genAbort = null;
    view.classList.remove('streaming', 'thinking-now');
    updateAssistant(view, answer);
    ui.speed.textContent = speedText(usage);
    updateComposer();
    saveConversation();
    if (matchMedia('(pointer: fine)').matches) ui.input.focus({ preventScroll: true });
  }
}

/** The decode rate as the engine reports it (`usage.extra.decode_tokens_per_s`), or ''. */
function speedText(usage) {
  const tps = usage?.extra?.decode_tokens_per_s;
  return tps ? `${tps.toFixed(1)} tok/s` : '';
}

function describeFinish(reason, usage) {
  const parts = [];
  if (usage) {
    parts.push(`${usage.completion_tokens} tokens`);
    const speed = speedText(usage);
    if (speed) parts.push(speed);
  }
  if (reason === 'abort') parts.push('stopped');
  if (reason === 'length') parts.push('length limit reached');
  return parts.join(' · ');
}

async function newChat() {
  state.genAbort?.abort();
  state.messages = [];
  renderMessages();
  ui.speed.textContent = '';
  await saveConversation();
  ui.input.focus({ preventScroll: true });
}

function saveConversation() {
  return db.save('conversation', { messages: state.messages, updated: Date.now() });
}

function renderMessages() {
  ui.messages.replaceChildren(...state.messages.map(messageView));
  ui.empty.hidden = state.messages.length > 0;
  scrollToEnd(true);
}

function messageView(m) {
  const li = el('li', { class: `msg ${m.role}${m.error ? ' error' : ''}` });
  if (m.role === 'assistant') {
    const details = el('details', { class: 'thinking' }, [el('summary', {}, 'Thinking'), el('div', { class: 'thinking-text' })]);
    li.append(details, el('div', { class: 'bubble' }), el('div', { class: 'meta' }));
    updateAssistant(li, m);
  } else {
    li.append(el('div', { class: 'bubble' }, m.content));
  }
  return li;
}

function updateAssistant(li, m) {
  const details = li.querySelector('.thinking');
  const reasoning = (m.reasoning || '').trim();
  details.hidden = !reasoning;
  const thinkingNow = li.classList.contains('streaming') && !m.content;
  li.classList.toggle('thinking-now', thinkingNow && Boolean(reasoning));
  details.querySelector('summary').textContent = thinkingNow ? 'Thinking…' : 'Thoughts';
  details.querySelector('.thinking-text').textContent = reasoning;
  li.querySelector('.bubble').textContent = m.content;
  li.querySelector('.meta').textContent = m.meta || '';
  li.classList.toggle('error', Boolean(m.error));
}

function scrollToEnd(force = false) {
  const c = ui.chat;
  // Follow the answer only while the reader is at the bottom.
  if (force || c.scrollHeight - c.scrollTop - c.clientHeight < 120) c.scrollTop = c.scrollHeight;
}

function autosize() {
  ui.input.style.height = 'auto';
  ui.input.style.height = `${ui.input.scrollHeight}px`;
}

// ---------------------------------------------------------------------------------------
// Bits

function setEngineState(stateName, label) {
  ui.body.dataset.engine = stateName;
  ui.status.textContent = label;
}

/**
 * Where the loaded model came from, always on screen: the host beside the model's name in
 * the top bar, and the full origin (and any file the server published no checksum for) under
 * the load button. `engine` null clears it.
 */
function showLoadedFrom(engine, info) {
  const foreign = Boolean(engine && engine.origin !== HUB_ORIGIN);
  showOrigin(engine?.origin ?? null);
  ui.loadedFrom.hidden = !engine;
  if (!engine) return ui.loadedFrom.replaceChildren();
  const lines = [el('span', {}, ['Loaded from ', el('strong', {}, engine.origin), foreign ? ' (not huggingface.co)' : ''])];
  const sizeOnly = info?.sizeOnly ?? [];
  if (sizeOnly.length) {
    lines.push(el('span', { class: 'size-only' },
      `No checksum was published for ${sizeOnly.join(', ')}: checked by size only.`));
  }
  ui.loadedFrom.replaceChildren(...lines);
  ui.loadedFrom.classList.toggle('foreign', foreign);
}

/** The origin of the model being loaded or in use, in the top bar (null: none). */
function showOrigin(origin) {
  ui.statusOrigin.textContent = origin ? hostOf(origin) : '';
  ui.statusOrigin.title = origin ? `Model files from ${origin}` : '';
  ui.statusOrigin.hidden = !origin;
  ui.statusOrigin.classList.toggle('foreign', Boolean(origin && origin !== HUB_ORIGIN));
}

function hostOf(origin) {
  try {
    return new URL(origin).host;
  } catch {
    return String(origin);
  }
}

function showNotice(title, text) {
  ui.notice.replaceChildren(el('strong', {}, title), document.createTextNode(text));
  ui.notice.hidden = false;
}

function hideNotice() {
  ui.notice.hidden = true;
}

function openDrawer() {
  ui.sidebar.classList.add('open');
  ui.scrim.hidden = false;
  ui.modelsBtn.setAttribute('aria-expanded', 'true');
}

function closeDrawer() {
  ui.sidebar.classList.remove('open');
  ui.scrim.hidden = true;
  ui.modelsBtn.setAttribute('aria-expanded', 'false');
}

function errorTitle(e) {
  switch (e?.name) {
    case 'WebGPUUnavailableError': return 'WebGPU is not available';
    case 'LimitsTooSmallError': return 'This model is too large for this device — try a smaller one';
    case 'QuotaExceededError': return 'Not enough storage on this device';
    case 'NetworkError': return 'Download failed';
    case 'BadModelError': return 'This model cannot be loaded';
    default: return 'Error';
  }
}

function shortName(model) {
  if (!model) return '';
  // The host is not part of the name: the origin is always shown beside it.
  if (/^https?:\/\//.test(model)) {
    const u = new URL(model);
    return u.pathname.split('/').filter(Boolean).at(-1) || u.host;
  }
  return model.includes('/') ? model.split('/')[1] : model;
}

function formatBytes(n) {
  if (!Number.isFinite(n)) return '?';
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${Math.round(n / 1e3)} kB`;
  return `${Math.round(n)} B`;
}

function formatDuration(s) {
  if (!Number.isFinite(s)) return '';
  if (s < 60) return `${Math.ceil(s)} s`;
  if (s < 3600) return `${Math.ceil(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of [].concat(children)) node.append(c);
  return node;
}
