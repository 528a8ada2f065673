// The real engine: the package built by ./pkg-build.sh (wasm + worker) in headless Chromium
// (WebGPU through SwiftShader: no shader-f16), on the random-weight fixture models that
// tests/fixtures/make_models.py converted with mlx-lm. Greedy tokens must equal the native
// binary's exactly, dense and MoE; a second load must take every file from the browser cache
// (the model server sees no request at all) and give the same tokens; and so must a load with
// tensors split into 1 MiB bindings, and one with the model server stopped.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { setUp, requests } from './setup.mjs';
import { nativeGreedy, copyFixture, realEngineSkip as skip } from './native.mjs';

const MODELS = ['q4_g64', 'moe_e8k2_q4'];
const PROMPT = 'Hello';
const MAX_TOKENS = 8;

let env;
let page;

/** Greedy token ids of the native engine for the same chat. */
const nativeTokens = (name) => nativeGreedy(name, PROMPT, MAX_TOKENS).tokens;

/** Load `name` through the package (`options`: more createEngine options) and chat greedily. */
async function browserTokens(name, options = {}) {
  const t0 = Date.now();
  const loaded = await page.evaluate((o) => window.load(o), { model: `${env.models.url}/fixtures/${name}/`, ...options });
  assert.ok(loaded.ok, `${name}: load failed: ${JSON.stringify(loaded.error)}\n${env.logs.slice(-20).join('\n')}`);
  const loadMs = Date.now() - t0;
  const reply = await page.evaluate(async (req) => {
    const c = await window.engine.chat.completions.create(req);
    await window.engine.unload();
    return c;
  }, { messages: [{ role: 'user', content: PROMPT }], temperature: 0, max_tokens: MAX_TOKENS, enable_thinking: false, stream: false });
  const tokens = reply.usage?.extra?.token_ids;
  assert.ok(Array.isArray(tokens), `${name}: no token ids in ${JSON.stringify(reply.usage)}`);
  return { tokens, loadMs, phases: new Set(loaded.progress.map((p) => p.phase)), reply };
}

before(async () => {
  if (skip) return;
  env = await setUp('engine', { realPackage: true });
  for (const name of MODELS) copyFixture(name, path.join(env.modelsDir, 'fixtures', name));
  page = await env.context.newPage();
  await page.goto(`${env.app.url}/www/test/pages/harness.html`);
  await page.waitForFunction(() => window.harnessReady);
});

after(async () => {
  await env?.tearDown();
});

test('greedy tokens equal the native engine, from the network, the cache, offline, and split into 1 MiB bindings', { skip }, async () => {
  for (const name of MODELS) {
    const want = nativeTokens(name);
    assert.equal(want.length, MAX_TOKENS);

    env.models.reset();
    const first = await browserTokens(name);
    assert.deepEqual(first.tokens, want, `${name}: first load (network)`);
    assert.ok(requests(env.models, 'model.safetensors') > 0, `${name}: the first load fetched the weights`);
    const tps = first.reply.usage?.extra?.decode_tokens_per_s;
    console.log(`${name}: first load ${first.loadMs} ms, decode ${tps?.toFixed?.(2)} tok/s, tokens ${JSON.stringify(first.tokens)}`);

    env.models.reset();
    const second = await browserTokens(name);
    assert.deepEqual(second.tokens, want, `${name}: second load (cache)`);
    assert.equal(requests(env.models, 'model.safetensors'), 0, `${name}: the second load fetched weights: ${JSON.stringify(env.models.stats())}`);
    console.log(`${name}: cached load ${second.loadMs} ms`);

    // Tensors split into 1 MiB bindings in wasm too (the embedding, lm_head and, in the MoE
    // model, the stacked experts span many pieces): the native engine's tokens at that limit.
    const split = await browserTokens(name, { maxStorageBinding: 1 << 20 });
    assert.deepEqual(split.tokens, nativeGreedy(name, PROMPT, MAX_TOKENS, ['--max-storage-binding', String(1 << 20)]).tokens, `${name}: 1 MiB bindings`);
  }

  await env.models.close();
  try {
    for (const name of MODELS) {
      const offline = await browserTokens(name);
      assert.deepEqual(offline.tokens, nativeTokens(name), `${name}: offline load`);
    }
  } finally {
    await env.restartModels();
  }
});

test('a cut download resumes, and a corrupted cached file is fetched again, with the real engine', { skip }, async () => {
  // A copy under another path: a model the browser has not cached yet.
  const name = 'q4_g64';
  const dst = path.join(env.modelsDir, 'fixtures', 'resume');
  fs.cpSync(path.join(env.modelsDir, 'fixtures', name), dst, { recursive: true });
  const url = '/fixtures/resume/model.safetensors';
  const want = nativeTokens(name);

  env.models.reset();
  env.models.setRules([{ path: url, cutAfter: 4 << 20, times: 1 }]);
  const cut = await browserTokens('resume');
  assert.deepEqual(cut.tokens, want, 'tokens after a resumed download');
  const seen = env.models.stats()[url]?.ranges ?? [];
  // The weights are fetched from the end of the header on (`bytes=N-`); the cut one resumes
  // with a second, later open-ended range.
  const open = seen.filter((r) => /^bytes=[1-9]\d*-$/.test(r ?? '')).map((r) => Number(r.slice(6, -1)));
  assert.ok(open.length >= 2 && open[1] > open[0], `a Range request resumed the cut download: ${JSON.stringify(seen)}`);

  // Flip bytes in the middle of the cached weights: the checksum fails, the file comes again.
  const key = await page.evaluate(async () => {
    const root = await navigator.storage.getDirectory();
    const models = await root.getDirectoryHandle('webqwen-models');
    const keys = [];
    for await (const [k] of models.entries()) keys.push(k);
    return keys.find((k) => k.includes('resume'));
  });
  assert.ok(key, 'the resumed model is cached');
  await page.evaluate(({ k }) => window.opfs.overwrite(k, 'model.safetensors', 5 << 20, [1, 2, 3, 4, 5, 6, 7, 8]), { k: key });
  env.models.reset();
  const again = await browserTokens('resume');
  assert.deepEqual(again.tokens, want, 'tokens after the corrupted file was fetched again');
  assert.ok((env.models.stats()[url]?.GET ?? 0) > 0, 'the corrupted file was downloaded again');
});
