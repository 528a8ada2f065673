// The engine worker: downloads (or reads from the cache) a model's files, streams the
// weights into the wasm ModelLoader, and runs generations. Started by index.js as a
// dedicated module worker so that neither downloading nor the engine ever blocks the page.
//
// What the model's files are, how a safetensors header and a shard index read, what a
// finish_reason or a token rate is: the wasm module says (Rust defines each once). This side
// keeps the network and the storage.
//
// Protocol (all messages are plain objects):
//   page -> worker  {type: 'load', options}          one per worker
//                   {type: 'abort-load'}
//                   {type: 'generate', id, request}
//                   {type: 'cancel', id}
//                   {type: 'info', id} | {type: 'unload', id}
//   worker -> page  {type: 'progress', progress}
//                   {type: 'loaded', info} | {type: 'load-error', error}
//                   {type: 'delta', id, reasoning, content}
//                   {type: 'done', id, finish_reason, usage} | {type: 'gen-error', id, error}
//                   {type: 'reply', id, ok, value | error}

import init, * as wasm from './webqwen_wasm.js';
import { openModelStore, lockName, parseSha256, MANIFEST_VERSION } from './cache.js';
import {
  AbortError, BadModelError, NetworkError, QuotaExceededError, WebGPUUnavailableError, WebQwenError,
  normalizeError, toWire,
} from './errors.js';

const CACHE_READ_BYTES = 8 << 20;
// Network reads arrive in 16-64 KiB pieces; gathering them into larger blocks cuts the
// number of crossings into wasm, GPU queue writes and storage writes by ~30x for the
// price of one bounded copy.
const BLOCK_BYTES = 1 << 20;
const MAX_FAILURES = 5; // consecutive failed attempts (no bytes received) before giving up
const PROGRESS_INTERVAL_MS = 100;
const SPEED_WINDOW_MS = 3000;

// index.js has already seen navigator.gpu on the page, so here it is the worker that lacks it.
const NO_WEBGPU =
  'WebGPU is not available inside Web Workers in this browser, and webqwen runs its engine in one. ' +
  'Use Safari 26 or newer (macOS, iOS, iPadOS), or a recent Chrome or Edge.';

let wasmReady = null;
let engine = null; // wasm Engine once loaded
let engineInfo = null;
let loadController = null;
let generation = null; // {id, cancelled}
let queue = Promise.resolve(); // generations run one at a time
let unloading = false;

const post = (msg) => self.postMessage(msg);

self.onmessage = (event) => {
  const msg = event.data || {};
  switch (msg.type) {
    case 'load':
      onLoad(msg.options);
      break;
    case 'abort-load':
      loadController?.abort();
      break;
    case 'generate':
      queue = queue.then(() => runGeneration(msg.id, msg.request));
      break;
    case 'cancel':
      if (generation?.id === msg.id) generation.cancelled = true;
      else pendingCancels.add(msg.id);
      break;
    case 'info':
      reply(msg.id, () => ({ ...engineInfo, engine: engine ? wasmCall(() => engine.info()) : null }));
      break;
    case 'unload':
      reply(msg.id, unload);
      break;
    default:
      console.warn('webqwen worker: unknown message', msg);
  }
};

const pendingCancels = new Set(); // cancels that arrived while their request was still queued

async function reply(id, fn) {
  try {
    post({ type: 'reply', id, ok: true, value: await fn() });
  } catch (e) {
    post({ type: 'reply', id, ok: false, error: toWire(e) });
  }
}

/** Calls into wasm, turning its errors (JsValue / Error with .name) into typed errors. */
function wasmCall(fn) {
  try {
    const out = fn();
    if (out && typeof out.then === 'function') return out.catch((e) => { throw wasmError(e); });
    return out;
  } catch (e) {
    throw wasmError(e);
  }
}

function wasmError(e) {
  const err = normalizeError(e);
  if (err.originalName === 'RuntimeError') {
    // A Rust panic or a wasm trap leaves the module unusable.
    err.message += ' (the engine crashed: unload it and create a new one)';
  }
  return err;
}

// ---------------------------------------------------------------------------------------
// Loading

let loadedFiles = {}; // name -> {size, verified} of the loaded model, for info()

/** Where a model's files come from, as info() reports it. */
function sourceInfo(source) {
  return { source: source.baseUrl, endpoint: source.endpoint, origin: source.origin };
}

async function onLoad(options) {
  loadController = new AbortController();
  const progress = new Progress(post);
  try {
    engine = await loadModel(options, loadController.signal, progress);
    engineInfo = {
      model: options.source.id,
      ...sourceInfo(options.source),
      storage: engineInfo?.storage ?? null,
      gpu: engineInfo?.gpu ?? null,
      files: loadedFiles,
      sizeOnly: Object.keys(loadedFiles).filter((name) => loadedFiles[name].verified === 'size-only').sort(),
    };
    progress.emit('ready', null, true);
    post({ type: 'loaded', info: engineInfo });
  } catch (e) {
    post({ type: 'load-error', error: toWire(loadController.signal.aborted ? new AbortError('Loading was aborted.') : e) });
  } finally {
    loadController = null;
  }
}

async function loadModel(options, signal, progress) {
  if (!self.navigator?.gpu) throw new WebGPUUnavailableError(NO_WEBGPU);
  wasmReady ??= init();
  try {
    await wasmReady;
  } catch (e) {
    wasmReady = null;
    throw new WebQwenError(`Could not load the webqwen wasm module: ${e?.message || e}. Check that webqwen_wasm_bg.wasm is served next to webqwen_wasm.js (with Content-Type application/wasm).`);
  }
  // Fail before downloading gigabytes when there is no adapter at all.
  const gpu = await wasmCall(() => wasm.gpuInfo());
  const store = await openModelStore(options.source.key, options.storage || 'auto');
  engineInfo = { gpu, storage: store.kind };
  const job = new ModelLoad({ ...options, store, signal, progress });
  if (!self.navigator?.locks) return job.run();
  // One loader per model across tabs: a second tab waits and then reads the first one's cache.
  return navigator.locks.request(lockName(options.source.key), { signal }, () => job.run());
}

/** Loads one model: small files, headers, plan, weights, finish. */
class ModelLoad {
  constructor({ source, store, signal, progress, context, maxStorageBinding, kvCache }) {
    this.source = source;
    this.store = store;
    this.signal = signal;
    this.progress = progress;
    this.loaderOptions = {};
    if (context != null) this.loaderOptions.context = context;
    if (maxStorageBinding != null) this.loaderOptions.maxStorageBinding = maxStorageBinding;
    if (kvCache != null) this.loaderOptions.kvCache = kvCache;
    this.files = new Map(); // name -> open StoredFile
    this.textFiles = wasm.modelFiles(); // {required, optional}: names of the model's text files
    this.listing = null; // promise of the hub's file listing, fetched at most once
    this.noRanges = false; // set when the server answered a Range request wrongly
  }

  async run() {
    let loader = null;
    let finishing = false;
    try {
      await this.readManifest();
      // Files kept from an earlier version are checked against the hub's listing: without
      // it, fail before anything is touched.
      if (Object.values(this.manifest.files).some((e) => e.legacy) && !(await this.hubListing())) throw this.legacyError();
      // The text files (config, tokenizer, template, shard index, ...) as the wasm module
      // lists them. The loader checks them before any weight is fetched and names the weight
      // files; the adapter's limits decide whether this model can run at all, and plan() says
      // so after only the headers are fetched.
      const texts = {};
      for (const name of this.textFiles.required) texts[name] = await this.small(name, true);
      for (const name of this.textFiles.optional) texts[name] = await this.small(name, false);
      loader = await wasmCall(() => wasm.ModelLoader.create(texts, this.loaderOptions));
      const weights = wasmCall(() => loader.weightFiles());
      this.manifest.weights = weights;
      await this.saveManifest();
      await this.hubMetadata(weights);
      await this.verifyLegacy(weights);
      for (const name of weights) await this.header(name, loader);
      await this.fillMissingSizes(weights);
      await this.checkQuota(weights);
      const plan = await wasmCall(() => loader.plan()); // opens the GPU: async
      const sizes = this.sizesFrom(plan, weights);
      this.progress.total = weights.reduce((sum, name) => sum + sizes.get(name), 0);
      this.manifest.totalBytes = this.progress.total;
      await this.saveManifest();

      for (const name of weights) await this.streamWeight(name, sizes.get(name), loader);

      this.progress.emit('compile', null, true);
      finishing = true;
      const engine = await wasmCall(() => loader.finish());
      this.manifest.complete = true;
      await this.saveManifest();
      loadedFiles = {};
      for (const [name, e] of Object.entries(this.manifest.files)) {
        if (!e.absent && (weights.includes(name) || Object.hasOwn(texts, name))) loadedFiles[name] = { size: e.size, verified: e.verified ?? null };
      }
      return engine;
    } catch (e) {
      if (loader && !finishing) {
        try { loader.free?.(); } catch { /* already gone */ }
      }
      throw this.signal.aborted ? new AbortError('Loading was aborted.') : e;
    } finally {
      for (const f of this.files.values()) await f.close().catch(() => {});
      this.files.clear();
    }
  }

  throwIfAborted() {
    if (this.signal.aborted) throw new AbortError('Loading was aborted.');
  }

  url(name) {
    return new URL(name.split('/').map(encodeURIComponent).join('/'), this.source.baseUrl).href;
  }

  async file(name) {
    if (!this.files.has(name)) {
      const f = await this.store.openFile(name);
      this.files.set(name, f);
      // Bytes that no entry of the manifest as it was read vouches for are not resumed from.
      if (!this.vouched.has(name) && f.length > 0) await f.reset();
      this.vouched.add(name);
    }
    return this.files.get(name);
  }

  // --- manifest ---------------------------------------------------------------------

  /**
   * The manifest, when it vouches for the files in this model's directory; else a fresh
   * one, after deleting those files. Files are used only when they came from the source
   * this load asks for:
   *  - version 2 naming this model and this source (`source`, the URL the files are fetched
   *    under): used;
   *  - version 1 (earlier releases) of a URL model: its key is its URL, so whatever wrote
   *    there fetched from that URL; used, with each file marked as verified by the sha256
   *    the server stated, or by size only;
   *  - version 1 of a hub repo: earlier releases stored a repo under its id whatever the
   *    endpoint, so these files may come from any server (one visit to a link with
   *    ?endpoint= was enough), and its recorded `source` is only the last load's. The key is
   *    huggingface.co's now. The small files are dropped (fetched again: a few MB) and the
   *    complete weight files kept as `legacy`: used only after they match the sha256 that
   *    huggingface.co publishes for them (verifyLegacy), deleted otherwise;
   *  - anything else (another source or model, an unknown version, torn or missing): not
   *    used, and the directory is emptied.
   */
  async readManifest() {
    const m = await this.store.readManifest();
    const src = this.source;
    let kept = null;
    if (m && m.files && typeof m.files === 'object' && !Array.isArray(m.files) && m.model === src.id) {
      if (m.version === MANIFEST_VERSION && m.source === src.baseUrl && (m.endpoint ?? null) === src.endpoint) kept = m;
      else if (m.version === 1 && src.kind === 'url' && m.source === src.baseUrl) kept = upgradeUrlManifest(m);
      else if (m.version === 1 && src.kind === 'hub' && src.official) kept = legacyHubManifest(m);
    }
    if (!kept) {
      try {
        await this.store.clear();
      } catch (e) {
        throw storageError(e);
      }
      kept = { files: {}, weights: null, totalBytes: null, complete: false };
      if (m) console.warn(`webqwen: the cache of "${src.id}" from ${src.origin} held files it cannot vouch for (another source, version or a torn manifest); they were deleted`);
    }
    this.manifest = {
      ...kept, version: MANIFEST_VERSION, model: src.id, source: src.baseUrl, endpoint: src.endpoint,
    };
    this.vouched = new Set(Object.keys(this.manifest.files));
    this.progress.sizeOnly = this.sizeOnly();
  }

  entry(name) {
    return (this.manifest.files[name] ??= { size: null, sha256: null, verifiedSha256: null, complete: false });
  }

  /** Records how a complete file was verified: 'sha256' | 'git-sha1' | 'size-only'. */
  markVerified(name, how) {
    this.entry(name).verified = how;
    this.progress.sizeOnly = this.sizeOnly();
  }

  /** Complete files accepted without a checksum published by their source. */
  sizeOnly() {
    return Object.entries(this.manifest.files)
      .filter(([, e]) => e.complete && !e.absent && e.verified === 'size-only')
      .map(([name]) => name)
      .sort();
  }

  async saveManifest() {
    this.manifest.updated = new Date().toISOString();
    try {
      await this.store.writeManifest(this.manifest);
    } catch (e) {
      throw storageError(e);
    }
  }

  // --- small files (config, tokenizer, ...) -----------------------------------------

  /** The text of a small file, from the cache when it verifies, else from the network. */
  async small(name, required) {
    this.throwIfAborted();
    const entry = this.entry(name);
    if (entry.absent) return null;
    const f = await this.file(name);
    if (entry.complete && f.length === entry.size) {
      const bytes = await f.read(0, f.length);
      if (sha256Hex(bytes) === (entry.sha256 ?? entry.verifiedSha256)) return closeAndDecode(this, name, bytes);
    }
    this.progress.emit('download', name, true);
    const url = this.url(name);
    let res;
    for (let failures = 0; ; ) {
      try {
        res = await fetch(url, { cache: 'no-store', signal: this.signal });
        if (!retryableStatus(res.status)) break;
        await res.body?.cancel();
      } catch (e) {
        this.throwIfAborted();
        if (++failures > MAX_FAILURES) throw offlineError(name, url, e);
        await sleep(backoffMs(failures), this.signal);
        continue;
      }
      if (++failures > MAX_FAILURES) throw statusError(name, url, res.status);
      await sleep(backoffMs(failures), this.signal);
    }
    if (res.status === 404 || res.status === 410) {
      if (!required) {
        Object.assign(entry, { absent: true, complete: true });
        await this.saveManifest();
        return null;
      }
      throw new BadModelError(`${name} was not found at ${url}. Is "${this.source.id}" a Qwen3 model in MLX format (${this.textFiles.required.join(', ')}, *.safetensors)?`, { file: name, url });
    }
    if (!res.ok) throw statusError(name, url, res.status);
    const bytes = new Uint8Array(await res.arrayBuffer());
    const meta = metaFromResponse(res);
    const digest = sha256Hex(bytes);
    if (meta.size != null && meta.size !== bytes.length) {
      throw new BadModelError(`${name} from ${url} is ${formatBytes(bytes.length)}, but the server stated ${formatBytes(meta.size)}.`, { file: name, url });
    }
    // The checksum the source publishes: the sha256 its response states, else (hub repos)
    // what its file listing says: the sha256 of an LFS file or the git blob id of another.
    let published = meta.sha256 ? { sha256: meta.sha256 } : null;
    if (!published && this.source.apiUrl) {
      const listed = (await this.hubListing())?.get(name);
      if (listed?.sha256 || listed?.gitOid) published = listed;
    }
    let verified = 'size-only';
    if (published?.size != null && published.size !== bytes.length) {
      throw new BadModelError(`${name} from ${url} is ${formatBytes(bytes.length)}, but the repository lists ${formatBytes(published.size)}.`, { file: name, url });
    }
    if (published?.sha256) {
      if (published.sha256 !== digest) {
        throw new BadModelError(`${name} from ${url} does not match its checksum (sha256 ${digest}, server says ${published.sha256}).`, { file: name, url });
      }
      verified = 'sha256';
    } else if (published?.gitOid) {
      const oid = await gitBlobSha1(bytes);
      if (oid != null && oid !== published.gitOid) {
        throw new BadModelError(`${name} from ${url} does not match its checksum (git blob ${oid}, the repository lists ${published.gitOid}).`, { file: name, url });
      }
      if (oid != null) verified = 'git-sha1';
    }
    try {
      await f.reset();
      await f.append(bytes);
      await f.commit();
    } catch (e) {
      throw storageError(e);
    }
    Object.assign(entry, { size: bytes.length, sha256: published?.sha256 ?? null, verifiedSha256: digest, complete: true, absent: false });
    this.markVerified(name, verified);
    await this.saveManifest();
    return closeAndDecode(this, name, bytes);
  }

  // --- weight metadata and headers ---------------------------------------------------

  /**
   * The hub's file listing (its tree API), fetched at most once per load: name ->
   * {size, sha256 (LFS files), gitOid (other files)}; null when there is none or it failed.
   */
  hubListing() {
    if (!this.source.apiUrl) return Promise.resolve(null);
    this.listing ??= (async () => {
      let list;
      try {
        const res = await fetch(this.source.apiUrl, { cache: 'no-store', signal: this.signal });
        if (!res.ok) {
          await res.body?.cancel().catch(() => {});
          return null;
        }
        list = await res.json();
      } catch {
        this.throwIfAborted();
        return null;
      }
      if (!Array.isArray(list)) return null;
      const out = new Map();
      for (const item of list) {
        if (typeof item?.path !== 'string' || (item.type && item.type !== 'file')) continue;
        const size = Number(item.lfs?.size ?? item.size);
        const sha256 = item.lfs ? parseSha256(String(item.lfs.oid ?? item.lfs.sha256 ?? '').replace(/^sha256:/, '')) : null;
        const gitOid = !item.lfs && /^[0-9a-f]{40}$/i.test(String(item.oid ?? '')) ? String(item.oid).toLowerCase() : null;
        out.set(item.path, { size: Number.isSafeInteger(size) && size >= 0 ? size : null, sha256, gitOid });
      }
      return out;
    })();
    return this.listing;
  }

  /**
   * The hub's listing states size and sha256 of every LFS file in one request. Weight
   * downloads are redirected to a CDN whose ETag is not a sha256, so without this the
   * checksum of hub downloads would be unknown. Failure is fine: sizes still come from
   * the responses, and checksums from the first complete download.
   */
  async hubMetadata(weights) {
    if (!this.source.apiUrl) return;
    if (weights.every((name) => this.manifest.files[name]?.complete)) return;
    const listing = await this.hubListing();
    for (const name of weights) {
      const item = listing?.get(name);
      if (!item || this.manifest.files[name]?.complete) continue;
      await this.noteRemote(name, { size: item.size > 0 ? item.size : null, sha256: item.sha256 });
    }
  }

  /**
   * Weight files kept from a version-1 cache of a huggingface.co repo (see readManifest):
   * hashed once and used only when they match the sha256 the hub lists for them now;
   * deleted otherwise. Without the listing (offline) nothing is deleted and the load fails.
   */
  async verifyLegacy(weights) {
    const legacy = weights.filter((name) => this.manifest.files[name]?.legacy);
    if (!legacy.length) return;
    const listing = await this.hubListing();
    if (!listing) throw this.legacyError();
    for (const name of legacy) {
      this.throwIfAborted();
      const entry = this.entry(name);
      const want = listing.get(name);
      const f = await this.file(name);
      let digest = null;
      if (want?.sha256 && f.length === want.size) {
        this.progress.emit('verify', name, true);
        const hasher = new wasm.Sha256();
        try {
          for (let at = 0; at < f.length; at += CACHE_READ_BYTES) {
            this.throwIfAborted();
            const n = Math.min(CACHE_READ_BYTES, f.length - at);
            hasher.update(await f.read(at, n));
            this.progress.add('verify', name, n);
          }
          digest = hasher.hex();
        } finally {
          hasher.free?.();
        }
      }
      this.progress.resetFile(name);
      delete entry.legacy;
      if (digest && digest === want.sha256) {
        Object.assign(entry, { size: want.size, sha256: want.sha256, complete: true, verifiedSha256: digest });
        this.markVerified(name, 'sha256');
      } else {
        if (f.length > 0) console.warn(`webqwen: cached ${name} from an earlier version does not match ${this.source.origin}'s checksum; downloading it again`);
        await f.reset();
        Object.assign(entry, { complete: false, verifiedSha256: null });
      }
      await this.saveManifest();
    }
  }

  legacyError() {
    return new NetworkError(
      `The cached files of "${this.source.id}" were stored by an earlier version of webqwen, which did not record ` +
      `where they came from. They are checked once against the checksums ${this.source.origin} publishes, which ` +
      `could not be fetched from ${this.source.apiUrl}. Connect to the network and load again; nothing was deleted.`,
      { url: this.source.apiUrl },
    );
  }

  /**
   * Records what the server says about a file that is not complete in the cache. A
   * partial file from an older version of the model (different size or sha256) can't be
   * resumed and is dropped. Returns whether the file changed.
   */
  async noteRemote(name, meta) {
    const entry = this.entry(name);
    if (entry.complete) return false;
    const changed = (meta.size != null && entry.size != null && meta.size !== entry.size) ||
      (meta.sha256 != null && entry.sha256 != null && meta.sha256 !== entry.sha256);
    if (changed) {
      const f = await this.file(name);
      await f.reset();
      Object.assign(entry, { size: null, sha256: null, verifiedSha256: null });
    }
    if (meta.size != null) entry.size = meta.size;
    if (meta.sha256 != null) entry.sha256 = meta.sha256;
    return changed;
  }

  async header(name, loader) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.headerOnce(name, loader);
      } catch (e) {
        // A partial file from an older version was dropped: read the new header from scratch.
        if (!(e instanceof RemoteChanged) || attempt >= 2) throw e;
      }
    }
  }

  async headerOnce(name, loader) {
    this.throwIfAborted();
    const entry = this.entry(name);
    const f = await this.file(name);
    if (entry.size != null && f.length > entry.size) await f.reset();
    const first8 = await this.prefix(name, f, 8);
    let n;
    try {
      n = Number(wasm.headerLength(name, first8, entry.size ?? undefined));
    } catch (e) {
      throw new BadModelError(normalizeError(e).message, { file: name });
    }
    const header = await this.prefix(name, f, n);
    wasmCall(() => loader.addHeader(name, header, entry.size ?? undefined));
  }

  /** The first n bytes of a weight file, completing the cached prefix from the network. */
  async prefix(name, f, n) {
    const onMeta = async (meta) => {
      if (await this.noteRemote(name, meta)) throw new RemoteChanged();
    };
    if (!f.persistent) {
      const buf = new Uint8Array(n);
      await this.transfer(name, 0, n, { onChunk: (at, bytes) => buf.set(bytes, at), onRestart: () => {}, onMeta });
      return buf;
    }
    if (f.length < n) {
      await this.transfer(name, f.length, n, { onChunk: (at, bytes) => appendTo(f, bytes), onRestart: () => f.reset(), onMeta });
    }
    return f.read(0, n);
  }

  /** Sizes are needed for the quota check; HEAD whatever neither the hub nor a range response stated. */
  async fillMissingSizes(weights) {
    for (const name of weights) {
      const entry = this.entry(name);
      if (entry.size != null || entry.complete) continue;
      try {
        const res = await fetch(this.url(name), { method: 'HEAD', cache: 'no-store', signal: this.signal });
        if (res.ok) await this.noteRemote(name, metaFromResponse(res));
      } catch {
        this.throwIfAborted(); // offline: the size from the header (plan) will do
      }
    }
  }

  async checkQuota(weights) {
    if (this.store.kind === 'none' || !self.navigator?.storage?.estimate) return;
    let needed = 0;
    for (const name of weights) {
      const entry = this.entry(name);
      const f = await this.file(name);
      if (entry.complete && f.length === entry.size) continue;
      if (entry.size != null) needed += Math.max(0, entry.size - f.length);
    }
    if (needed <= 0) return;
    let estimate;
    try {
      estimate = await navigator.storage.estimate();
    } catch {
      return;
    }
    const quota = Number(estimate?.quota);
    if (!(quota > 0)) return;
    const usage = Number(estimate.usage) || 0;
    const available = Math.max(0, quota - usage);
    if (needed > available) {
      throw new QuotaExceededError(
        `"${this.source.id}" needs ${formatBytes(needed)} more storage, but this site may store only ` +
        `${formatBytes(available)} more (quota ${formatBytes(quota)}, in use ${formatBytes(usage)}). ` +
        'Delete cached models you no longer need or free disk space; installing the app to the home ' +
        'screen or allowing persistent storage can raise the quota.',
        { needed, available, quota, usage },
      );
    }
  }

  /** File sizes: what the headers describe, checked against what the server stated. */
  sizesFrom(plan, weights) {
    const sizes = new Map();
    for (const item of plan?.files ?? []) sizes.set(item.name, Number(item.size));
    for (const name of weights) {
      const stated = this.entry(name).size;
      const described = sizes.get(name);
      if (described == null && stated == null) throw new BadModelError(`The size of ${name} is unknown.`, { file: name });
      if (described != null && stated != null && described !== stated) {
        throw new BadModelError(`${name} is ${formatBytes(stated)} on the server but its header describes ${formatBytes(described)}: the file is truncated or not a valid safetensors file.`, { file: name });
      }
      sizes.set(name, described ?? stated);
    }
    return sizes;
  }

  // --- weights -------------------------------------------------------------------------

  /**
   * Streams one weight file from offset 0 into the loader: the cached prefix first (from
   * storage, in 8 MiB reads), the rest from the network (saved as it arrives). Everything
   * is hashed on the way; a file that fails its checksum after using cached bytes is
   * fetched again in full, overwriting what the loader received.
   */
  async streamWeight(name, size, loader) {
    const entry = this.entry(name);
    const f = await this.file(name);
    for (let attempt = 1; ; attempt++) {
      if (f.length > size) await f.reset();
      const trusted = entry.complete && f.length === size;
      const expected = entry.sha256 ?? (trusted ? entry.verifiedSha256 : null);
      const fromCache = f.length;
      let hasher = new wasm.Sha256();
      let written = 0;
      this.progress.resetFile(name);
      try {
        while (written < fromCache) {
          this.throwIfAborted();
          const n = Math.min(CACHE_READ_BYTES, fromCache - written);
          const bytes = await f.read(written, n);
          await wasmCall(() => loader.write(name, written, bytes));
          hasher.update(bytes);
          written += n;
          this.progress.add('cache', name, n);
        }
        if (written < size) {
          const sink = new BlockSink(BLOCK_BYTES, async (at, block) => {
            // write() may return a promise to hold the stream back while the GPU catches up
            // on uploads (iOS kills the tab near 1.5 GB); awaiting undefined costs nothing.
            await wasmCall(() => loader.write(name, at, block));
            hasher.update(block);
            await appendTo(f, block);
            written = at + block.length;
            this.progress.add('download', name, block.length);
          });
          try {
            await this.transfer(name, written, size, {
              whole: true,
              onChunk: (at, bytes) => sink.push(at, bytes),
              onRestart: async () => {
                // The server ignored the Range request and sends the file from byte 0.
                sink.discard();
                await f.reset();
                hasher.free?.();
                hasher = new wasm.Sha256();
                written = 0;
                this.progress.resetFile(name);
              },
              onMeta: async (meta) => {
                if (await this.noteRemote(name, meta)) {
                  await this.saveManifest();
                  throw new BadModelError(`${name} changed on the server during the download. Load the model again to start over.`, { file: name });
                }
              },
            });
            await sink.flush();
          } catch (e) {
            // Keep every byte that arrived so the next attempt resumes after it.
            await sink.salvage((block) => appendTo(f, block)).catch(() => {});
            await f.commit().catch(() => {});
            throw e;
          }
        }
        const digest = hasher.hex();
        if (written === size && (!expected || digest === expected)) {
          await f.commit();
          Object.assign(entry, { size, verifiedSha256: digest, complete: true });
          // Without a sha256 from the source, only the size (stated by the server and by the
          // file's own header) vouches for a fresh download.
          this.markVerified(name, entry.sha256 ? 'sha256' : 'size-only');
          await this.saveManifest();
          return;
        }
        // Wrong bytes. Never keep them; refetch only if some came from the cache, since a
        // mismatch of freshly downloaded bytes means the server disagrees with itself.
        await f.reset();
        Object.assign(entry, { complete: false, verifiedSha256: null });
        await this.saveManifest();
        if (fromCache === 0 || attempt >= 2) {
          throw new BadModelError(`${name} does not match its checksum (got sha256 ${digest}, expected ${expected}). The download was deleted; try again later.`, { file: name });
        }
        console.warn(`webqwen: cached ${name} is corrupt (sha256 ${digest}, expected ${expected}); downloading it again`);
      } finally {
        hasher.free?.();
      }
    }
  }

  /**
   * Streams bytes [start, end) of a file to onChunk(offset, bytes), in order. A broken
   * connection resumes with a Range request from the next missing byte; a server that
   * answers a range request with the whole file (200) makes it call onRestart() and go on
   * from byte 0. So does a 206 whose Content-Range is missing or does not match the range
   * asked for (such bytes cannot be placed): Range requests then stop for the rest of this
   * load. Gives up after MAX_FAILURES attempts in a row that received nothing.
   */
  async transfer(name, start, end, { onChunk, onRestart, onMeta, whole = false }) {
    const url = this.url(name);
    let offset = start;
    let failures = 0;
    const fail = async (cause) => {
      this.throwIfAborted();
      if (++failures > MAX_FAILURES) throw offlineError(name, url, cause);
      await sleep(backoffMs(failures), this.signal);
    };
    while (offset < end) {
      this.throwIfAborted();
      const headers = {};
      if (!this.noRanges && (offset > 0 || !whole)) headers.Range = whole ? `bytes=${offset}-` : `bytes=${offset}-${end - 1}`;
      let res;
      try {
        res = await fetch(url, { headers, cache: 'no-store', signal: this.signal });
      } catch (e) {
        await fail(e);
        continue;
      }
      let stop = end; // where this response's bytes end
      if (res.status === 206) {
        const raw = res.headers.get('content-range');
        const range = parseContentRange(raw);
        const last = whole ? null : end - 1;
        const length = res.headers.get('content-encoding') ? null : res.headers.get('content-length');
        const valid = headers.Range && range && range.start === offset && range.end >= range.start &&
          (last == null || range.end <= last) && (range.total == null || range.end < range.total) &&
          (length == null || Number(length) === range.end - range.start + 1);
        if (!valid) {
          await res.body?.cancel().catch(() => {});
          if (!headers.Range) {
            throw new NetworkError(`The server answered a plain request for ${name} with 206 Partial Content.`, { url, status: 206 });
          }
          console.warn(`webqwen: the server answered "Range: ${headers.Range}" for ${name} with ` +
            `${raw == null ? 'no Content-Range' : `"Content-Range: ${raw}", Content-Length ${length}`}; downloading whole files from now on`);
          this.noRanges = true;
          if (offset > 0) {
            await onRestart();
            offset = 0;
          }
          continue;
        }
        stop = Math.min(end, range.end + 1);
      } else if (res.status === 200) {
        if (offset > 0) {
          await onRestart();
          offset = 0;
        }
      } else {
        await res.body?.cancel().catch(() => {});
        if (retryableStatus(res.status)) {
          await fail(new Error(`HTTP ${res.status}`));
          continue;
        }
        if (res.status === 416) {
          throw new BadModelError(`${name} on the server is shorter than expected (${formatBytes(end)}); it may have changed. Load the model again.`, { file: name, url });
        }
        throw statusError(name, url, res.status);
      }
      await onMeta?.(metaFromResponse(res));
      const reader = res.body.getReader();
      let received = 0;
      let broken = null;
      while (offset < stop) {
        let step;
        try {
          step = await reader.read();
        } catch (e) {
          broken = e;
          break;
        }
        if (step.done) break;
        let chunk = step.value;
        if (offset + chunk.length > stop) chunk = chunk.subarray(0, stop - offset);
        try {
          await onChunk(offset, chunk);
        } catch (e) {
          reader.cancel().catch(() => {});
          throw e;
        }
        offset += chunk.length;
        received += chunk.length;
      }
      if (offset >= stop) reader.cancel().catch(() => {}); // a header range may come with more than asked for
      if (offset >= end) break;
      if (received > 0) failures = 0;
      if (offset >= stop) continue; // the server sent a shorter range than asked for: ask for the rest
      await fail(broken ?? new Error('the connection closed before the end of the file'));
    }
    return offset;
  }
}

// ---------------------------------------------------------------------------------------
// Generation

async function runGeneration(id, request) {
  if (!engine || unloading) {
    post({ type: 'gen-error', id, error: toWire(new WebQwenError('The engine is not loaded.')) });
    return;
  }
  const gen = { id, cancelled: pendingCancels.delete(id) };
  generation = gen;
  const aborted = wasm.abortFinishReason();
  const t0 = performance.now();
  let tFirst = null;
  let cancelSent = false;
  let stepsAfterCancel = 0;
  try {
    if (gen.cancelled) {
      post({ type: 'done', id, finish_reason: aborted, usage: usageOf(null, t0, null) });
      return;
    }
    wasmCall(() => engine.start(JSON.stringify(request)));
    for (;;) {
      if (gen.cancelled && !cancelSent) {
        wasmCall(() => engine.cancel());
        cancelSent = true;
      }
      const step = await wasmCall(() => engine.next());
      tFirst ??= performance.now();
      if (!gen.cancelled && (step.reasoning || step.content)) {
        post({ type: 'delta', id, reasoning: step.reasoning || '', content: step.content || '' });
      }
      if (step.done) {
        const reason = gen.cancelled ? aborted : step.finish_reason;
        post({ type: 'done', id, finish_reason: reason, usage: usageOf(step, t0, tFirst) });
        return;
      }
      // cancel() is meant to end the generation at the next step; never spin on an engine
      // that keeps going.
      if (cancelSent && ++stepsAfterCancel > 4) {
        post({ type: 'done', id, finish_reason: aborted, usage: usageOf(step, t0, tFirst) });
        return;
      }
    }
  } catch (e) {
    post({ type: 'gen-error', id, error: toWire(e) });
  } finally {
    generation = null;
  }
}

/**
 * OpenAI's usage, plus `extra`: latencies as this side sees them, and token rates as the
 * engine measured them (`engine::Generation` defines them; the last delta carries them).
 */
function usageOf(step, t0, tFirst) {
  const prompt = Number(step?.usage?.prompt_tokens) || 0;
  const completion = Number(step?.usage?.completion_tokens) || 0;
  const tEnd = performance.now();
  const extra = { e2e_latency_s: (tEnd - t0) / 1000 };
  if (tFirst != null) extra.time_to_first_token_s = (tFirst - t0) / 1000;
  const timings = step?.timings;
  if (timings?.prefill_tokens_per_second > 0) extra.prefill_tokens_per_s = timings.prefill_tokens_per_second;
  if (timings?.decode_tokens_per_second > 0) extra.decode_tokens_per_s = timings.decode_tokens_per_second;
  if (timings) extra.engine = timings;
  // webqwen extension: the generated token ids (tests compare them with the native engine)
  if (step?.tokens) extra.token_ids = step.tokens;
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, extra };
}

async function unload() {
  unloading = true;
  loadController?.abort();
  if (generation) generation.cancelled = true;
  await queue.catch(() => {});
  if (engine) {
    try { engine.free(); } catch { /* already freed */ }
    engine = null;
  }
  return true;
}

// ---------------------------------------------------------------------------------------
// Helpers

/** A partial cached file turned out to be from an older version of the model and was dropped. */
class RemoteChanged extends Error {}

/** Coalesces network chunks into blocks; sink(offset, block) gets them in order. */
class BlockSink {
  constructor(size, sink) {
    this.size = size;
    this.sink = sink;
    this.buf = new Uint8Array(size);
    this.len = 0;
    this.start = 0; // file offset of buf[0]
  }

  async push(offset, bytes) {
    if (this.len === 0) this.start = offset;
    let done = 0;
    while (done < bytes.length) {
      const n = Math.min(bytes.length - done, this.size - this.len);
      this.buf.set(bytes.subarray(done, done + n), this.len);
      this.len += n;
      done += n;
      if (this.len === this.size) await this.flush();
    }
    if (this.len === 0) this.start = offset + bytes.length;
  }

  async flush() {
    if (this.len === 0) return;
    // The loader and the cache copy what they keep, so one buffer is reused throughout.
    const block = this.buf.subarray(0, this.len);
    const at = this.start;
    this.len = 0;
    this.start = at + block.length;
    await this.sink(at, block);
  }

  discard() {
    this.len = 0;
  }

  /** On failure: hand the gathered bytes to `save` only (not to the loader). */
  async salvage(save) {
    if (this.len === 0) return;
    const block = this.buf.subarray(0, this.len);
    this.len = 0;
    await save(block);
  }
}

async function appendTo(f, bytes) {
  try {
    await f.append(bytes);
  } catch (e) {
    throw storageError(e);
  }
}

function storageError(e) {
  if (e?.name === 'QuotaExceededError') {
    return new QuotaExceededError(
      'The browser refused to store more of the model (storage quota exceeded). Delete cached models you no longer need or free disk space, then load again: the download resumes.');
  }
  return normalizeError(e);
}

async function closeAndDecode(job, name, bytes) {
  const f = job.files.get(name);
  job.files.delete(name);
  await f?.close().catch(() => {});
  return new TextDecoder().decode(bytes);
}

/** A version-1 manifest of a URL model, as version 2 (see ModelLoad.readManifest). */
function upgradeUrlManifest(m) {
  const files = {};
  for (const [name, e] of Object.entries(m.files)) {
    if (!e || typeof e !== 'object') continue;
    files[name] = { ...e };
    if (e.complete && !e.absent) files[name].verified = e.sha256 ? 'sha256' : 'size-only';
  }
  return { files, weights: m.weights ?? null, totalBytes: m.totalBytes ?? null, complete: Boolean(m.complete) };
}

/**
 * A version-1 manifest of a hub repo, as version 2 (see ModelLoad.readManifest): nothing
 * in it is trusted. Complete weight files are kept as `legacy`, with their size only (to
 * tell a different file at once); every other entry is dropped, so its bytes are not used.
 */
function legacyHubManifest(m) {
  const files = {};
  for (const [name, e] of Object.entries(m.files)) {
    if (!name.endsWith('.safetensors') || !e?.complete || !(Number.isSafeInteger(e.size) && e.size > 0)) continue;
    files[name] = { size: e.size, sha256: null, verifiedSha256: null, complete: false, legacy: true };
  }
  return { files, weights: null, totalBytes: null, complete: false };
}

/** The git blob id (sha1 of "blob <length>\0" + bytes) the hub lists for non-LFS files; null without WebCrypto. */
async function gitBlobSha1(bytes) {
  if (!globalThis.crypto?.subtle) return null;
  const head = new TextEncoder().encode(`blob ${bytes.length}\0`);
  const all = new Uint8Array(head.length + bytes.length);
  all.set(head);
  all.set(bytes, head.length);
  const digest = await crypto.subtle.digest('SHA-1', all);
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, '0')).join('');
}

function sha256Hex(bytes) {
  const h = new wasm.Sha256();
  try {
    h.update(bytes);
    return h.hex();
  } finally {
    h.free?.();
  }
}

function parseContentRange(value) {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/i.exec(value?.trim() ?? '');
  if (!m) return null;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === '*' ? null : Number(m[3]) };
}

/** Size and sha256 as stated by a response (or null when it does not say). */
function metaFromResponse(res) {
  const h = res.headers;
  let size = parseContentRange(h.get('content-range'))?.total ?? null;
  const linked = Number(h.get('x-linked-size'));
  if (size == null && linked > 0) size = linked;
  if (size == null && res.status === 200 && h.has('content-length') && !h.get('content-encoding')) {
    const n = Number(h.get('content-length'));
    if (Number.isFinite(n) && n >= 0) size = n;
  }
  // After a redirect the response comes from a CDN whose ETag is its own (the hub's Xet
  // CDN uses 64-hex hashes that are not sha256): trust only the origin's own ETag.
  const sha256 = parseSha256(h.get('x-linked-etag')) ?? (res.redirected ? null : parseSha256(h.get('etag')));
  return { size, sha256 };
}

function retryableStatus(status) {
  return status === 408 || status === 425 || status === 429 || status >= 500;
}

function statusError(name, url, status) {
  if (status === 401 || status === 403) {
    return new NetworkError(`Access to ${name} was denied (HTTP ${status}) at ${url}. The repository may be private or gated, or the server does not allow this site (CORS).`, { url, status });
  }
  if (status === 404 || status === 410) {
    return new BadModelError(`${name} was not found at ${url} (HTTP ${status}).`, { file: name, url, status });
  }
  return new NetworkError(`Downloading ${name} failed with HTTP ${status} at ${url}.`, { url, status });
}

function offlineError(name, url, cause) {
  return new NetworkError(
    `Could not download ${name} from ${url} (${cause?.message || cause}). ` +
    'Check the network connection and load again: finished files stay cached and a partial download resumes.',
    { url },
  );
}

function backoffMs(failures) {
  return Math.min(4000, 250 * 2 ** (failures - 1));
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(new AbortError('Loading was aborted.'));
    const t = setTimeout(() => { signal?.removeEventListener('abort', onAbort); resolve(); }, ms);
    const onAbort = () => { clearTimeout(t); reject(new AbortError('Loading was aborted.')); };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

function formatBytes(n) {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)} GB`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)} MB`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)} kB`;
  return `${n} B`;
}

/** Throttled progress events; speed over a sliding window of the current phase. */
class Progress {
  constructor(send) {
    this.send = send;
    this.total = 0;
    this.sizeOnly = []; // complete files accepted without a published checksum
    this.perFile = new Map();
    this.phase = null;
    this.samples = []; // [time, bytes moved in this phase]
    this.moved = 0;
    this.last = 0;
  }

  get loaded() {
    let sum = 0;
    for (const n of this.perFile.values()) sum += n;
    return sum;
  }

  resetFile(name) {
    this.perFile.set(name, 0);
  }

  add(phase, file, n) {
    this.perFile.set(file, (this.perFile.get(file) || 0) + n);
    if (phase !== this.phase) {
      this.phase = phase;
      this.samples = [];
      this.moved = 0;
    }
    this.moved += n;
    const now = performance.now();
    this.samples.push([now, this.moved]);
    while (this.samples.length > 2 && now - this.samples[0][0] > SPEED_WINDOW_MS) this.samples.shift();
    this.emit(phase, file, false);
  }

  bytesPerSecond() {
    if (this.samples.length < 2) return 0;
    const [t0, b0] = this.samples[0];
    const [t1, b1] = this.samples[this.samples.length - 1];
    return t1 > t0 ? ((b1 - b0) * 1000) / (t1 - t0) : 0;
  }

  emit(phase, file, force) {
    const now = performance.now();
    if (!force && now - this.last < PROGRESS_INTERVAL_MS) return;
    this.last = now;
    const done = phase === 'compile' || phase === 'ready';
    this.send({
      type: 'progress',
      progress: {
        phase,
        file,
        loaded: done ? this.total : this.loaded,
        total: this.total,
        bytesPerSecond: phase === 'download' || phase === 'cache' ? Math.round(this.bytesPerSecond()) : 0,
        sizeOnly: [...this.sizeOnly],
      },
    });
  }
}
