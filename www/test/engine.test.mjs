// The real engine: the package built by ./pkg-build.sh (wasm + worker) in headless Chromium
// (WebGPU through SwiftShader: no shader-f16), on the random-weight fixture models that
// tests/fixtures/make_models.py converted with mlx-lm. Greedy tokens must equal the native
// binary's exactly, dense and MoE; a second load must take every file from the browser cache
// (the model server sees no request at all) and give the same tokens; and so must a third
// with the model server stopped.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { setUp, requests } from './setup.mjs';
import { repoRoot } from './fixtures.mjs';

const FIXTURES = path.join(repoRoot, 'tests/fixtures/models');
const NATIVE = path.join(repoRoot, 'target/release/webqwen');
const MODELS = ['q4_g64', 'moe_e8k2_q4'];
const PROMPT = 'Hello';
const MAX_TOKENS = 8;

let env;
let page;
const have = fs.existsSync(path.join(FIXTURES, 'manifest.json')) && fs.existsSync(NATIVE);

/** Greedy token ids of the native engine for the same chat. */
function nativeTokens(name) {
  const out = execFileSync(NATIVE, [
    'generate', '--model', path.join(FIXTURES, name), '--prompt', PROMPT, '--temperature', '0',
    '--max-tokens', String(MAX_TOKENS), '--no-think', '--json',
  ], { encoding: 'utf8', env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' } });
  return JSON.parse(out).tokens;
}

/** Load `name` through the package and chat greedily; plain data back. */
async function browserTokens(name) {
  const t0 = Date.now();
  const loaded = await page.evaluate((o) => window.load(o), { model: `${env.models.url}/fixtures/${name}/` });
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
  if (!have) return;
  env = await setUp('engine', { realPackage: true });
  for (const name of MODELS) {
    const dst = path.join(env.modelsDir, 'fixtures', name);
    fs.mkdirSync(dst, { recursive: true });
    for (const f of fs.readdirSync(path.join(FIXTURES, name))) {
      const src = path.join(FIXTURES, name, f);
      if (fs.statSync(src).isFile()) fs.copyFileSync(src, path.join(dst, f));
    }
  }
  page = await env.context.newPage();
  await page.goto(`${env.app.url}/www/test/pages/harness.html`);
  await page.waitForFunction(() => window.harnessReady);
});

after(async () => {
  await env?.tearDown();
});

test('greedy tokens equal the native engine, from the network, the cache, and offline', { skip: !have && 'no fixtures or native binary (bash tests/run_all.sh builds them)' }, async () => {
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
