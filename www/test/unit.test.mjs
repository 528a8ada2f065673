// Node-only checks of the package's pure helpers and of the mock's SHA-256.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { normalizeModel, normalizeEndpoint, safeName, parseSha256 } from '../pkg-src/cache.js';
import { toWire, fromWire, normalizeError, QuotaExceededError, LimitsTooSmallError, WebQwenError, AbortError } from '../pkg-src/errors.js';
import { Sha256 } from './mock-wasm/webqwen_wasm.js';

test('model ids: hub repos and URLs', () => {
  const hub = normalizeModel('Qwen/Qwen3-0.6B-MLX-4bit');
  assert.equal(hub.kind, 'hub');
  assert.equal(hub.id, 'Qwen/Qwen3-0.6B-MLX-4bit');
  assert.equal(hub.baseUrl, 'https://huggingface.co/Qwen/Qwen3-0.6B-MLX-4bit/resolve/main/');
  assert.equal(hub.apiUrl, 'https://huggingface.co/api/models/Qwen/Qwen3-0.6B-MLX-4bit/tree/main');
  assert.equal(hub.key, 'Qwen~2fQwen3-0.6B-MLX-4bit', 'the default endpoint keeps the key of earlier versions');
  assert.deepEqual([hub.endpoint, hub.origin, hub.official], ['https://huggingface.co', 'https://huggingface.co', true]);
  const mirror = normalizeModel('Qwen/Qwen3-0.6B-MLX-4bit', { endpoint: 'https://mirror.example/' });
  assert.equal(mirror.baseUrl, 'https://mirror.example/Qwen/Qwen3-0.6B-MLX-4bit/resolve/main/');
  assert.deepEqual([mirror.endpoint, mirror.origin, mirror.official], ['https://mirror.example', 'https://mirror.example', false]);
  assert.notEqual(mirror.key, hub.key, 'another endpoint is another cache entry');
  assert.equal(mirror.key, 'Qwen~2fQwen3-0.6B-MLX-4bit~40https~3a~2f~2fmirror.example');
  // Spellings of the default endpoint are the default endpoint.
  for (const ep of ['https://huggingface.co/', 'https://HuggingFace.co', 'https://huggingface.co:443', undefined, null, '']) {
    assert.equal(normalizeModel('Qwen/Qwen3-0.6B-MLX-4bit', { endpoint: ep }).key, hub.key, String(ep));
  }
  // Other ports, schemes, paths and hosts are other sources.
  const keys = new Set([hub.key, mirror.key]);
  for (const ep of ['http://huggingface.co', 'https://huggingface.co:8443', 'https://huggingface.co/mirror', 'https://huggingface.co.evil.example']) {
    const other = normalizeModel('Qwen/Qwen3-0.6B-MLX-4bit', { endpoint: ep });
    assert.equal(other.official, false, ep);
    assert.ok(!keys.has(other.key), ep);
    keys.add(other.key);
  }
  // A URL model whose text resembles a mirror key is not one.
  assert.notEqual(normalizeModel('https://mirror.example/Qwen/Qwen3-0.6B-MLX-4bit').key, mirror.key);
  for (const bad of ['mirror.example', 'ftp://mirror.example', 'javascript:alert(1)']) {
    assert.throws(() => normalizeEndpoint(bad), TypeError, bad);
    assert.throws(() => normalizeModel('Qwen/Qwen3-0.6B-MLX-4bit', { endpoint: bad }), TypeError, bad);
  }

  const url = normalizeModel('https://host.example/models/q3?x=1#y');
  assert.deepEqual([url.kind, url.id, url.baseUrl, url.apiUrl], ['url', 'https://host.example/models/q3', 'https://host.example/models/q3/', null]);
  assert.deepEqual([url.endpoint, url.origin, url.official], [null, 'https://host.example', false]);
  assert.equal(normalizeModel('https://host.example/models/q3/').key, url.key);
  const rel = normalizeModel('./models/q3', { base: 'http://localhost:8080/app/index.html' });
  assert.equal(rel.baseUrl, 'http://localhost:8080/app/models/q3/');
  assert.equal(normalizeModel('/m', { base: 'http://localhost:8080/app/' }).id, 'http://localhost:8080/m');

  for (const bad of ['', 'Qwen', 'a/b/c', 'Qwen/../x', null]) {
    assert.throws(() => normalizeModel(bad), TypeError, String(bad));
  }
});

test('safe names are OPFS-safe and distinct', () => {
  assert.equal(safeName('model-00001-of-00002.safetensors'), 'model-00001-of-00002.safetensors');
  assert.equal(safeName('.hidden'), '~2ehidden');
  assert.equal(safeName('a/b'), 'a~2fb');
  assert.notEqual(safeName('a/b'), safeName('a~2fb'));
  assert.match(safeName('é'), /^~c3~a9$/);
  const long = safeName('https://example.com/' + 'x'.repeat(300));
  assert.ok(long.length <= 120);
  assert.notEqual(long, safeName('https://example.com/' + 'x'.repeat(299)));
});

test('sha256 from ETags', () => {
  const h = 'a'.repeat(64);
  assert.equal(parseSha256(`"${h}"`), h);
  assert.equal(parseSha256(`W/"${h.toUpperCase()}"`), h);
  assert.equal(parseSha256('"0123456789abcdef0123456789abcdef01234567"'), null); // git sha1
  assert.equal(parseSha256('"d41d8cd98f00b204e9800998ecf8427e-3"'), null);
  assert.equal(parseSha256(null), null);
});

test('errors cross the worker boundary typed, with their fields', () => {
  const q = fromWire(toWire(new QuotaExceededError('full', { needed: 10, available: 2 })));
  assert.ok(q instanceof QuotaExceededError && q instanceof WebQwenError && q instanceof Error);
  assert.deepEqual([q.name, q.message, q.needed, q.available], ['QuotaExceededError', 'full', 10, 2]);
  const wasmError = Object.assign(new Error('buffer too big'), { name: 'LimitsTooSmall' });
  assert.ok(fromWire(toWire(wasmError)) instanceof LimitsTooSmallError);
  assert.ok(normalizeError(new DOMException('x', 'AbortError')) instanceof AbortError);
  assert.equal(fromWire(toWire('a string')).message, 'a string');
  const other = fromWire(toWire(new RangeError('r')));
  assert.equal(other.name, 'WebQwenError');
  assert.equal(other.originalName, 'RangeError');
});

test('the mock Sha256 matches node:crypto, in any chunking', () => {
  const data = crypto.randomBytes(300_001);
  for (const sizes of [[0], [1], [63, 1, 64, 65], [1000], [55], [56], [64]]) {
    const h = new Sha256();
    const ref = crypto.createHash('sha256');
    for (let off = 0, i = 0; off < data.length; i++) {
      const n = Math.min(sizes[i % sizes.length] || data.length, data.length - off);
      h.update(data.subarray(off, off + n));
      ref.update(data.subarray(off, off + n));
      off += n;
    }
    assert.equal(h.hex(), ref.digest('hex'));
  }
  for (const len of [0, 3, 55, 56, 63, 64, 119, 120]) {
    const h = new Sha256();
    h.update(new Uint8Array(data.subarray(0, len)));
    assert.equal(h.hex(), crypto.createHash('sha256').update(data.subarray(0, len)).digest('hex'), `length ${len}`);
  }
});
