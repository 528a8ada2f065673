// A stand-in for the wasm-bindgen output `webqwen_wasm.js`, with the same exports and
// the behaviour the worker relies on, for testing the JS side without the Rust engine.
//
// It checks the worker's side of the contract strictly (headers before plan, writes in
// order per file, every byte before finish) and records what it received, so tests can
// compare the bytes the "GPU" got with the files on the server:
// `Engine.info().received[file] = {bytes, sha256, restarts}`.
//
// The "model" echoes: thinking "Thinking about: <last user message>", then the answer
// "Echo: <last user message>", one word per step. A message containing "long" gets a
// long answer (for stop-button tests). Special keys in config.json steer failures:
//   "_mock": {"planError": "LimitsTooSmall", "estimate": {"quota": N, "usage": N},
//             "stepDelayMs": N, "createError": "WebGPUUnavailable"}

let ready = false;

export default async function init(input) {
  // Like wasm-bindgen's init: fetch and instantiate the .wasm next to this file, so the
  // tests exercise serving and caching it (a real, empty module).
  const url = input?.module_or_path ?? input ?? new URL('webqwen_wasm_bg.wasm', import.meta.url);
  const res = await fetch(url);
  if (!res.ok) throw new Error(`failed to fetch ${url}: HTTP ${res.status}`);
  await WebAssembly.instantiate(await res.arrayBuffer(), {});
  ready = true;
}

function assertReady() {
  if (!ready) throw new Error('init() was not awaited');
}

function namedError(name, message) {
  const e = new Error(message);
  e.name = name;
  return e;
}

export async function gpuInfo() {
  assertReady();
  const adapter = await self.navigator?.gpu?.requestAdapter();
  if (!adapter) throw namedError('WebGPUUnavailable', 'No WebGPU adapter is available (mock).');
  const limits = {};
  for (const key of ['maxBufferSize', 'maxStorageBufferBindingSize', 'maxComputeWorkgroupStorageSize']) {
    limits[key] = Number(adapter.limits[key]);
  }
  const info = adapter.info ?? {};
  return {
    adapter: [info.vendor, info.architecture, info.description].filter(Boolean).join(' ') || 'unknown',
    backend: 'webgpu',
    features: [...adapter.features].sort(),
    limits,
  };
}

// ---------------------------------------------------------------------------------------
// SHA-256 (incremental), standing in for the Rust one.

const K = new Uint32Array([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

export const mockStats = { sha256Created: 0, sha256Bytes: 0 };

export class Sha256 {
  #h = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  #block = new Uint8Array(64);
  #blockLen = 0;
  #bytes = 0;
  #w = new Uint32Array(64);
  #freed = false;

  constructor() {
    mockStats.sha256Created++;
  }

  update(bytes) {
    if (this.#freed) throw new Error('Sha256 used after free()');
    if (!(bytes instanceof Uint8Array)) throw new TypeError('Sha256.update takes a Uint8Array');
    mockStats.sha256Bytes += bytes.length;
    this.#bytes += bytes.length;
    let i = 0;
    if (this.#blockLen) {
      const n = Math.min(64 - this.#blockLen, bytes.length);
      this.#block.set(bytes.subarray(0, n), this.#blockLen);
      this.#blockLen += n;
      i = n;
      if (this.#blockLen < 64) return;
      this.#compress(this.#block, 0);
      this.#blockLen = 0;
    }
    for (; i + 64 <= bytes.length; i += 64) this.#compress(bytes, i);
    this.#block.set(bytes.subarray(i), 0);
    this.#blockLen = bytes.length - i;
  }

  hex() {
    const h = this.#h.slice();
    const block = this.#block.slice();
    let len = this.#blockLen;
    const tail = new Uint8Array(len < 56 ? 64 : 128);
    tail.set(block.subarray(0, len));
    tail[len] = 0x80;
    const bits = this.#bytes * 8;
    const view = new DataView(tail.buffer);
    view.setUint32(tail.length - 8, Math.floor(bits / 2 ** 32));
    view.setUint32(tail.length - 4, bits >>> 0);
    const saved = this.#h;
    this.#h = h;
    for (let off = 0; off < tail.length; off += 64) this.#compress(tail, off);
    this.#h = saved;
    return Array.from(h, (x) => x.toString(16).padStart(8, '0')).join('');
  }

  free() {
    this.#freed = true;
  }

  #compress(b, off) {
    const w = this.#w;
    for (let t = 0; t < 16; t++) {
      const j = off + t * 4;
      w[t] = (b[j] << 24) | (b[j + 1] << 16) | (b[j + 2] << 8) | b[j + 3];
    }
    for (let t = 16; t < 64; t++) {
      const x = w[t - 15];
      const y = w[t - 2];
      const s0 = ((x >>> 7) | (x << 25)) ^ ((x >>> 18) | (x << 14)) ^ (x >>> 3);
      const s1 = ((y >>> 17) | (y << 15)) ^ ((y >>> 19) | (y << 13)) ^ (y >>> 10);
      w[t] = (w[t - 16] + s0 + w[t - 7] + s1) | 0;
    }
    const h = this.#h;
    let a = h[0], bb = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (let t = 0; t < 64; t++) {
      const S1 = ((e >>> 6) | (e << 26)) ^ ((e >>> 11) | (e << 21)) ^ ((e >>> 25) | (e << 7));
      const ch = (e & f) ^ (~e & g);
      const t1 = (hh + S1 + ch + K[t] + w[t]) | 0;
      const S0 = ((a >>> 2) | (a << 30)) ^ ((a >>> 13) | (a << 19)) ^ ((a >>> 22) | (a << 10));
      const maj = (a & bb) ^ (a & c) ^ (bb & c);
      const t2 = (S0 + maj) | 0;
      hh = g; g = f; f = e; e = (d + t1) | 0; d = c; c = bb; bb = a; a = (t1 + t2) | 0;
    }
    h[0] += a; h[1] += bb; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
}

// ---------------------------------------------------------------------------------------
// What Rust defines once and exports (src/files.rs, src/weights, engine::StopReason)

export function modelFiles() {
  return {
    required: ['config.json', 'tokenizer.json', 'tokenizer_config.json'],
    optional: ['generation_config.json', 'chat_template.jinja', 'model.safetensors.index.json'],
  };
}

export function headerLength(file, first8, size) {
  if (!(first8 instanceof Uint8Array) || first8.length < 8) throw namedError('InvalidRequest', 'need the first 8 bytes');
  const view = new DataView(first8.buffer, first8.byteOffset, 8);
  const n = view.getUint32(0, true) + view.getUint32(4, true) * 2 ** 32;
  if (n > 100_000_000) throw namedError('BadModel', `${file}: not a safetensors file (its header length would be ${n} bytes)`);
  if (size != null && 8 + n > size) throw namedError('BadModel', `${file}: file is truncated: its header alone needs ${8 + n} bytes but the file has ${size}`);
  return 8 + n;
}

export function abortFinishReason() {
  return 'abort';
}

// ---------------------------------------------------------------------------------------
// Loader

const DTYPE_BYTES = { F32: 4, F16: 2, BF16: 2, U32: 4, I32: 4, U8: 1, I8: 1 };

export class ModelLoader {
  static async create(files, options = {}) {
    assertReady();
    for (const name of modelFiles().required) {
      if (typeof files?.[name] !== 'string') throw namedError('BadModel', `the model has no ${name}`);
    }
    let config;
    try {
      config = JSON.parse(files['config.json']);
    } catch (e) {
      throw namedError('BadModel', `config.json is not JSON: ${e.message}`);
    }
    if (!['qwen3', 'qwen3_moe'].includes(config.model_type)) {
      throw namedError('BadModel', `model_type ${JSON.stringify(config.model_type)} is not supported (qwen3, qwen3_moe)`);
    }
    try {
      JSON.parse(files['tokenizer.json']);
      JSON.parse(files['tokenizer_config.json']);
      if (files['generation_config.json'] != null) JSON.parse(files['generation_config.json']);
    } catch (e) {
      throw namedError('BadModel', `tokenizer files: ${e.message}`);
    }
    const mock = config._mock ?? {};
    if (mock.createError) throw namedError(mock.createError, `mock create error ${mock.createError}`);
    if (mock.estimate) {
      // Test hook: pretend the storage quota is this small (the worker asks for it next).
      const fixed = { ...mock.estimate };
      navigator.storage.estimate = async () => fixed;
    }
    const adapter = await navigator.gpu.requestAdapter();
    if (!adapter) throw namedError('WebGPUUnavailable', 'No WebGPU adapter is available (mock).');
    return new ModelLoader(config, files, options, adapter);
  }

  constructor(config, files, options, adapter) {
    this.config = config;
    this.files = files;
    this.options = { ...options };
    this.adapterLimits = { maxBufferSize: Number(adapter.limits.maxBufferSize) };
    this.headers = new Map(); // file -> {headerLength, dataBytes, size}
    this.received = new Map(); // file -> {next, sha, restarts, writes}
    this.planned = false;
    this.freed = false;
  }

  weightFiles() {
    const index = this.files['model.safetensors.index.json'];
    if (index == null) return ['model.safetensors'];
    let map;
    try {
      map = JSON.parse(index).weight_map;
    } catch (e) {
      throw namedError('BadModel', `model.safetensors.index.json: invalid index: ${e.message}`);
    }
    const names = [...new Set(Object.values(map ?? {}))].sort();
    const bad = names.find((n) => typeof n !== 'string' || !n.endsWith('.safetensors') || /[/\\:]/.test(n) || n.startsWith('.'));
    if (bad !== undefined) throw namedError('BadModel', `model.safetensors.index.json: names the shard ${JSON.stringify(bad)}`);
    if (!names.length) throw namedError('BadModel', 'model.safetensors.index.json: lists no weight files');
    return names;
  }

  addHeader(file, header) {
    if (this.planned) throw new Error('addHeader after plan()');
    const n = headerLength(file, header.subarray(0, 8));
    if (header.length !== n) throw namedError('BadModel', `${file}: header is ${header.length} bytes, expected ${n}`);
    let json;
    try {
      json = JSON.parse(new TextDecoder().decode(header.subarray(8)));
    } catch (e) {
      throw namedError('BadModel', `${file}: header is not JSON: ${e.message}`);
    }
    let end = 0;
    for (const [name, t] of Object.entries(json)) {
      if (name === '__metadata__') continue;
      const [a, b] = t.data_offsets;
      const elems = t.shape.reduce((x, y) => x * y, 1);
      if (b - a !== elems * DTYPE_BYTES[t.dtype]) throw namedError('BadModel', `${file}: tensor ${name} has the wrong byte size`);
      end = Math.max(end, b);
    }
    this.headers.set(file, { headerLength: n, dataBytes: end, size: n + end });
  }

  plan() {
    if (!this.headers.size) throw namedError('BadModel', 'plan() before any addHeader()');
    const mock = this.config._mock ?? {};
    if (mock.planError) {
      throw namedError(mock.planError, `mock: this model needs a 4.0 GiB buffer but maxBufferSize is ${this.adapterLimits.maxBufferSize} bytes`);
    }
    this.planned = true;
    let weightBytes = 0;
    const files = [];
    for (const [name, h] of this.headers) {
      weightBytes += h.dataBytes;
      files.push({ name, size: h.size });
      this.received.set(name, { next: 0, sha: new Sha256(), restarts: 0, writes: 0 });
    }
    const kvBytes = 1024 * (this.options.context ?? 4096);
    return { gpuBytes: weightBytes + kvBytes, weightBytes, kvBytes, files };
  }

  write(file, offset, bytes) {
    if (!this.planned) throw new Error('write() before plan()');
    const r = this.received.get(file);
    if (!r) throw new Error(`write() to unknown file ${file}`);
    if (!(bytes instanceof Uint8Array)) throw new TypeError('write() takes a Uint8Array');
    if (offset === 0 && r.next !== 0) {
      // The worker starts a file over (corrupt cache, or a server that ignored Range).
      r.sha = new Sha256();
      r.next = 0;
      r.restarts++;
    }
    if (offset !== r.next) throw new Error(`${file}: write at ${offset}, expected ${r.next} (out of order)`);
    const size = this.headers.get(file).size;
    if (offset + bytes.length > size) throw new Error(`${file}: write past the end (${offset + bytes.length} > ${size})`);
    r.sha.update(bytes);
    r.next += bytes.length;
    r.writes++;
  }

  async finish() {
    if (!this.planned) throw new Error('finish() before plan()');
    for (const [file, r] of this.received) {
      const size = this.headers.get(file).size;
      if (r.next !== size) throw namedError('BadModel', `${file}: only ${r.next} of ${size} bytes arrived`);
    }
    await new Promise((r) => setTimeout(r, 20)); // "pipeline compilation"
    const received = {};
    for (const [file, r] of this.received) {
      received[file] = { bytes: r.next, sha256: r.sha.hex(), restarts: r.restarts, writes: r.writes };
    }
    return new Engine(this.config, this.options, received, {
      hasChatTemplate: this.files['chat_template.jinja'] != null,
      hasGenerationConfig: this.files['generation_config.json'] != null,
    });
  }

  free() {
    this.freed = true;
  }
}

// ---------------------------------------------------------------------------------------
// Engine

export class Engine {
  constructor(config, options, received, extra) {
    this.config = config;
    this.options = options;
    this.received = received;
    this.extra = extra;
    this.steps = null;
    this.freed = false;
  }

  info() {
    return {
      mock: true,
      model: { model_type: this.config.model_type, hidden_size: this.config.hidden_size },
      options: this.options,
      received: this.received,
      sha256: { ...mockStats },
      ...this.extra,
    };
  }

  start(requestJson) {
    if (this.freed) throw new Error('engine freed');
    if (this.steps) throw new Error('start() while a generation is running');
    const req = JSON.parse(requestJson);
    const last = [...req.messages].reverse().find((m) => m.role === 'user')?.content ?? '';
    const thinking = req.enable_thinking !== false;
    const steps = [];
    if (thinking) for (const w of `Thinking about: ${last}`.split(' ')) steps.push({ reasoning: w + ' ', content: '' });
    const answer = [`Echo: ${last}`];
    if (/\blong\b/.test(last)) for (let i = 0; i < 400; i++) answer.push(`word${i}`);
    const words = answer.join(' ').split(' ');
    words.forEach((w, i) => steps.push({ reasoning: '', content: i ? ' ' + w : w }));
    this.steps = steps;
    this.pos = 0;
    this.req = req;
    this.cancelled = false;
    this.promptTokens = req.messages.reduce((n, m) => n + String(m.content).split(/\s+/).length + 4, 0);
  }

  async next() {
    if (!this.steps) throw new Error('next() without start()');
    await new Promise((r) => setTimeout(r, this.config._mock?.stepDelayMs ?? 5));
    const usage = { prompt_tokens: this.promptTokens, completion_tokens: this.pos };
    const end = (reason) => {
      this.steps = null;
      // Made-up rates, as the engine reports its own (engine::Generation).
      const timings = { mock: true, prefill_tokens_per_second: 1000, decode_tokens_per_second: this.pos > 1 ? 50 : 0 };
      return { reasoning: '', content: '', done: true, finish_reason: reason, usage, timings };
    };
    if (this.cancelled) return end('abort');
    if (this.pos >= this.steps.length) return end('stop');
    if (this.req.max_tokens != null && this.pos >= this.req.max_tokens) return end('length');
    const step = this.steps[this.pos++];
    usage.completion_tokens = this.pos;
    return { ...step, done: false };
  }

  cancel() {
    this.cancelled = true;
  }

  free() {
    this.freed = true;
  }
}
