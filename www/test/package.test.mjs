// The npm package's JS side (index.js, worker.js, cache.js) in headless Chromium, with the
// mock wasm module standing in for the engine and a local server standing in for the hub.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { setUp, requests, ranges } from './setup.mjs';
import { makeModel, dataStart } from './fixtures.mjs';

const MiB = 1 << 20;
let env;
let page;
const models = {}; // name -> {files}

function key(repo) {
  return repo.replace('/', '~2f');
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
  page = await env.context.newPage();
  await page.goto(`${env.app.url}/www/test/pages/harness.html`);
  await page.waitForFunction(() => window.harnessReady);
  await page.evaluate((url) => { window.modelEndpoint = url; }, env.models.url);
});

after(async () => {
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
  assert.equal(requests(env.models, '/test-org/cache-sharded/'), 1);
  assert.equal(requests(env.models, 'tokenizer.json'), 1);
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

  const deleted = await page.evaluate(async () => [
    await window.webqwen.deleteCachedModel('test-org/cache-sharded'),
    await window.webqwen.deleteCachedModel('test-org/cache-api'),
    await window.webqwen.deleteCachedModel('test-org/never-loaded'),
  ]);
  assert.deepEqual(deleted, [true, true, false]);
  const after = await page.evaluate(() => window.webqwen.listCachedModels());
  assert.ok(!after.some((m) => m.model === 'test-org/cache-sharded' || m.model === 'test-org/cache-api'));
  assert.equal(await page.evaluate((k) => window.opfs.exists(k), key('test-org/cache-sharded')), false);
  env.models.reset();
  assertLoaded(await load({ model: 'test-org/cache-sharded' }), models['cache-sharded']);
  assert.ok(requests(env.models, '.safetensors') >= 2, 'downloaded again after deletion');
  await unload();
});
