// Typed errors of the webqwen package.
//
// Errors are thrown in the engine worker (or inside the wasm module) and cross the
// worker boundary as plain `{name, message, ...fields}` objects; `fromWire` turns them back
// into instances of the classes below so `instanceof` and `err.name` both work on the
// main thread. Names are spelled out as strings (not taken from the class) because
// bundlers may minify class names.

export class WebQwenError extends Error {
  constructor(message, fields) {
    super(message);
    this.name = 'WebQwenError';
    if (fields) Object.assign(this, fields);
  }
}

/** No WebGPU in this browser or context, or no usable adapter. */
export class WebGPUUnavailableError extends WebQwenError {
  constructor(message, fields) { super(message, fields); this.name = 'WebGPUUnavailableError'; }
}

/** The device's buffer/binding limits cannot hold this model (plus KV cache) as configured. */
export class LimitsTooSmallError extends WebQwenError {
  constructor(message, fields) { super(message, fields); this.name = 'LimitsTooSmallError'; }
}

/** Not enough storage quota to cache the model. Carries `needed`, `available`, `quota`, `usage` (bytes). */
export class QuotaExceededError extends WebQwenError {
  constructor(message, fields) { super(message, fields); this.name = 'QuotaExceededError'; }
}

/** The network failed (offline, server error, access denied) and the cache could not stand in. */
export class NetworkError extends WebQwenError {
  constructor(message, fields) { super(message, fields); this.name = 'NetworkError'; }
}

/** The model files are missing, malformed, unsupported, or do not match their checksums. */
export class BadModelError extends WebQwenError {
  constructor(message, fields) { super(message, fields); this.name = 'BadModelError'; }
}

/** The operation was aborted through an AbortSignal (or the engine was unloaded). */
export class AbortError extends WebQwenError {
  constructor(message = 'The operation was aborted.', fields) { super(message, fields); this.name = 'AbortError'; }
}

const CLASSES = {
  WebQwenError,
  WebGPUUnavailableError,
  LimitsTooSmallError,
  QuotaExceededError,
  NetworkError,
  BadModelError,
  AbortError,
  // The names the wasm module gives its errors (`Error` with `.name` set on the Rust side).
  WebGPUUnavailable: WebGPUUnavailableError,
  LimitsTooSmall: LimitsTooSmallError,
  BadModel: BadModelError,
  QuotaExceeded: QuotaExceededError,
  Network: NetworkError,
};

// Only plain data survives structured clone reliably; functions, DOM objects and the
// like are dropped rather than failing the postMessage.
function plainFields(err) {
  const out = {};
  for (const key of Object.keys(err)) {
    if (key === 'name' || key === 'message' || key === 'stack') continue;
    const v = err[key];
    const t = typeof v;
    if (v === null || t === 'string' || t === 'number' || t === 'boolean') out[key] = v;
    else if (t === 'object') {
      try { out[key] = JSON.parse(JSON.stringify(v)); } catch { /* not data: drop */ }
    }
  }
  return out;
}

/**
 * Turns anything thrown (Error, DOMException, wasm-bindgen JsValue, string) into a
 * WebQwenError subclass, keeping the message and extra data fields.
 */
export function normalizeError(err) {
  if (err instanceof WebQwenError) return err;
  if (err && typeof err === 'object') {
    const name = String(err.name || 'Error');
    const message = String(err.message ?? err);
    if (name === 'AbortError') return new AbortError(message || undefined);
    if (name === 'QuotaExceededError') {
      return new QuotaExceededError(
        `The browser refused to store more data (${message}). Free up space or delete cached models, then retry.`);
    }
    const Cls = CLASSES[name];
    const fields = plainFields(err);
    if (Cls) return new Cls(message, fields);
    return new WebQwenError(message, { ...fields, originalName: name });
  }
  return new WebQwenError(String(err));
}

/** Worker side: an error as structured-clone-safe data. */
export function toWire(err) {
  const e = normalizeError(err);
  return { ...plainFields(e), name: e.name, message: e.message };
}

/** Main-thread side: rebuild the typed error. */
export function fromWire(data) {
  const { name, message, ...fields } = data || {};
  const Cls = CLASSES[name] || WebQwenError;
  return new Cls(message || 'Unknown error', fields);
}
