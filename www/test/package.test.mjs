// The npm package's JS side (index.js, worker.js, cache.js) in headless Chromium, with the
// mock wasm module standing in for the engine and a local server standing in for the hub.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import fs from 'node:fs';
import { setUp, requests, ranges } from './setup.mjs';
import { makeModel, dataStart, sha256File } from './fixtures.mjs';
import { startServer } from './server.mjs';
import { normalizeModel } from '../pkg-src/cache.js';

const MiB = 1 << 20;
const HUB = 'https://huggingface.co';
let env;
let page;
let evil; // a second hub serving other files under the same repo ids
const models = {}; // name -> {files}
const evilModels = {};

/** The cache entry (OPFS directory) of a repo from `endpoint` (default: the test hub). */
function key(repo, endpoint) {
  return normalizeModel(repo, { endpoint: endpoint ?? env.models.url }).key;
}

async function load(opts) {
  const result = await page.evaluate((o) => window.load(o), { endpoint: env.models.url, ...opts });
  return result;
}

function assertLoaded(result, files) {
  assert.ok(result.ok, `load failed: ${JSON.stringify(result.error)}\n${env.logs.slice(-20).join('\n')}`);
  const received = result.info.engine.received;
  for (const [name, meta] of Object.entries(files)) {
    if (!name.endsWith('.safetensors')) continue;
    assert.equal(received[name]?.sha256, meta.sha256, `bytes the loader got for ${name}`);
  }
}

function phases(result) {
  return new Set(result.progress.map((p) => p.phase));
}

async function unload() {
  await page.evaluate(() => window.engine?.unload());
}

function model(name, opts) {
  models[name] = makeModel(path.join(env.modelsDir, 'test-org', name), opts);
  return models[name];
}

before(async () => {
  env = await setUp('package');
  model('cache-sharded', { shards: [6 * MiB + 123, 5 * MiB] });
  model('resume-single', { shards: [12 * MiB] });
  model('resume-across', { shards: [10 * MiB] });
  model('resume-ignore', { shards: [7 * MiB] });
  model('quota', { shards: [12 * MiB], mock: { estimate: { quota: 10_000_000, usage: 9_000_000 } } });
  model('limits', { shards: [8 * MiB], mock: { planError: 'LimitsTooSmall' } });
  model('cache-api', { shards: [5 * MiB, 3 * MiB] });
  model('aborted', { shards: [16 * MiB] });
  model('slow-chat', { shards: [1 * MiB], mock: { stepDelayMs: 20 } });
  model('poison', { shards: [2 * MiB, 1 * MiB] });
  model('poison-first', { shards: [2 * MiB] });
  model('legacy', { shards: [2 * MiB, 1 * MiB] });
  model('plain', { shards: [3 * MiB] });
  model('partial-206', { shards: [4 * MiB] });
  const evilDir = path.join(env.tmp, 'evil');
  for (const name of ['poison', 'poison-first', 'legacy']) {
    evilModels[name] = makeModel(path.join(evilDir, 'test-org', name), { shards: name === 'poison-first' ? [2 * MiB] : [2 * MiB, 1 * MiB] });
    // What the attacker wants the official id to say.
    const template = path.join(evilDir, 'test-org', name, 'chat_template.jinja');
    fs.writeFileSync(template, 'EVIL {{ messages }}');
    evilModels[name]['chat_template.jinja'] = { size: fs.statSync(template).size, sha256: sha256File(template) };
  }
  evil = await startServer({ root: evilDir });
  // huggingface.co itself, played by the test hub: requests to the default endpoint (whose
  // cache key is the one of earlier versions) are answered by env.models.
  await env.context.route(`${HUB}/**`, async (route) => {
    const u = new URL(route.request().url());
    try {
      const response = await route.fetch({ url: `${env.models.url}${u.pathname}${u.search}`, maxRedirects: 0 });
      await route.fulfill({ response });
    } catch {
      await route.abort('connectionrefused').catch(() => {});
    }
  });
  page = await env.context.newPage();
  await page.goto(`${env.app.url}/www/test/pages/harness.html`);
  await page.waitForFunction(() => window.harnessReady);
  await page.evaluate((url) => { window.modelEndpoint = url; }, env.models.url);
});

after(async () => {
  await evil?.close();
  await env?.tearDown();
});

test('first load downloads; second load makes no request; third works with the server stopped', async () => {
  const files = models['cache-sharded'];
  const first = await load({ model: 'test-org/cache-sharded' });
  assertLoaded(first, files);
  assert.equal(first.info.storage, 'opfs');
  assert.ok(phases(first).has('download') && phases(first).has('compile') && phases(first).has('ready'));
  const last = first.progress.at(-1);
  assert.equal(last.phase, 'ready');
  assert.equal(last.loaded, last.total);
  assert.equal(last.total, files['model-00001-of-00002.safetensors'].size + files['model-00002-of-00002.safetensors'].size);
  assert.ok(requests(env.models, '.safetensors') >= 2);
  assert.ok(first.info.engine.sha256.sha256Created > 0, 'hashing goes through the wasm Sha256');
  await unload();

  env.models.reset();
  const second = await load({ model: 'test-org/cache-sharded' });
  assertLoaded(second, files);
  assert.equal(requests(env.models, '/test-org/cache-sharded'), 0, JSON.stringify(env.models.stats()));
  assert.ok(phases(second).has('cache') && !phases(second).has('download'));
  await unload();

  await env.models.close();
  try {
    const third = await load({ model: 'test-org/cache-sharded' });
    assertLoaded(third, files);
    const answer = await page.evaluate(async () => {
      const r = await window.engine.chat.completions.create({ messages: [{ role: 'user', content: 'offline?' }] });
      return r.choices[0].message.content;
    });
    assert.equal(answer, 'Echo: offline?');
    await unload();
  } finally {
    await env.restartModels();
  }
});

test('chat completions: OpenAI shapes, thinking separated, stream and non-stream', async () => {
  const loaded = await load({ model: 'test-org/cache-sharded' });
  assertLoaded(loaded, models['cache-sharded']);
  const out = await page.evaluate(async () => {
    const engine = window.engine;
    const full = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'hello there' }], temperature: 0 });
    const chunks = [];
    const stream = await engine.chat.completions.create({
      messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: [{ type: 'text', text: 'streamed' }] }],
      stream: true, seed: 1, stop: ['never'],
    });
    for await (const c of stream) chunks.push(c);
    const noThink = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'x' }], enable_thinking: false });
    const short = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'a long one' }], max_tokens: 3 });
    // Breaking out of the loop cancels; the next request still works.
    let seen = 0;
    for await (const c of await engine.chat.completions.create({ messages: [{ role: 'user', content: 'long' }], stream: true })) {
      if (++seen === 3) break;
    }
    const after = await engine.chat.completions.create({ messages: [{ role: 'user', content: 'after' }], enable_thinking: false });
    // Two requests at once run one after the other.
    const [p, q] = await Promise.all([
      engine.chat.completions.create({ messages: [{ role: 'user', content: 'p' }], enable_thinking: false }),
      engine.chat.completions.create({ messages: [{ role: 'user', content: 'q' }], enable_thinking: false }),
    ]);
    let typeError = null;
    try { await engine.chat.completions.create({ messages: [] }); } catch (e) { typeError = e.name; }
    return { full, chunks, noThink, short, after, p, q, typeError };
  });
  const { full, chunks, noThink, short } = out;
  assert.equal(full.object, 'chat.completion');
  assert.equal(full.choices[0].message.role, 'assistant');
  assert.equal(full.choices[0].message.content, 'Echo: hello there');
  assert.equal(full.choices[0].message.reasoning_content, 'Thinking about: hello there ');
  assert.equal(full.choices[0].finish_reason, 'stop');
  assert.ok(full.usage.prompt_tokens > 0 && full.usage.completion_tokens > 0);
  assert.equal(full.usage.total_tokens, full.usage.prompt_tokens + full.usage.completion_tokens);
  assert.ok(full.usage.extra.decode_tokens_per_s > 0);

  assert.ok(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id));
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  const reasoning = chunks.map((c) => c.choices[0].delta.reasoning_content ?? '').join('');
  const content = chunks.map((c) => c.choices[0].delta.content ?? '').join('');
  assert.equal(reasoning, 'Thinking about: streamed ');
  assert.equal(content, 'Echo: streamed');
  const lastChunk = chunks.at(-1);
  assert.equal(lastChunk.choices[0].finish_reason, 'stop');
  assert.deepEqual(lastChunk.choices[0].delta, {});
  assert.ok(lastChunk.usage.completion_tokens > 0);
  assert.ok(chunks.slice(0, -1).every((c) => c.choices[0].finish_reason === null && !c.usage));

  assert.equal(noThink.choices[0].message.reasoning_content, undefined);
  assert.equal(noThink.choices[0].message.content, 'Echo: x');
  assert.equal(short.choices[0].finish_reason, 'length');
  assert.equal(short.usage.completion_tokens, 3);
  assert.equal(out.after.choices[0].message.content, 'Echo: after');
  assert.equal(out.p.choices[0].message.content, 'Echo: p');
  assert.equal(out.q.choices[0].message.content, 'Echo: q');
  assert.equal(out.typeError, 'TypeError');

  const info = await page.evaluate(() => window.engine.info());
  assert.equal(info.model, 'test-org/cache-sharded');
  assert.ok(info.gpu.adapter && Array.isArray(info.gpu.features) && info.gpu.limits.maxBufferSize > 0);
  assert.equal(info.engine.mock, true);
  await unload();
  const afterUnload = await page.evaluate(async () => {
    try { await window.engine.chat.completions.create({ messages: [{ role: 'user', content: 'x' }] }); } catch (e) { return e.name; }
    return 'no error';
  });
  assert.equal(afterUnload, 'WebQwenError');
});

test('abort signal stops a generation with finish_reason "abort"', async () => {
  assertLoaded(await load({ model: 'test-org/slow-chat' }), models['slow-chat']);
  const out = await page.evaluate(async () => {
    const ac = new AbortController();
    const chunks = [];
    const stream = await window.engine.chat.completions.create({ messages: [{ role: 'user', content: 'long' }], stream: true, signal: ac.signal });
    for await (const c of stream) {
      chunks.push(c);
      if (chunks.length === 5) ac.abort();
    }
    const ac2 = new AbortController();
    const pending = window.engine.chat.completions.create({ messages: [{ role: 'user', content: 'long' }], signal: ac2.signal });
    setTimeout(() => ac2.abort(), 100);
    const partial = await pending;
    let pre = null;
    try { await window.engine.chat.completions.create({ messages: [{ role: 'user', content: 'x' }], signal: AbortSignal.abort() }); } catch (e) { pre = e.name; }
    return { n: chunks.length, last: chunks.at(-1), partial, pre };
  });
  assert.ok(out.n < 50, `stopped early (${out.n} chunks)`);
  assert.equal(out.last.choices[0].finish_reason, 'abort');
  assert.equal(out.partial.choices[0].finish_reason, 'abort');
  assert.ok(!out.partial.choices[0].message.content.includes('word399'));
  assert.equal(out.pre, 'AbortError');
  await unload();
});

test('a download cut mid-file resumes with a Range request', async () => {
  const files = models['resume-single'];
  const url = '/test-org/resume-single/resolve/main/model.safetensors';
  env.models.reset();
  env.models.setRules([{ path: url, cutAfter: 5 * MiB, times: 1 }]);
  const result = await load({ model: 'test-org/resume-single' });
  assertLoaded(result, files);
  // The header is fetched first (and cached), then the rest from where it ends; the cut
  // response resumes after the last byte that reached the worker (the server sent 5 MiB,
  // but the browser may drop what it had buffered when the connection breaks).
  const start = dataStart(path.join(env.modelsDir, 'test-org/resume-single/model.safetensors'));
  const seen = ranges(env.models, url);
  assert.deepEqual(seen.slice(0, 3), ['bytes=0-7', `bytes=8-${start - 1}`, `bytes=${start}-`]);
  assert.equal(seen.length, 4, JSON.stringify(seen));
  const from = Number(/^bytes=(\d+)-$/.exec(seen[3])?.[1]);
  assert.ok(from > start && from <= start + 5 * MiB, `resumed from ${seen[3]}`);
  const stored = await page.evaluate((k) => window.opfs.fileInfo(k, 'model.safetensors'), key('test-org/resume-single'));
  assert.deepEqual(stored, { size: files['model.safetensors'].size, sha256: files['model.safetensors'].sha256 });
  assert.equal(result.info.engine.received['model.safetensors'].restarts, 0);
  await unload();
});

test('an interrupted download resumes in the next session from the cached bytes', async () => {
  const files = models['resume-across'];
  const url = '/test-org/resume-across/resolve/main/model.safetensors';
  env.models.reset();
  const start = dataStart(path.join(env.modelsDir, 'test-org/resume-across/model.safetensors'));
  env.models.setRules([
    { path: url, cutAfter: 4 * MiB, times: 1 },
    { path: url, status: 503, range: `^bytes=(?!${start}-)[1-9][0-9]*-$` }, // every resume attempt fails
  ]);
  const failed = await load({ model: 'test-org/resume-across' });
  assert.equal(failed.ok, false);
  assert.equal(failed.error.name, 'NetworkError');
  assert.equal(failed.error.cls, 'NetworkError');
  assert.match(failed.error.message, /resumes/);
  const partial = await page.evaluate((k) => window.opfs.fileInfo(k, 'model.safetensors'), key('test-org/resume-across'));
  assert.ok(partial.size > start && partial.size <= start + 4 * MiB, `kept ${partial.size} bytes`);
  const manifest = await page.evaluate((k) => window.opfs.manifest(k), key('test-org/resume-across'));
  assert.equal(manifest.complete, false);
  assert.equal(manifest.files['model.safetensors'].complete, false);

  env.models.reset();
  const result = await load({ model: 'test-org/resume-across' });
  assertLoaded(result, files);
  assert.deepEqual(ranges(env.models, url), [`bytes=${partial.size}-`]);
  assert.ok(phases(result).has('cache'), 'the cached prefix was read back');
  const stored = await page.evaluate((k) => window.opfs.fileInfo(k, 'model.safetensors'), key('test-org/resume-across'));
  assert.equal(stored.sha256, files['model.safetensors'].sha256);
  await unload();
});

test('a server that ignores Range restarts the file from byte 0, correctly', async () => {
  const files = models['resume-ignore'];
  const url = '/test-org/resume-ignore/resolve/main/model.safetensors';
  env.models.reset();
  env.models.setRules([
    { path: url, cutAfter: 3 * MiB, times: 1 },
    { path: url, ignoreRange: true, range: `^bytes=(?!${dataStart(path.join(env.modelsDir, 'test-org/resume-ignore/model.safetensors'))}-)[1-9][0-9]*-$`, times: 1 },
  ]);
  const result = await load({ model: 'test-org/resume-ignore' });
  assertLoaded(result, files);
  assert.equal(result.info.engine.received['model.safetensors'].restarts, 1);
  const stored = await page.evaluate((k) => window.opfs.fileInfo(k, 'model.safetensors'), key('test-org/resume-ignore'));
  assert.equal(stored.sha256, files['model.safetensors'].sha256);
  await unload();
});

test('a corrupted or truncated cached file is detected and fetched again', async () => {
  const files = models['cache-sharded'];
  const k = key('test-org/cache-sharded');
  const shard1 = 'model-00001-of-00002.safetensors';
  const shard2 = 'model-00002-of-00002.safetensors';
  await page.evaluate(([k, name]) => window.opfs.overwrite(k, name, 2 << 20, new Array(16).fill(0xff)), [k, shard1]);
  await page.evaluate(([k, name]) => window.opfs.truncate(k, name, 1 << 20), [k, shard2]);
  const corrupt = await page.evaluate(([k, name]) => window.opfs.fileInfo(k, name), [k, shard1]);
  assert.notEqual(corrupt.sha256, files[shard1].sha256);

  env.models.reset();
  const result = await load({ model: 'test-org/cache-sharded' });
  assertLoaded(result, files);
  // The corrupt shard came again in full (after the loader had seen the cached bytes);
  // the truncated one resumed after its first MiB.
  assert.deepEqual(ranges(env.models, shard1), [null]);
  assert.equal(result.info.engine.received[shard1].restarts, 1);
  assert.deepEqual(ranges(env.models, shard2), [`bytes=${1 << 20}-`]);
  for (const name of [shard1, shard2]) {
    const stored = await page.evaluate(([k, n]) => window.opfs.fileInfo(k, n), [k, name]);
    assert.equal(stored.sha256, files[name].sha256, name);
  }
  assert.ok(env.logs.some((l) => l.includes('is corrupt')), 'the worker says why it downloads again');
  await unload();

  // A corrupted small file (the tokenizer) is fetched again too.
  await page.evaluate(async (k) => {
    const root = await navigator.storage.getDirectory();
    const files = await (await (await root.getDirectoryHandle('webqwen-models')).getDirectoryHandle(k)).getDirectoryHandle('files');
    const w = await (await files.getFileHandle('tokenizer.json')).createWritable({ keepExistingData: true });
    await w.write({ type: 'write', position: 0, data: new TextEncoder().encode('garbage!') });
    await w.close();
  }, k);
  env.models.reset();
  assertLoaded(await load({ model: 'test-org/cache-sharded' }), files);
  // tokenizer.json again, and the repo's listing for its checksum (the hub's ETag of a
  // non-LFS file is its git blob id, which the listing names as such)
  assert.equal(requests(env.models, '/test-org/cache-sharded/'), 2);
  assert.equal(requests(env.models, 'tokenizer.json'), 1);
  assert.equal(requests(env.models, '/api/models/test-org/cache-sharded/tree/main'), 1);
  await unload();
});

test('QuotaExceededError when the storage estimate is too small, before downloading weights', async () => {
  env.models.reset();
  const result = await load({ model: 'test-org/quota' });
  assert.equal(result.ok, false);
  assert.equal(result.error.name, 'QuotaExceededError');
  assert.equal(result.error.cls, 'QuotaExceededError');
  assert.ok(result.error.isWebQwenError);
  assert.equal(result.error.fields.quota, 10_000_000);
  assert.equal(result.error.fields.usage, 9_000_000);
  assert.equal(result.error.fields.available, 1_000_000);
  assert.ok(result.error.fields.needed > 12_000_000);
  assert.match(result.error.message, /needs 12\.\d MB more storage.*1\.0 MB more \(quota 10\.0 MB, in use 9\.0 MB\)/);
  // Only the header ranges were fetched.
  const seen = ranges(env.models, '/quota/resolve/main/model.safetensors');
  assert.ok(seen.length >= 1 && seen.every((r) => /^bytes=\d+-\d+$/.test(r)), JSON.stringify(seen));
});

test('typed errors: limits, bad model, network, abort, no WebGPU', async () => {
  env.models.reset();
  const limits = await load({ model: 'test-org/limits' });
  assert.equal(limits.error?.name, 'LimitsTooSmallError');
  assert.equal(limits.error.cls, 'LimitsTooSmallError');
  assert.match(limits.error.message, /maxBufferSize/);
  assert.ok(ranges(env.models, '/limits/resolve/main/model.safetensors').every((r) => /^bytes=\d+-\d+$/.test(r)));

  const missing = await load({ model: 'test-org/does-not-exist' });
  assert.equal(missing.error?.name, 'BadModelError');
  assert.match(missing.error.message, /config\.json was not found/);

  const bad = await page.evaluate(async () => {
    try { await window.webqwen.createEngine({ model: 'not a model' }); } catch (e) { return e.name; }
    return null;
  });
  assert.equal(bad, 'TypeError');

  const offline = await load({ model: 'test-org/whatever', endpoint: 'http://127.0.0.1:9' });
  assert.equal(offline.error?.name, 'NetworkError');
  assert.match(offline.error.message, /config\.json/);

  env.models.setRules([{ path: '*/aborted/resolve/main/model.safetensors', bytesPerSecond: 2 * MiB }]);
  const aborted = await page.evaluate(async () => {
    const ac = new AbortController();
    const seen = [];
    const t0 = performance.now();
    try {
      await window.webqwen.createEngine({
        model: 'test-org/aborted',
        endpoint: window.modelEndpoint,
        signal: ac.signal,
        onProgress: (p) => { seen.push(p.phase); if (p.phase === 'download' && p.loaded > 0) ac.abort(); },
      });
    } catch (e) {
      return { name: e.name, ms: performance.now() - t0, seen };
    }
    return { name: null };
  }).catch((e) => ({ name: `evaluate failed: ${e}` }));
  assert.equal(aborted.name, 'AbortError');
  assert.ok(aborted.ms < 6000, `aborted promptly (${aborted.ms} ms)`);

  const noGpu = await env.context.newPage();
  await noGpu.addInitScript(() => { Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }); });
  await noGpu.goto(`${env.app.url}/www/test/pages/harness.html`);
  await noGpu.waitForFunction(() => window.harnessReady);
  const gpuError = await noGpu.evaluate(() => window.load({ model: 'test-org/cache-sharded' }));
  assert.equal(gpuError.error?.name, 'WebGPUUnavailableError');
  assert.match(gpuError.error.message, /Safari 26/);
  await noGpu.close();
});

test('Cache API storage works the same, and cached models can be listed and deleted', async () => {
  const files = models['cache-api'];
  env.models.reset();
  const first = await load({ model: 'test-org/cache-api', storage: 'cache' });
  assertLoaded(first, files);
  assert.equal(first.info.storage, 'cache');
  await unload();
  env.models.reset();
  const second = await load({ model: 'test-org/cache-api', storage: 'cache' });
  assertLoaded(second, files);
  assert.equal(requests(env.models, '/test-org/cache-api'), 0);
  await unload();

  const none = await load({ model: 'test-org/cache-api', storage: 'none' });
  assertLoaded(none, files);
  assert.equal(none.info.storage, 'none');
  await unload();

  const list = await page.evaluate(() => window.webqwen.listCachedModels());
  const byModel = Object.fromEntries(list.map((m) => [`${m.model}|${m.storage}`, m]));
  const sharded = byModel['test-org/cache-sharded|opfs'];
  assert.ok(sharded?.complete);
  const weightBytes = (f) => Object.entries(f).filter(([n]) => n.endsWith('.safetensors')).reduce((s, [, m]) => s + m.size, 0);
  assert.equal(sharded.totalBytes, weightBytes(models['cache-sharded']));
  assert.ok(sharded.bytes >= sharded.totalBytes);
  assert.ok(byModel['test-org/cache-api|cache']?.complete);
  assert.equal(byModel['test-org/resume-across|opfs']?.complete, true);

  assert.equal(sharded.endpoint, env.models.url);
  assert.equal(sharded.origin, env.models.url);
  const deleted = await page.evaluate(async (endpoint) => {
    const listed = await window.webqwen.listCachedModels();
    return [
      // not from huggingface.co: nothing there
      await window.webqwen.deleteCachedModel('test-org/cache-sharded'),
      await window.webqwen.deleteCachedModel('test-org/cache-sharded', { endpoint }),
      // a listed entry, as the app deletes it
      await window.webqwen.deleteCachedModel(listed.find((m) => m.model === 'test-org/cache-api' && m.storage === 'cache')),
      await window.webqwen.deleteCachedModel('test-org/never-loaded', { endpoint }),
    ];
  }, env.models.url);
  assert.deepEqual(deleted, [false, true, true, false]);
  const after = await page.evaluate(() => window.webqwen.listCachedModels());
  assert.ok(!after.some((m) => m.model === 'test-org/cache-sharded' || m.model === 'test-org/cache-api'));
  assert.equal(await page.evaluate((k) => window.opfs.exists(k), key('test-org/cache-sharded')), false);
  env.models.reset();
  assertLoaded(await load({ model: 'test-org/cache-sharded' }), models['cache-sharded']);
  assert.ok(requests(env.models, '.safetensors') >= 2, 'downloaded again after deletion');
  await unload();
});

// ---------------------------------------------------------------------------------------
// Where cached files came from (issue 9, item 2): the official hub here is
// https://huggingface.co, routed to the test hub; `evil` serves other files under the same ids.

test('a repo from another endpoint never touches the official cache entry, nor is used for it', async () => {
  const repo = 'test-org/poison';
  const official = key(repo, HUB);
  assert.equal(official, 'test-org~2fpoison', 'the default endpoint keeps the key of earlier versions');
  env.models.reset();
  const first = await load({ model: repo, endpoint: HUB });
  assertLoaded(first, models.poison);
  assert.ok(requests(env.models, '/test-org/poison/') > 0, 'the official files came through the routed hub');
  await unload();
  const before = await page.evaluate((k) => window.opfs.snapshot(k), official);
  assert.ok(before['manifest.json'] && before['files/chat_template.jinja'], JSON.stringify(before));

  // The poisoning attempt: the same id from another endpoint (as ?endpoint= would do).
  evil.reset();
  const poisoned = await load({ model: repo, endpoint: evil.url });
  await unload();
  assert.deepEqual(await page.evaluate((k) => window.opfs.snapshot(k), official), before,
    'the official entry (manifest and every file) is byte-identical');
  // (and that load got the other endpoint's files, not the official cache's)
  assertLoaded(poisoned, evilModels.poison);
  assert.ok(await page.evaluate((k) => window.opfs.exists(k), key(repo, evil.url)), 'the other endpoint has its own entry');

  // A later official load uses the official bytes only: from the cache, nothing from evil.
  env.models.reset();
  evil.reset();
  const again = await load({ model: repo, endpoint: HUB });
  assertLoaded(again, models.poison);
  assert.equal(requests(evil), 0);
  assert.equal(requests(env.models, '/test-org/poison'), 0, 'served from the cache');
  await unload();
  // Each says where it came from.
  assert.deepEqual([again.info.origin, again.info.endpoint, again.info.source], [HUB, HUB, `${HUB}/${repo}/resolve/main/`]);
  assert.deepEqual([poisoned.info.origin, poisoned.info.endpoint], [evil.url, evil.url]);
  const manifest = await page.evaluate((k) => window.opfs.manifest(k), official);
  assert.deepEqual([manifest.version, manifest.source, manifest.endpoint], [2, `${HUB}/${repo}/resolve/main/`, HUB]);

  const listed = (await page.evaluate(() => window.webqwen.listCachedModels())).filter((m) => m.model === repo);
  assert.deepEqual(listed.map((m) => [m.endpoint, m.origin, m.key]).sort(),
    [[HUB, HUB, official], [evil.url, evil.url, key(repo, evil.url)]].sort());
  // Deleting the other endpoint's entry leaves the official one.
  const kept = await page.evaluate((k) => window.opfs.snapshot(k), official);
  assert.equal(await page.evaluate(([r, ep]) => window.webqwen.deleteCachedModel(r, { endpoint: ep }), [repo, evil.url]), true);
  assert.equal(await page.evaluate((k) => window.opfs.exists(k), key(repo, evil.url)), false);
  assert.deepEqual(await page.evaluate((k) => window.opfs.snapshot(k), official), kept);
});

test('poisoning first: a repo cached from another endpoint is not used for the official one', async () => {
  const repo = 'test-org/poison-first';
  evil.reset();
  assertLoaded(await load({ model: repo, endpoint: evil.url }), evilModels['poison-first']);
  await unload();
  env.models.reset();
  evil.reset();
  const official = await load({ model: repo, endpoint: HUB });
  assertLoaded(official, models['poison-first']);
  assert.equal(requests(evil), 0);
  for (const name of Object.keys(models['poison-first'])) {
    assert.equal(requests(env.models, `/test-org/poison-first/resolve/main/${name}`) > 0, true, `${name} came from the official hub`);
  }
  const template = await page.evaluate((k) => window.opfs.fileInfo(k, 'chat_template.jinja'), key(repo, HUB));
  assert.equal(template.sha256, models['poison-first']['chat_template.jinja'].sha256);
  await unload();
});

test('a cache entry written by an earlier version is used only after it matches huggingface.co', async () => {
  const repo = 'test-org/legacy';
  const k = key(repo, HUB);
  const files = models.legacy;
  const shard1 = 'model-00001-of-00002.safetensors';
  const shard2 = 'model-00002-of-00002.safetensors';
  // What the previous release wrote: manifest version 1, no record of the endpoint, and
  // `source` only the last load's. Here an evil endpoint's load went into the same entry:
  // shard 2, the tokenizer and the template are evil, and the manifest vouches for them.
  assertLoaded(await load({ model: repo, endpoint: HUB }), files);
  await unload();
  const v2 = await page.evaluate((key) => window.opfs.manifest(key), k);
  const v1 = { version: 1, model: repo, files: {}, weights: v2.weights, totalBytes: v2.totalBytes, complete: true,
    source: `${evil.url}/${repo}/resolve/main/`, updated: v2.updated };
  for (const [name, e] of Object.entries(v2.files)) {
    const evilFile = evilModels.legacy[name];
    const poisoned = [shard2, 'tokenizer.json', 'chat_template.jinja'].includes(name);
    v1.files[name] = { size: poisoned ? evilFile.size : e.size, sha256: poisoned ? evilFile.sha256 : e.sha256,
      verifiedSha256: poisoned ? evilFile.sha256 : e.verifiedSha256, complete: true, ...(e.absent ? { absent: true } : {}) };
    if (poisoned) await page.evaluate(([key, n, url]) => window.opfs.fetchInto(key, `files/${n}`, url), [k, name, `${evil.url}/test-org/legacy/${name}`]);
  }
  await page.evaluate(([key, text]) => window.opfs.writeFile(key, 'manifest.json', text), [k, JSON.stringify(v1)]);
  const stored = await page.evaluate((key) => window.opfs.snapshot(key), k);

  // Offline, it cannot be checked: a clear error, and nothing is deleted.
  await env.models.close();
  try {
    const offline = await load({ model: repo, endpoint: HUB });
    assert.equal(offline.ok, false);
    assert.equal(offline.error.name, 'NetworkError');
    assert.match(offline.error.message, /earlier version of webqwen.*nothing was deleted/s);
  } finally {
    await env.restartModels();
  }
  const afterOffline = await page.evaluate((key) => window.opfs.snapshot(key), k);
  for (const name of [shard1, shard2]) assert.equal(afterOffline[`files/${name}`], stored[`files/${name}`], name);

  // Online: shard 1 matches the hub's sha256 and is kept (not downloaded); shard 2 does not
  // and is downloaded again; the small files are downloaded again.
  env.models.reset();
  const result = await load({ model: repo, endpoint: HUB });
  assertLoaded(result, files);
  assert.ok(phases(result).has('verify'), 'the kept weights were checked');
  assert.equal(requests(env.models, `/resolve/main/${shard1}`), 0, 'the matching shard came from the cache');
  assert.ok(requests(env.models, `/resolve/main/${shard2}`) > 0, 'the evil shard was downloaded again');
  for (const name of ['tokenizer.json', 'chat_template.jinja', 'config.json']) {
    assert.equal(requests(env.models, `/resolve/main/${name}`), 1, name);
    const info = await page.evaluate(([key, n]) => window.opfs.fileInfo(key, n), [k, name]);
    assert.equal(info.sha256, files[name].sha256, name);
  }
  await unload();
  const migrated = await page.evaluate((key) => window.opfs.manifest(key), k);
  assert.equal(migrated.version, 2);
  assert.equal(migrated.source, `${HUB}/${repo}/resolve/main/`);
  assert.equal(migrated.files[shard1].verified, 'sha256');
  assert.equal(migrated.files[shard2].verified, 'sha256');
  assert.ok(Object.values(migrated.files).every((e) => !e.legacy));

  // A manifest naming another source (or tampered with) is never used: its files are deleted.
  await page.evaluate(([key, text]) => window.opfs.writeFile(key, 'manifest.json', text),
    [k, JSON.stringify({ ...migrated, source: `${evil.url}/${repo}/resolve/main/`, endpoint: evil.url })]);
  env.models.reset();
  assertLoaded(await load({ model: repo, endpoint: HUB }), files);
  assert.ok(requests(env.models, `/resolve/main/${shard1}`) > 0, 'downloaded again');
  await unload();
});

test('files without a published checksum are marked size-only in the manifest, progress and info()', async () => {
  // A plain static server: no ETag, no X-Linked-Etag.
  const url = `${env.models.url}/test-org/plain`;
  env.models.reset();
  env.models.setRules([{ path: '*/test-org/plain/', noChecksum: true }]);
  const plain = await load({ model: url });
  assertLoaded(plain, models.plain);
  const names = Object.keys(models.plain).sort();
  assert.deepEqual(plain.info.sizeOnly, names);
  assert.deepEqual(plain.progress.at(-1).sizeOnly, names);
  for (const name of names) assert.equal(plain.info.files[name].verified, 'size-only', name);
  const manifest = await page.evaluate((k) => window.opfs.manifest(k), normalizeModel(url).key);
  for (const name of names) assert.equal(manifest.files[name].verified, 'size-only', name);
  await unload();
  // Read back from the cache, they still say so.
  env.models.reset();
  const cached = await load({ model: url });
  assertLoaded(cached, models.plain);
  assert.deepEqual(cached.info.sizeOnly, names);
  await unload();

  // The test hub publishes checksums: sha256 for the weights, git blob ids for the rest.
  const hub = await load({ model: 'test-org/cache-api' });
  assertLoaded(hub, models['cache-api']);
  assert.deepEqual(hub.info.sizeOnly, []);
  assert.deepEqual(hub.progress.at(-1).sizeOnly, []);
  for (const [name, f] of Object.entries(hub.info.files)) {
    assert.equal(f.verified, name.endsWith('.safetensors') ? 'sha256' : 'git-sha1', name);
  }
  await unload();
  env.models.reset();
});

test('a 206 without Content-Range, or with one that does not match, is not placed: the file restarts from 0', async () => {
  for (const badPartial of ['omit', 'claim']) {
    const url = `${env.models.url}/test-org/partial-206`;
    const weights = '/test-org/partial-206/model.safetensors';
    await page.evaluate((m) => window.webqwen.deleteCachedModel(m), url);
    env.models.reset();
    // No checksums, so nothing else would notice misplaced bytes; the broken answer is to
    // the Range request for the weights after their header (`bytes=N-`).
    env.models.setRules([
      { path: '*/test-org/partial-206/', noChecksum: true },
      { path: weights, badPartial, range: '^bytes=[1-9][0-9]*-$', times: 1 },
    ]);
    const result = await load({ model: url });
    assertLoaded(result, models['partial-206']);
    assert.equal(result.info.engine.received['model.safetensors'].restarts, 1, badPartial);
    assert.equal(ranges(env.models, weights).at(-1), null, 'then asked for the whole file');
    assert.ok(env.logs.some((l) => l.includes('downloading whole files from now on')));
    const stored = await page.evaluate((k) => window.opfs.fileInfo(k, 'model.safetensors'), normalizeModel(url).key);
    assert.equal(stored.sha256, models['partial-206']['model.safetensors'].sha256, badPartial);
    await unload();
  }
  env.models.reset();
});
