// Shared set-up of the browser tests: the mock package, fixture models, two servers
// (the app/package origin and a separate model origin, like a page and the hub), and a
// fresh headless Chromium profile.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';
import { startServer } from './server.mjs';
import { assembleMockPackage, repoRoot } from './fixtures.mjs';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
export const OUT_DIR = process.env.OUT_DIR || path.join(os.tmpdir(), 'webqwen-www-test');

const FLAGS = [
  '--headless', '--no-sandbox', '--enable-unsafe-webgpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
];

/**
 * Headless Chromium with WebGPU on a fresh profile in `profileDir` (playwright-core passes
 * --user-data-dir itself for a persistent context), so OPFS, caches and service workers start
 * empty.
 */
export function launchBrowser(profileDir) {
  return chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: FLAGS,
    viewport: { width: 1100, height: 800 },
  });
}

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
  env.context = await launchBrowser(path.join(tmp, 'profile'));
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

/**
 * Decodes a PNG screenshot in `page` and checks that it is a picture rather than one flat
 * colour: at least `colours` distinct (5-bit-per-channel) colours and a luminance spread.
 */
export async function assertNotBlank(page, png, label, { colours = 20, stdev = 5 } = {}) {
  const stats = await page.evaluate(async (b64) => {
    const img = new Image();
    img.src = `data:image/png;base64,${b64}`;
    await img.decode();
    const c = new OffscreenCanvas(img.width, img.height);
    const ctx = c.getContext('2d');
    ctx.drawImage(img, 0, 0);
    const { data } = ctx.getImageData(0, 0, img.width, img.height);
    const seen = new Set();
    let sum = 0;
    let sum2 = 0;
    let n = 0;
    for (let i = 0; i < data.length; i += 4 * 7, n++) {
      seen.add((data[i] >> 3) << 10 | (data[i + 1] >> 3) << 5 | (data[i + 2] >> 3));
      const l = 0.2126 * data[i] + 0.7152 * data[i + 1] + 0.0722 * data[i + 2];
      sum += l;
      sum2 += l * l;
    }
    return { width: img.width, height: img.height, colours: seen.size, stdev: Math.sqrt(sum2 / n - (sum / n) ** 2) };
  }, png.toString('base64'));
  assert.ok(stats.colours > colours && stats.stdev > stdev, `${label} looks blank: ${JSON.stringify(stats)}`);
  return stats;
}
