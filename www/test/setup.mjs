// Shared set-up of the browser tests: the mock package, fixture models, two servers
// (the app/package origin and a separate model origin, like a page and the hub), and a
// fresh headless Chromium profile.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { assembleMockPackage, repoRoot } from './fixtures.mjs';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const OUT_DIR = process.env.OUT_DIR || path.join(os.tmpdir(), 'webqwen-www-test');

const FLAGS = [
  '--headless', '--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

/** `realPackage`: serve the real package (pkg/, made by ./pkg-build.sh) instead of the mock. */
export async function setUp(name, { realPackage = false } = {}) {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), `webqwen-${name}-`));
  const pkgDir = realPackage ? path.join(repoRoot, 'pkg') : assembleMockPackage(path.join(tmp, 'pkg'));
  if (realPackage && !fs.existsSync(path.join(pkgDir, 'webqwen_wasm_bg.wasm'))) {
    throw new Error(`${pkgDir} has no webqwen_wasm_bg.wasm: run ./pkg-build.sh first`);
  }
  const modelsDir = path.join(tmp, 'models');
  fs.mkdirSync(modelsDir);
  fs.mkdirSync(OUT_DIR, { recursive: true });
  const app = await startServer({ root: repoRoot, mounts: { '/pkg/': pkgDir } });
  const env = { tmp, pkgDir, modelsDir, app, models: null, context: null };
  env.models = await startServer({ root: modelsDir });
  // playwright-core passes --user-data-dir itself for a persistent context: a fresh
  // profile directory per test file, so OPFS, caches and service workers start empty.
  env.context = await chromium.launchPersistentContext(path.join(tmp, 'profile'), {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1100, height: 800 },
  });
  env.logs = [];
  env.context.on('console', (msg) => env.logs.push(`[${msg.type()}] ${msg.text()}`));
  env.context.on('weberror', (err) => env.logs.push(`[pageerror] ${err.error()?.stack || err.error()}`));
  env.restartModels = async () => {
    env.models = await startServer({ root: modelsDir, port: env.models.port });
  };
  env.tearDown = async () => {
    await env.context?.close().catch(() => {});
    await env.app.close();
    await env.models.close().catch(() => {});
    if (!process.env.KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
  };
  return env;
}

/** GET/HEAD requests the model server saw, for paths containing `part`. */
export function requests(server, part = '') {
  let n = 0;
  for (const [p, s] of Object.entries(server.stats())) if (p.includes(part)) n += s.GET + s.HEAD;
  return n;
}

/** Range headers (null: none) of the GET requests for paths ending with `suffix`. */
export function ranges(server, suffix) {
  const out = [];
  for (const [p, s] of Object.entries(server.stats())) if (p.endsWith(suffix)) out.push(...s.ranges);
  return out;
}
