// Measures the package on a synthetic model in headless Chromium (not a test: BENCHMARKS.md).
// Usage: node www/test/measure-synthetic.mjs DIR [f16|f32]   (DIR from `webqwen synth --shape 0.6b --out DIR ...`;
// the second argument is the KV-cache format, default f16)
import fs from 'node:fs';
import path from 'node:path';
import { setUp } from './setup.mjs';

const dir = path.resolve(process.argv[2] || '/tmp/s06');
const kvCache = process.argv[3] || 'f16';
const env = await setUp('measure', { realPackage: true });
fs.symlinkSync(dir, path.join(env.modelsDir, 'model'));
const page = await env.context.newPage();
await page.goto(`${env.app.url}/www/test/pages/harness.html`);
await page.waitForFunction(() => window.harnessReady);
const wasmBytes = fs.statSync(path.join(env.pkgDir, 'webqwen_wasm_bg.wasm')).size;
for (const pass of ['network', 'cache']) {
  const t0 = Date.now();
  const loaded = await page.evaluate((o) => window.load(o), { model: `${env.models.url}/model/`, kvCache });
  if (!loaded.ok) { console.log(JSON.stringify(loaded.error)); break; }
  const loadS = (Date.now() - t0) / 1000;
  const reply = await page.evaluate(async (req) => {
    const c = await window.engine.chat.completions.create(req);
    await window.engine.unload();
    return c;
  }, { messages: [{ role: 'user', content: 'Hello' }], temperature: 0, max_tokens: 8, enable_thinking: false });
  console.log(JSON.stringify({ pass, kvCache, wasmBytes, loadS, usage: reply.usage }));
}
await env.tearDown();
