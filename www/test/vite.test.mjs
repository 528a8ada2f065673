// A web app built with Vite imports the packed npm package and runs the real engine:
// `npm pack` of pkg/ (made by ./pkg-build.sh) is unpacked into vite-app/node_modules/webqwen
// as `npm install <tarball>` would, `vite build` bundles vite-app/ (the worker, the wasm glue
// and the .wasm asset included), and the built site, served statically, must give exactly the
// native engine's greedy tokens on a fixture model, streamed.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { startServer } from './server.mjs';
import { launchBrowser } from './setup.mjs';
import { nativeGreedy, copyFixture, PKG, realEngineSkip as skip } from './native.mjs';

const here = path.dirname(new URL(import.meta.url).pathname);
const APP = path.join(here, 'vite-app');

let tmp;
let site;
let models;
let context;

before(async () => {
  if (skip) return;
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'webqwen-vite-'));
  // npm pack, then unpack as npm install does (the tarball's `package/` is the package root).
  const tgz = execFileSync('npm', ['pack', '--silent', '--pack-destination', tmp], { cwd: PKG, encoding: 'utf8' }).trim().split('\n').at(-1);
  const dest = path.join(APP, 'node_modules/webqwen');
  fs.rmSync(dest, { recursive: true, force: true });
  fs.mkdirSync(dest, { recursive: true });
  execFileSync('tar', ['-xzf', path.join(tmp, tgz), '-C', dest, '--strip-components=1']);
  const dist = path.join(tmp, 'dist');
  execFileSync(path.join(here, 'node_modules/.bin/vite'), ['build'], { cwd: APP, env: { ...process.env, VITE_OUT_DIR: dist }, stdio: 'inherit' });
  const assets = fs.readdirSync(path.join(dist, 'assets'));
  assert.ok(assets.some((f) => f.endsWith('.wasm')), `vite emitted the wasm module: ${assets}`);
  site = await startServer({ root: dist });
  const modelsDir = path.join(tmp, 'models');
  copyFixture('q4_g64', path.join(modelsDir, 'q4_g64'));
  models = await startServer({ root: modelsDir });
  context = await launchBrowser(path.join(tmp, 'profile'));
});

after(async () => {
  await context?.close().catch(() => {});
  await site?.close();
  await models?.close();
  if (tmp && !process.env.KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
});

test('a Vite-built app streams the native engine\'s greedy tokens', { skip }, async () => {
  const want = nativeGreedy('q4_g64', 'Hello', 8);
  const page = await context.newPage();
  const logs = [];
  page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => logs.push(`[pageerror] ${e.stack || e}`));
  await page.goto(`${site.url}/index.html`);
  await page.waitForFunction(() => window.appReady, null, { timeout: 30_000 });
  const got = await page.evaluate((o) => window.greedy(o).catch((e) => ({ error: `${e.name}: ${e.message}` })),
    { model: `${models.url}/q4_g64/`, prompt: 'Hello', maxTokens: 8 });
  assert.ok(!got.error, `${got.error}\n${logs.join('\n')}`);
  assert.deepEqual(got.usage.extra.token_ids, want.tokens);
  assert.equal(got.text, want.text);
  assert.ok(got.chunks >= 2, `streamed in ${got.chunks} chunks`);
  assert.equal(got.cached.length, 1);
  assert.ok(got.cached[0].complete);
});
