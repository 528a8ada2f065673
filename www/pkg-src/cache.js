// Persistent cache of model files, shared by the engine worker (reads and writes) and the
// main thread (listing and deleting).
//
// Layout, one directory (or Cache API key prefix) per model and source, keyed by a
// filesystem-safe encoding of the model id and, for hub repos from another endpoint than
// huggingface.co, that endpoint (see normalizeModel):
//
//   OPFS   webqwen-models/<key>/manifest.json
//          webqwen-models/<key>/files/<file>            one OPFS file, written through a
//                                                       sync access handle (dedicated worker)
//          webqwen-models/<key>/segments/<file>/<i>      fallback when sync handles are missing:
//                                                       16 MiB pieces written with createWritable
//   Cache  https://webqwen.invalid/<key>/manifest.json  in the Cache API bucket `webqwen-models-v1`,
//          https://webqwen.invalid/<key>/files/<file>/<i>   used when OPFS is missing (same pieces)
//
// Why pieces: createWritable and the Cache API cannot append to an existing entry, and
// rewriting a growing file on every resume would copy it again and again. Fixed-size
// pieces keep memory bounded (one piece at most) and make an interrupted download resumable.
//
// The manifest records where the files came from (`source`: the URL they are fetched
// under; `endpoint` for hub repos), what the server said each file should be (size, sha256
// when known), whether it was verified complete and against what (`verified`: 'sha256' or
// 'git-sha1' when the bytes matched a checksum the server published, 'size-only' when it
// published none). The bytes on disk are the truth for how much of a file is present; the
// manifest is the truth for whether those bytes were ever verified, and from where. Files
// whose manifest does not vouch for them (missing, torn, or naming another source) are
// deleted before anything is downloaded into the directory.

const OPFS_DIR = 'webqwen-models';
const CACHE_NAME = 'webqwen-models-v1';
const CACHE_ORIGIN = 'https://webqwen.invalid/';
const SEGMENT_BYTES = 16 << 20;
const SIZE_HEADER = 'x-webqwen-size';

export const DEFAULT_ENDPOINT = 'https://huggingface.co';
// 2: the manifest records where its files came from (`source`, `endpoint`) and how each was
// verified; see ModelLoad.readManifest in worker.js for what happens to version 1.
export const MANIFEST_VERSION = 2;

// ---------------------------------------------------------------------------------------
// Model ids

const HUB_REPO = /^[A-Za-z0-9][A-Za-z0-9._-]*\/[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function isUrlModel(model) {
  return /^https?:\/\//i.test(model) || model.startsWith('/') || model.startsWith('./') || model.startsWith('../');
}

/**
 * The canonical form of a hub endpoint: an absolute http(s) URL without query, fragment or
 * trailing slash (so "https://HuggingFace.co/" is the default endpoint).
 */
export function normalizeEndpoint(endpoint) {
  if (endpoint == null || endpoint === '') return DEFAULT_ENDPOINT;
  let url;
  try {
    url = new URL(String(endpoint).trim());
  } catch {
    throw new TypeError(`\`endpoint\` "${endpoint}" is not an absolute URL (like "https://huggingface.co").`);
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') {
    throw new TypeError(`\`endpoint\` must be an http(s) URL, not "${url.protocol}".`);
  }
  url.search = '';
  url.hash = '';
  return url.href.replace(/\/+$/, '');
}

/**
 * Resolves what the user passed as `model` into where its files live and the key its cache
 * is stored under. The key names the source as well as the model, so files from one
 * server can never be taken for another's:
 *  - hub repos from the default endpoint are keyed by the repo id alone (the layout of
 *    earlier versions, so their caches stay where they are);
 *  - hub repos from any other endpoint by `<repo>@<endpoint>` ("@" never occurs in a repo
 *    id, and URL keys start with "http~3a", so no two kinds of key can meet);
 *  - URLs by their absolute form (relative ones resolve against `base`, which must be the
 *    page's URL: a worker's own URL would resolve them differently).
 * `origin` is the origin the files are requested from, for showing to the user.
 */
export function normalizeModel(model, { endpoint = DEFAULT_ENDPOINT, base } = {}) {
  if (typeof model !== 'string' || !model.trim()) {
    throw new TypeError('`model` must be a Hugging Face repo id like "Qwen/Qwen3-0.6B-MLX-4bit" or a URL of a model directory.');
  }
  model = model.trim();
  if (isUrlModel(model)) {
    let url;
    try {
      url = new URL(model, base ?? globalThis.location?.href);
    } catch {
      throw new TypeError(`"${model}" is not a valid URL.`);
    }
    if (url.protocol !== 'https:' && url.protocol !== 'http:') throw new TypeError(`"${model}" is not an http(s) URL.`);
    url.hash = '';
    url.search = '';
    const baseUrl = url.href.endsWith('/') ? url.href : url.href + '/';
    const id = baseUrl.replace(/\/+$/, '');
    return { id, kind: 'url', baseUrl, apiUrl: null, endpoint: null, origin: url.origin, official: false, key: safeName(id) };
  }
  if (!HUB_REPO.test(model)) {
    throw new TypeError(`"${model}" is neither a Hugging Face repo id ("owner/name") nor a URL (http(s)://, /, ./).`);
  }
  const ep = normalizeEndpoint(endpoint);
  const official = ep === DEFAULT_ENDPOINT;
  return {
    id: model,
    kind: 'hub',
    baseUrl: `${ep}/${model}/resolve/main/`,
    apiUrl: `${ep}/api/models/${model}/tree/main`,
    endpoint: ep,
    origin: new URL(ep).origin,
    official,
    key: safeName(official ? model : `${model}@${ep}`),
  };
}

/**
 * Filesystem-safe and reversible-enough name: [A-Za-z0-9._-] kept, every other byte as
 * `~xx`. OPFS forbids `/`, `\`, "." and ".."; long ids are cut and suffixed with a hash
 * so they stay under common name-length limits.
 */
export function safeName(s) {
  let out = '';
  for (const byte of new TextEncoder().encode(s)) {
    const c = String.fromCharCode(byte);
    out += /[A-Za-z0-9_-]/.test(c) || (c === '.' && out.length > 0) ? c : '~' + byte.toString(16).padStart(2, '0');
  }
  if (out.length > 120) out = out.slice(0, 100) + '~~' + fnv1a64(s);
  return out;
}

function fnv1a64(s) {
  let h = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(s)) {
    h ^= BigInt(byte);
    h = (h * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return h.toString(16).padStart(16, '0');
}

/** The sha256 stated by an `ETag` / `X-Linked-Etag` value, or null (git sha1 etags, MD5s, ...). */
export function parseSha256(etag) {
  if (!etag) return null;
  const v = etag.trim().replace(/^W\//, '').replace(/^"(.*)"$/, '$1');
  return /^[0-9a-f]{64}$/i.test(v) ? v.toLowerCase() : null;
}

export function lockName(key) {
  return `webqwen-model:${key}`;
}

// ---------------------------------------------------------------------------------------
// Stores

/**
 * Opens the store for one model. `kind`: 'auto' (OPFS, else Cache API, else none),
 * 'opfs', 'cache' or 'none'. 'auto' never throws: private-browsing modes that refuse
 * storage get the 'none' store, which downloads without caching.
 */
export async function openModelStore(key, kind = 'auto') {
  const tried = [];
  if (kind === 'auto' || kind === 'opfs') {
    try {
      return await OpfsStore.open(key);
    } catch (e) {
      tried.push(`OPFS: ${e?.message || e}`);
      if (kind === 'opfs') throw new Error(`OPFS storage is not available here (${tried[0]}).`);
    }
  }
  if (kind === 'auto' || kind === 'cache') {
    try {
      return await CacheStore.open(key);
    } catch (e) {
      tried.push(`Cache API: ${e?.message || e}`);
      if (kind === 'cache') throw new Error(`Cache API storage is not available here (${tried.at(-1)}).`);
    }
  }
  if (kind !== 'auto' && kind !== 'none') throw new TypeError(`Unknown storage kind "${kind}" (auto, opfs, cache, none).`);
  const store = new NoneStore();
  store.unavailable = tried;
  return store;
}

class NoneStore {
  kind = 'none';
  async readManifest() { return null; }
  async writeManifest() {}
  async clear() {}
  async openFile() { return new NullFile(); }
  async close() {}
}

/** A store that keeps nothing: every byte comes from the network. */
class NullFile {
  persistent = false;
  length = 0;
  async read() { throw new Error('nothing cached'); }
  async append() {}
  async reset() {}
  async commit() {}
  async close() {}
}

class OpfsStore {
  kind = 'opfs';

  static async open(key) {
    if (!globalThis.navigator?.storage?.getDirectory) throw new Error('navigator.storage.getDirectory is missing');
    const root = await navigator.storage.getDirectory();
    const top = await root.getDirectoryHandle(OPFS_DIR, { create: true });
    const dir = await top.getDirectoryHandle(key, { create: true });
    return new OpfsStore(dir);
  }

  constructor(dir) {
    this.dir = dir;
    // Sync access handles exist only in dedicated workers; elsewhere fall back to pieces
    // written with createWritable.
    this.sync = typeof FileSystemFileHandle !== 'undefined' && 'createSyncAccessHandle' in FileSystemFileHandle.prototype;
    if (!this.sync && !('createWritable' in FileSystemFileHandle.prototype)) {
      throw new Error('OPFS files cannot be written in this context');
    }
  }

  async readManifest() {
    try {
      const fh = await this.dir.getFileHandle('manifest.json');
      return JSON.parse(await (await fh.getFile()).text());
    } catch {
      return null; // missing or torn: treated as "nothing verified"
    }
  }

  async writeManifest(manifest) {
    const bytes = new TextEncoder().encode(JSON.stringify(manifest, null, 1));
    const fh = await this.dir.getFileHandle('manifest.json', { create: true });
    if (this.sync) {
      const h = await fh.createSyncAccessHandle();
      try {
        await h.truncate(0);
        await h.write(bytes, { at: 0 });
        await h.flush();
      } finally {
        await h.close();
      }
    } else {
      const w = await fh.createWritable();
      await w.write(bytes);
      await w.close();
    }
  }

  /** Deletes the manifest and every file (no file may be open). */
  async clear() {
    for (const name of ['manifest.json', 'files', 'segments']) {
      try {
        await this.dir.removeEntry(name, { recursive: true });
      } catch (e) {
        if (e?.name !== 'NotFoundError') throw e;
      }
    }
  }

  async openFile(name) {
    if (this.sync) {
      const files = await this.dir.getDirectoryHandle('files', { create: true });
      return OpfsSyncFile.open(files, safeName(name));
    }
    const segs = await this.dir.getDirectoryHandle('segments', { create: true });
    const dir = await segs.getDirectoryHandle(safeName(name), { create: true });
    return SegmentFile.open(new OpfsPieces(dir));
  }

  async close() {}
}

class OpfsSyncFile {
  persistent = true;

  static async open(dir, safe) {
    const fh = await dir.getFileHandle(safe, { create: true });
    let handle;
    try {
      handle = await fh.createSyncAccessHandle();
    } catch (e) {
      if (e?.name === 'NoModificationAllowedError') {
        throw new Error('The cached model files are in use by another tab or worker. Close it or wait for its download to finish.');
      }
      throw e;
    }
    const f = new OpfsSyncFile(handle);
    // Older Safari returned promises from the sync-handle methods; awaiting covers both.
    f.length = await handle.getSize();
    return f;
  }

  constructor(handle) {
    this.handle = handle;
    this.length = 0;
  }

  async read(offset, length) {
    const buf = new Uint8Array(length);
    const n = await this.handle.read(buf, { at: offset });
    if (n !== length) throw new Error(`short read from the cache (${n} of ${length} bytes at ${offset})`);
    return buf;
  }

  async append(bytes) {
    const n = await this.handle.write(bytes, { at: this.length });
    if (n !== bytes.length) {
      throw Object.assign(new Error(`the cache accepted only ${n} of ${bytes.length} bytes`), { name: 'QuotaExceededError' });
    }
    this.length += n;
  }

  async reset() {
    await this.handle.truncate(0);
    this.length = 0;
  }

  async commit() {
    await this.handle.flush();
  }

  async close() {
    try {
      await this.handle.flush();
    } finally {
      await this.handle.close();
    }
  }
}

/**
 * A file stored as numbered pieces of SEGMENT_BYTES (the last one shorter). The trailing
 * piece under construction lives in memory and is written on commit()/close(), so at most
 * one piece is ever held in memory. Writing piece i deletes piece i+1, so pieces beyond the
 * end of the current bytes (left by an older, longer version) can never be read back.
 */
class SegmentFile {
  persistent = true;

  static async open(pieces) {
    const f = new SegmentFile(pieces);
    for (let i = 0; ; i++) {
      const blob = await pieces.get(i);
      if (!blob) break;
      if (blob.size === SEGMENT_BYTES) {
        f.full = i + 1;
        continue;
      }
      // A short piece is the tail: load it so appends continue it.
      f.tail.set(new Uint8Array(await blob.arrayBuffer()));
      f.tailLength = blob.size;
      break;
    }
    return f;
  }

  constructor(pieces) {
    this.pieces = pieces;
    this.full = 0; // pieces of exactly SEGMENT_BYTES, stored
    this.tail = new Uint8Array(SEGMENT_BYTES);
    this.tailLength = 0;
    this.tailDirty = false;
    this.lastPiece = { index: -1, blob: null };
  }

  get length() {
    return this.full * SEGMENT_BYTES + this.tailLength;
  }

  async read(offset, length) {
    if (offset + length > this.length) throw new Error('read past the cached bytes');
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const pos = offset + done;
      const index = Math.floor(pos / SEGMENT_BYTES);
      const within = pos - index * SEGMENT_BYTES;
      const n = Math.min(length - done, SEGMENT_BYTES - within);
      if (index >= this.full) {
        out.set(this.tail.subarray(within, within + n), done);
      } else {
        if (this.lastPiece.index !== index) {
          const blob = await this.pieces.get(index);
          if (!blob || blob.size !== SEGMENT_BYTES) throw new Error(`cached piece ${index} vanished`);
          this.lastPiece = { index, blob };
        }
        out.set(new Uint8Array(await this.lastPiece.blob.slice(within, within + n).arrayBuffer()), done);
      }
      done += n;
    }
    return out;
  }

  async append(bytes) {
    let done = 0;
    while (done < bytes.length) {
      const n = Math.min(bytes.length - done, SEGMENT_BYTES - this.tailLength);
      this.tail.set(bytes.subarray(done, done + n), this.tailLength);
      this.tailLength += n;
      this.tailDirty = true;
      done += n;
      if (this.tailLength === SEGMENT_BYTES) {
        await this.pieces.put(this.full, this.tail);
        this.full += 1;
        this.tailLength = 0;
        this.tailDirty = false;
      }
    }
  }

  async reset() {
    for (let i = 0; await this.pieces.delete(i); i++);
    this.full = 0;
    this.tailLength = 0;
    this.tailDirty = false;
    this.lastPiece = { index: -1, blob: null };
  }

  async commit() {
    if (this.tailDirty && this.tailLength > 0) {
      await this.pieces.put(this.full, this.tail.subarray(0, this.tailLength));
      this.tailDirty = false;
    }
  }

  async close() {
    // Keeping the partial tail makes the next resume start exactly where this one stopped.
    await this.commit();
  }
}

class OpfsPieces {
  constructor(dir) { this.dir = dir; }

  async get(i) {
    try {
      return await (await this.dir.getFileHandle(String(i))).getFile();
    } catch {
      return null;
    }
  }

  async put(i, bytes) {
    const fh = await this.dir.getFileHandle(String(i), { create: true });
    const w = await fh.createWritable();
    try {
      await w.write(bytes);
      await w.close();
    } catch (e) {
      await w.abort?.().catch(() => {});
      throw e;
    }
    await this.delete(i + 1);
  }

  async delete(i) {
    try {
      await this.dir.removeEntry(String(i));
      return true;
    } catch {
      return false;
    }
  }
}

class CacheStore {
  kind = 'cache';

  static async open(key) {
    if (!globalThis.caches) throw new Error('the Cache API is missing');
    return new CacheStore(await caches.open(CACHE_NAME), key);
  }

  constructor(cache, key) {
    this.cache = cache;
    this.prefix = `${CACHE_ORIGIN}${key}/`;
  }

  async readManifest() {
    try {
      const res = await this.cache.match(this.prefix + 'manifest.json');
      return res ? await res.json() : null;
    } catch {
      return null;
    }
  }

  async writeManifest(manifest) {
    await this.cache.put(this.prefix + 'manifest.json', new Response(JSON.stringify(manifest), {
      headers: { 'content-type': 'application/json' },
    }));
  }

  async clear() {
    for (const req of await this.cache.keys()) {
      if (req.url.startsWith(this.prefix)) await this.cache.delete(req);
    }
  }

  async openFile(name) {
    return SegmentFile.open(new CachePieces(this.cache, `${this.prefix}files/${safeName(name)}/`));
  }

  async close() {}
}

class CachePieces {
  constructor(cache, prefix) {
    this.cache = cache;
    this.prefix = prefix;
  }

  async get(i) {
    const res = await this.cache.match(this.prefix + i);
    return res ? res.blob() : null;
  }

  async put(i, bytes) {
    // The Response constructor copies the bytes, so the caller may reuse its buffer.
    await this.cache.put(this.prefix + i, new Response(bytes, {
      headers: { 'content-type': 'application/octet-stream', [SIZE_HEADER]: String(bytes.length) },
    }));
    await this.delete(i + 1);
  }

  async delete(i) {
    return this.cache.delete(this.prefix + i);
  }
}

// ---------------------------------------------------------------------------------------
// Listing and deleting (main thread or worker)

async function opfsTop(create = false) {
  if (!globalThis.navigator?.storage?.getDirectory) return null;
  try {
    const root = await navigator.storage.getDirectory();
    return await root.getDirectoryHandle(OPFS_DIR, { create });
  } catch {
    return null;
  }
}

async function directoryBytes(dir) {
  let total = 0;
  for await (const handle of dir.values()) {
    if (handle.kind === 'file') total += (await handle.getFile()).size;
    else total += await directoryBytes(handle);
  }
  return total;
}

/**
 * Whose files an entry holds, as far as its manifest shows: the model id, the hub endpoint
 * (null for URL models) and the origin the files came from. A manifest that does not match
 * the key it is stored under (torn, foreign or tampered with) identifies nothing: the entry
 * is listed with `model: null`, to be deleted.
 */
function identify(manifest, key) {
  const none = { model: null, endpoint: null, origin: null };
  if (!manifest || typeof manifest.model !== 'string') return none;
  let source;
  try {
    // Version 1 predates keys that name the source: there a repo id's key is that of
    // huggingface.co now (its files are checked against the hub before they are used again).
    const endpoint = manifest.version === 1 ? DEFAULT_ENDPOINT : manifest.endpoint ?? undefined;
    source = normalizeModel(manifest.model, { endpoint });
  } catch {
    return none;
  }
  if (source.key !== key) return none;
  if ((manifest.version !== 1 || source.kind === 'url') && manifest.source !== source.baseUrl) return none;
  return { model: source.id, endpoint: source.endpoint, origin: source.origin };
}

function summary(manifest, storage, key, bytes) {
  return {
    ...identify(manifest, key),
    key,
    storage,
    bytes,
    totalBytes: manifest?.totalBytes ?? null,
    complete: Boolean(manifest?.complete),
    updated: manifest?.updated ?? null,
  };
}

/**
 * Models with anything cached, complete or not. `bytes` is what they occupy now;
 * `totalBytes` what the whole model takes once complete (when known); `endpoint` and
 * `origin` say where the files came from (the same repo id from two endpoints is two
 * entries).
 */
export async function listCachedModels() {
  const out = [];
  const top = await opfsTop();
  if (top) {
    for await (const [key, handle] of top.entries()) {
      if (handle.kind !== 'directory') continue;
      let manifest = null;
      try {
        manifest = JSON.parse(await (await (await handle.getFileHandle('manifest.json')).getFile()).text());
      } catch { /* partial or torn: still listed so it can be deleted */ }
      out.push(summary(manifest, 'opfs', key, await directoryBytes(handle)));
    }
  }
  if (globalThis.caches && (await caches.has(CACHE_NAME))) {
    const cache = await caches.open(CACHE_NAME);
    const groups = new Map();
    for (const req of await cache.keys()) {
      if (!req.url.startsWith(CACHE_ORIGIN)) continue;
      const rest = req.url.slice(CACHE_ORIGIN.length);
      const key = rest.slice(0, rest.indexOf('/'));
      if (!groups.has(key)) groups.set(key, { manifest: null, bytes: 0 });
      const g = groups.get(key);
      const res = await cache.match(req);
      if (!res) continue;
      if (rest.endsWith('/manifest.json')) g.manifest = await res.json().catch(() => null);
      else g.bytes += Number(res.headers.get(SIZE_HEADER)) || (await res.blob()).size;
    }
    for (const [key, g] of groups) out.push(summary(g.manifest, 'cache', key, g.bytes));
  }
  out.sort((a, b) => String(a.model ?? a.key).localeCompare(String(b.model ?? b.key)));
  return out;
}

/**
 * Deletes everything cached for `model`: a repo id (from `endpoint`, default the hub) or
 * URL as given to createEngine, or an entry as listed by listCachedModels (which also
 * deletes entries whose manifest is unreadable). Returns whether anything was deleted.
 * Refuses while the model is being loaded in some tab, since that load holds its files open.
 */
export async function deleteCachedModel(model, { endpoint, base } = {}) {
  let key;
  if (model && typeof model === 'object') {
    key = model.key;
    if (typeof key !== 'string' || !/^[A-Za-z0-9_~-][A-Za-z0-9._~-]*$/.test(key)) {
      throw new TypeError('deleteCachedModel() takes a model id, or an entry from listCachedModels().');
    }
    model = model.model ?? key;
  } else {
    ({ key } = normalizeModel(model, { endpoint, base }));
  }
  const run = async () => {
    let deleted = false;
    const top = await opfsTop();
    if (top) {
      try {
        await top.removeEntry(key, { recursive: true });
        deleted = true;
      } catch (e) {
        if (e?.name !== 'NotFoundError') throw e;
      }
    }
    if (globalThis.caches && (await caches.has(CACHE_NAME))) {
      const cache = await caches.open(CACHE_NAME);
      const prefix = `${CACHE_ORIGIN}${key}/`;
      for (const req of await cache.keys()) {
        if (req.url.startsWith(prefix) && (await cache.delete(req))) deleted = true;
      }
    }
    return deleted;
  };
  if (!globalThis.navigator?.locks) return run();
  return navigator.locks.request(lockName(key), { ifAvailable: true }, async (lock) => {
    if (!lock) {
      throw Object.assign(new Error(`"${model}" is being loaded right now (in this or another tab). Try again when loading has finished.`), { name: 'WebQwenError' });
    }
    return run();
  });
}
