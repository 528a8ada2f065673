// webqwen: Qwen3 language models on WebGPU, in a Web Worker.
//
// The main-thread side: starts the engine worker, forwards progress, and shapes the
// worker's text deltas into OpenAI-style chat completion objects. Everything heavy
// (downloads, storage, wasm, GPU) happens in worker.js.

import {
  AbortError, BadModelError, LimitsTooSmallError, NetworkError, QuotaExceededError, WebGPUUnavailableError,
  WebQwenError, fromWire,
} from './errors.js';
import {
  DEFAULT_ENDPOINT, normalizeModel, listCachedModels as listCached, deleteCachedModel as deleteCached,
} from './cache.js';

export {
  AbortError, BadModelError, LimitsTooSmallError, NetworkError, QuotaExceededError, WebGPUUnavailableError, WebQwenError,
};

const NO_WEBGPU =
  'WebGPU is not available in this browser. Use Safari 26 or newer (macOS, iOS, iPadOS), ' +
  'or a recent Chrome or Edge; in Firefox, use version 141+ on Windows or enable dom.webgpu.enabled. ' +
  'WebGPU also needs a secure context (https:// or localhost).';

// How long unload() and an aborted load wait for the worker to close its files before
// terminating it anyway.
const WORKER_GRACE_MS = 3000;

const SAMPLING_KEYS = [
  'max_tokens', 'temperature', 'top_p', 'top_k', 'min_p', 'presence_penalty', 'repetition_penalty', 'seed',
];

function pageBase() {
  return globalThis.document?.baseURI ?? globalThis.location?.href;
}

/**
 * Starts an engine worker and loads `options.model` into it (from the cache when
 * possible). Resolves when the model is ready to generate.
 */
export async function createEngine(options = {}) {
  const {
    model, endpoint = DEFAULT_ENDPOINT, onProgress, signal, context, maxStorageBinding, kvCache, storage = 'auto',
  } = options;
  const source = normalizeModel(model, { endpoint, base: pageBase() });
  for (const [key, v] of Object.entries({ context, maxStorageBinding })) {
    if (v != null && !(Number.isInteger(v) && v > 0)) throw new TypeError(`\`${key}\` must be a positive integer.`);
  }
  if (kvCache != null && !['f16', 'f32'].includes(kvCache)) throw new TypeError('`kvCache` must be "f16" or "f32".');
  if (!['auto', 'opfs', 'cache', 'none'].includes(storage)) {
    throw new TypeError('`storage` must be one of "auto", "opfs", "cache", "none".');
  }
  if (signal?.aborted) throw new AbortError('Loading was aborted.');
  if (!globalThis.navigator?.gpu) throw new WebGPUUnavailableError(NO_WEBGPU);
  if (typeof Worker === 'undefined') throw new WebQwenError('Web Workers are not available in this context.');

  // persist() exists only on the main thread. Not awaited: Firefox asks the user, and the
  // download need not wait for the answer.
  const storageState = { persisted: null };
  globalThis.navigator.storage?.persist?.().then((v) => { storageState.persisted = v; }, () => {});

  const worker = new Worker(new URL('./worker.js', import.meta.url), { type: 'module', name: 'webqwen' });
  const client = new WorkerClient(worker);
  try {
    await client.load({ source, context, maxStorageBinding, kvCache, storage }, onProgress, signal);
    return new Engine(client, source, storageState);
  } catch (e) {
    client.terminate();
    throw e;
  }
}

/**
 * Where `model` would be loaded from, without loading anything:
 * `{model, kind: 'hub' | 'url', endpoint, origin, official}` (`official`: a repo from
 * https://huggingface.co; `endpoint` is null for URLs). Throws TypeError for an invalid id,
 * URL or endpoint. An app that takes a model or endpoint from a link should show this to the
 * user, and load only once they agree.
 */
export function resolveModel(model, { endpoint } = {}) {
  const s = normalizeModel(model, { endpoint, base: pageBase() });
  return { model: s.id, kind: s.kind, endpoint: s.endpoint, origin: s.origin, official: s.official };
}

/**
 * Models with anything in the cache:
 * `{model, endpoint, origin, key, storage, bytes, totalBytes, complete, updated}`.
 */
export function listCachedModels() {
  return listCached();
}

/**
 * Deletes a cached model: a repo id (from `options.endpoint`, default the hub) or URL, or an
 * entry of listCachedModels(). Resolves to whether anything was deleted.
 */
export async function deleteCachedModel(model, { endpoint } = {}) {
  try {
    return await deleteCached(model, { endpoint, base: pageBase() });
  } catch (e) {
    if (e instanceof TypeError) throw e;
    throw fromWire({ name: e?.name, message: e?.message });
  }
}

class Engine {
  #client;
  #storage;
  #unloaded = false;

  constructor(client, source, storageState) {
    this.#client = client;
    this.#storage = storageState;
    /** The model id: the repo id, or the absolute URL of the model directory. */
    this.model = source.id;
    /** The hub endpoint the files came from (null for a URL model). */
    this.endpoint = source.endpoint;
    /** The origin the model's files were requested from, e.g. "https://huggingface.co". */
    this.origin = source.origin;
    this.chat = { completions: { create: (request) => this.#create(request) } };
  }

  /** Adapter, features, limits, model shapes and memory, as reported by the engine. */
  async info() {
    this.#assertLoaded();
    const value = await this.#client.call('info');
    return { ...value, persistedStorage: this.#storage.persisted };
  }

  /** Frees the GPU memory and stops the worker. Generations in flight end with 'abort'. */
  async unload() {
    if (this.#unloaded) return;
    this.#unloaded = true;
    try {
      await withTimeout(this.#client.call('unload'), WORKER_GRACE_MS);
    } catch {
      // the worker is terminated below either way
    } finally {
      this.#client.terminate();
    }
  }

  #assertLoaded() {
    if (this.#unloaded) throw new WebQwenError('This engine was unloaded; create a new one with createEngine().');
    const dead = this.#client.dead;
    if (dead) throw new WebQwenError(`The engine stopped (${dead.message}); create a new one with createEngine().`);
  }

  async #create(request) {
    this.#assertLoaded();
    const body = buildRequest(request);
    const { signal } = request;
    if (signal?.aborted) throw new AbortError('The request was aborted.');
    const events = new EventQueue();
    const genId = this.#client.generate(body, (msg) => events.push(msg));
    const onAbort = () => this.#client.cancel(genId);
    signal?.addEventListener('abort', onAbort, { once: true });
    const shape = {
      id: `chatcmpl-${randomId()}`,
      created: Math.floor(Date.now() / 1000),
      model: this.model,
      cleanup: () => signal?.removeEventListener('abort', onAbort),
      cancel: () => this.#client.cancel(genId),
    };
    if (request.stream) return new ChatCompletionStream(events, shape);

    let content = '';
    let reasoning = '';
    try {
      for (;;) {
        const msg = await events.next();
        if (msg.type === 'delta') {
          content += msg.content;
          reasoning += msg.reasoning;
        } else if (msg.type === 'done') {
          const message = { role: 'assistant', content };
          if (reasoning) message.reasoning_content = reasoning;
          return {
            id: shape.id,
            object: 'chat.completion',
            created: shape.created,
            model: shape.model,
            choices: [{ index: 0, message, finish_reason: msg.finish_reason, logprobs: null }],
            usage: msg.usage,
          };
        } else {
          throw fromWire(msg.error);
        }
      }
    } finally {
      shape.cleanup();
    }
  }
}

/**
 * Async iterator of `chat.completion.chunk` objects. The last chunk has an empty delta,
 * the finish_reason ('stop' | 'length' | 'abort') and the usage. Breaking out of a
 * `for await` loop cancels the generation.
 */
class ChatCompletionStream {
  #events;
  #shape;
  #finished = false;
  #first = true;

  constructor(events, shape) {
    this.#events = events;
    this.#shape = shape;
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  #chunk(delta, finishReason, usage) {
    if (this.#first) {
      delta = { role: 'assistant', ...delta };
      this.#first = false;
    }
    const chunk = {
      id: this.#shape.id,
      object: 'chat.completion.chunk',
      created: this.#shape.created,
      model: this.#shape.model,
      choices: [{ index: 0, delta, finish_reason: finishReason, logprobs: null }],
    };
    if (usage) chunk.usage = usage;
    return chunk;
  }

  async next() {
    if (this.#finished) return { done: true, value: undefined };
    const msg = await this.#events.next();
    if (msg.type === 'delta') {
      const delta = {};
      if (msg.reasoning) delta.reasoning_content = msg.reasoning;
      if (msg.content) delta.content = msg.content;
      return { done: false, value: this.#chunk(delta, null) };
    }
    this.#finished = true;
    this.#shape.cleanup();
    if (msg.type === 'done') return { done: false, value: this.#chunk({}, msg.finish_reason, msg.usage) };
    throw fromWire(msg.error);
  }

  async return() {
    if (!this.#finished) {
      this.#finished = true;
      this.#shape.cancel();
      this.#shape.cleanup();
    }
    return { done: true, value: undefined };
  }
}

/** Talks to one engine worker. */
class WorkerClient {
  constructor(worker) {
    this.worker = worker;
    this.nextId = 1;
    this.calls = new Map(); // id -> {resolve, reject}
    this.streams = new Map(); // id -> handler(msg)
    this.loading = null;
    this.dead = null;
    worker.onmessage = (e) => this.#onMessage(e.data);
    worker.onerror = (e) => {
      e.preventDefault?.();
      this.#die(new WebQwenError(
        `The webqwen worker failed: ${e.message || 'it could not be started (check that worker.js and webqwen_wasm.js are served with a JavaScript MIME type)'}.`));
    };
    worker.onmessageerror = () => this.#die(new WebQwenError('The webqwen worker sent a message that could not be read.'));
  }

  load(options, onProgress, signal) {
    return new Promise((resolve, reject) => {
      let abortTimer = null;
      const onAbort = () => {
        this.worker.postMessage({ type: 'abort-load' });
        // Normally the worker answers at once with an AbortError after closing its files.
        abortTimer = setTimeout(() => settle(reject, new AbortError('Loading was aborted.')), WORKER_GRACE_MS);
      };
      const settle = (fn, value) => {
        if (!this.loading) return;
        this.loading = null;
        clearTimeout(abortTimer);
        signal?.removeEventListener('abort', onAbort);
        fn(value);
      };
      this.loading = {
        progress: onProgress,
        resolve: (v) => settle(resolve, v),
        reject: (e) => settle(reject, e),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      this.worker.postMessage({ type: 'load', options });
    });
  }

  call(type) {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.worker.postMessage({ type, id });
    });
  }

  generate(request, handler) {
    const id = this.nextId++;
    if (this.dead) {
      const error = { name: this.dead.name, message: this.dead.message };
      queueMicrotask(() => handler({ type: 'gen-error', id, error }));
      return id;
    }
    this.streams.set(id, handler);
    this.worker.postMessage({ type: 'generate', id, request });
    return id;
  }

  cancel(id) {
    if (this.streams.has(id)) this.worker.postMessage({ type: 'cancel', id });
  }

  terminate() {
    this.worker.terminate();
    this.#die(new AbortError('The engine was unloaded.'));
  }

  #onMessage(msg) {
    switch (msg?.type) {
      case 'progress':
        try {
          this.loading?.progress?.(msg.progress);
        } catch (e) {
          console.error('webqwen: onProgress threw', e);
        }
        break;
      case 'loaded':
        this.loading?.resolve(msg.info);
        break;
      case 'load-error':
        this.loading?.reject(fromWire(msg.error));
        break;
      case 'delta':
      case 'done':
      case 'gen-error': {
        const handler = this.streams.get(msg.id);
        if (msg.type !== 'delta') this.streams.delete(msg.id);
        handler?.(msg);
        break;
      }
      case 'reply': {
        const call = this.calls.get(msg.id);
        this.calls.delete(msg.id);
        if (msg.ok) call?.resolve(msg.value);
        else call?.reject(fromWire(msg.error));
        break;
      }
      default:
        break;
    }
  }

  #die(error) {
    if (this.dead) return;
    this.dead = error;
    this.loading?.reject(error);
    for (const call of this.calls.values()) call.reject(error);
    this.calls.clear();
    const wire = { name: error.name, message: error.message };
    for (const [id, handler] of this.streams) handler({ type: 'gen-error', id, error: wire });
    this.streams.clear();
  }
}

/** Unbounded single-consumer queue: the worker's events are small and end with 'done'. */
class EventQueue {
  #items = [];
  #waiters = [];

  push(item) {
    const waiter = this.#waiters.shift();
    if (waiter) waiter(item);
    else this.#items.push(item);
  }

  next() {
    if (this.#items.length) return Promise.resolve(this.#items.shift());
    return new Promise((resolve) => this.#waiters.push(resolve));
  }
}

function buildRequest(request) {
  if (!request || typeof request !== 'object') throw new TypeError('create() takes a request object.');
  const { messages } = request;
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new TypeError('`messages` must be a non-empty array of {role, content}.');
  }
  if (request.n != null && request.n !== 1) throw new TypeError('Only n = 1 is supported.');
  const out = {
    messages: messages.map((m, i) => {
      if (!m || !['system', 'user', 'assistant', 'tool'].includes(m.role)) {
        throw new TypeError(`messages[${i}].role must be "system", "user", "assistant" or "tool".`);
      }
      const msg = { role: m.role, content: textOf(m.content, i) };
      for (const key of ['name', 'reasoning_content', 'tool_calls', 'tool_call_id']) {
        if (m[key] != null) msg[key] = m[key];
      }
      return msg;
    }),
  };
  const src = { ...request, max_tokens: request.max_tokens ?? request.max_completion_tokens };
  for (const key of SAMPLING_KEYS) {
    const v = src[key];
    if (v == null) continue;
    if (typeof v !== 'number' || !Number.isFinite(v)) throw new TypeError(`\`${key}\` must be a finite number.`);
    out[key] = v;
  }
  if (request.stop != null) {
    const stop = typeof request.stop === 'string' ? [request.stop] : request.stop;
    if (!Array.isArray(stop) || !stop.every((s) => typeof s === 'string')) {
      throw new TypeError('`stop` must be a string or an array of strings.');
    }
    if (stop.length) out.stop = stop;
  }
  const thinking = request.enable_thinking ?? request.chat_template_kwargs?.enable_thinking;
  if (thinking != null) out.enable_thinking = Boolean(thinking);
  return out;
}

function textOf(content, i) {
  if (content == null) return '';
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content.map((part) => {
      if (typeof part === 'string') return part;
      if (part?.type === 'text') return part.text ?? '';
      throw new TypeError(`messages[${i}]: only text content parts are supported.`);
    }).join('');
  }
  throw new TypeError(`messages[${i}].content must be a string or an array of text parts.`);
}

function randomId() {
  const bytes = new Uint8Array(12);
  globalThis.crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function withTimeout(promise, ms) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => { timer = setTimeout(() => reject(new Error('timeout')), ms); }),
  ]).finally(() => clearTimeout(timer));
}
