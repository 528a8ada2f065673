// The chat app (www/app) in headless Chromium, on the mock package: loading from ?model=
// (only once the user agrees), streaming with thinking, stop, tok/s, persistence, the
// cached-model list and where each model came from, offline start through the service
// worker (which keeps only the app's own page as the shell), and the no-WebGPU message.
// Screenshots go to OUT_DIR.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { setUp, OUT_DIR, requests, assertNotBlank } from './setup.mjs';
import { makeModel } from './fixtures.mjs';
import { startServer } from './server.mjs';

const MiB = 1 << 20;
let env;
let page;
let appUrl;
let other; // another hub, as a link's ?endpoint= would name

before(async () => {
  env = await setUp('app');
  makeModel(path.join(env.modelsDir, 'test-org/app-model'), { shards: [4 * MiB], mock: { stepDelayMs: 15 } });
  makeModel(path.join(env.tmp, 'other/test-org/linked'), { shards: [1 * MiB] });
  other = await startServer({ root: path.join(env.tmp, 'other') });
  // A URL model (not a hub id), to cover that path; the model server is another origin.
  appUrl = `${env.app.url}/www/app/?model=${encodeURIComponent(`${env.models.url}/test-org/app-model`)}`;
  page = await env.context.newPage();
});

after(async () => {
  await other?.close();
  await env?.tearDown();
});

/** The confirmation a link's ?model= / ?endpoint= brings up: its model id, origin and warning. */
async function linkConfirmation() {
  await page.waitForSelector('#confirm-load[open]');
  return {
    model: await page.textContent('#confirm-load .confirm-model'),
    origin: await page.textContent('#confirm-load .confirm-origin'),
    warning: await page.isVisible('#confirm-load .confirm-warning'),
  };
}

const lastAnswer = () => page.locator('.msg.assistant').last();

async function ask(text) {
  await page.fill('#input', text);
  await page.press('#input', 'Enter');
  await page.waitForSelector('body[data-generating="true"]');
}

async function answered() {
  await page.waitForSelector('body[data-generating="false"]', { timeout: 30_000 });
}

test('loads the model from ?model= once agreed, streams with thinking, stops, shows tok/s', async () => {
  await page.goto(appUrl);
  assert.deepEqual(await linkConfirmation(), { model: `${env.models.url}/test-org/app-model`, origin: env.models.url, warning: true });
  await page.click('#confirm-load .confirm-load');
  await page.waitForSelector('body[data-engine="ready"]', { timeout: 60_000 });
  assert.match(await page.textContent('#model-status'), /app-model/);
  assert.equal(new URL(page.url()).search, '', 'the link\'s request is not asked again on reload');

  await ask('hello there');
  await answered();
  const first = page.locator('.msg.assistant').nth(0);
  assert.equal(await first.locator('.bubble').textContent(), 'Echo: hello there');
  assert.equal(await first.locator('.thinking').isHidden(), false);
  assert.equal((await first.locator('.thinking-text').textContent()).trim(), 'Thinking about: hello there');
  assert.match(await first.locator('.meta').textContent(), /\d+ tokens · [\d.]+ tok\/s/);
  assert.match(await page.textContent('#speed'), /tok\/s/);
  // The thinking block is collapsed and opens on tap.
  assert.equal(await first.locator('.thinking-text').isVisible(), false);
  await first.locator('.thinking summary').click();
  assert.equal(await first.locator('.thinking-text').isVisible(), true);

  await page.click('label.switch'); // thinking off
  assert.equal(await page.isChecked('#thinking'), false);
  await ask('no thoughts');
  await answered();
  assert.equal(await lastAnswer().locator('.bubble').textContent(), 'Echo: no thoughts');
  assert.equal(await lastAnswer().locator('.thinking').isHidden(), true);
  await page.click('label.switch'); // back on

  await ask('write something long');
  await page.waitForFunction(() => document.querySelector('.msg.assistant:last-child .bubble')?.textContent.includes('word5'));
  assert.equal(await page.isVisible('#stop'), true);
  assert.equal(await page.isVisible('#send'), false);
  await page.click('#stop');
  await answered();
  const stopped = lastAnswer();
  assert.match(await stopped.locator('.meta').textContent(), /stopped/);
  assert.ok(!(await stopped.locator('.bubble').textContent()).includes('word399'));
  assert.equal(await page.isVisible('#send'), true);

  await ask('one more for the picture');
  await answered();
  const desktop = await page.screenshot({ path: path.join(OUT_DIR, 'app-desktop.png') });
  await assertNotBlank(page, desktop, 'desktop screenshot');

  // iPhone-sized: the sidebar becomes a drawer; nothing overflows sideways.
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(400); // the sidebar turns into a drawer and slides out
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `horizontal overflow of ${overflow}px on a phone screen`);
  assert.equal(await page.isVisible('#models-btn'), true);
  const mobile = await page.screenshot({ path: path.join(OUT_DIR, 'app-mobile.png') });
  await assertNotBlank(page, mobile, 'mobile screenshot');
  await page.click('#models-btn');
  await page.waitForTimeout(400); // the drawer's slide-in
  await page.screenshot({ path: path.join(OUT_DIR, 'app-mobile-models.png') });
  assert.match(await page.textContent('#cached-list'), /app-model/);
  await page.click('#scrim', { position: { x: 375, y: 400 } }); // beside the drawer
  await page.setViewportSize({ width: 1100, height: 800 });
});

test('the conversation survives a reload, and the cached model loads without downloading', async () => {
  const count = await page.locator('.msg').count();
  assert.ok(count >= 8);
  env.models.reset();
  await page.reload();
  await page.waitForSelector('body[data-engine="ready"]', { timeout: 60_000 });
  assert.equal(await page.locator('.msg').count(), count);
  assert.equal(requests(env.models, '/test-org/app-model/'), 0);
  await page.click('#new-chat');
  assert.equal(await page.locator('.msg').count(), 0);
  await page.reload();
  await page.waitForSelector('body[data-engine="ready"]', { timeout: 60_000 });
  assert.equal(await page.locator('.msg').count(), 0);
});

test('a clear message when WebGPU is missing', async () => {
  const noGpu = await env.context.newPage();
  await noGpu.addInitScript(() => { Object.defineProperty(Navigator.prototype, 'gpu', { get: () => undefined }); });
  await noGpu.goto(`${env.app.url}/www/app/`);
  await noGpu.waitForSelector('#notice:not([hidden])');
  assert.match(await noGpu.textContent('#notice'), /WebGPU is not available/);
  assert.equal(await noGpu.isDisabled('#load-btn'), true);
  await noGpu.screenshot({ path: path.join(OUT_DIR, 'app-no-webgpu.png') });
  await noGpu.close();
});

test('a link\'s model and endpoint load only when agreed, and the origin stays on screen', async () => {
  const link = `${env.app.url}/www/app/?model=test-org/linked&endpoint=${encodeURIComponent(other.url)}`;
  other.reset();
  await page.goto(link);
  assert.deepEqual(await linkConfirmation(), { model: 'test-org/linked', origin: other.url, warning: true });
  await page.screenshot({ path: path.join(OUT_DIR, 'app-link-confirmation.png') });
  // Cancel: nothing is loaded from there, and the previous model loads as before.
  await page.click('#confirm-load .confirm-cancel');
  await page.waitForSelector('body[data-engine="ready"]', { timeout: 60_000 });
  assert.match(await page.textContent('#model-status'), /app-model/);
  assert.equal(requests(other), 0);
  assert.equal(await page.isVisible('#confirm-load'), false);
  assert.equal(new URL(page.url()).search, '');

  // Escape dismisses it too (it is never taken as a yes).
  await page.goto(link);
  await linkConfirmation();
  await page.keyboard.press('Escape');
  await page.waitForSelector('body[data-engine="ready"]', { timeout: 60_000 });
  assert.equal(requests(other), 0);

  await page.goto(link);
  await linkConfirmation();
  await page.click('#confirm-load .confirm-load');
  await page.waitForSelector('body[data-engine="ready"]', { timeout: 60_000 });
  assert.ok(requests(other, '/test-org/linked/') > 0);
  const host = new URL(other.url).host;
  assert.equal(await page.textContent('#model-status .origin'), host);
  assert.match(await page.textContent('#loaded-from'), new RegExp(`Loaded from ${other.url.replace(/[.]/g, '\\.')} \\(not huggingface\\.co\\)`));
  // The cached list names the origin of each entry.
  const entry = page.locator(`#cached-list li[data-model="test-org/linked"]`);
  assert.equal(await entry.getAttribute('data-origin'), other.url);
  assert.match(await entry.textContent(), new RegExp(`from ${host.replace(/[.]/g, '\\.')}`));

  // Back to the first model (from the list), and the linked one deleted from the list.
  page.once('dialog', (d) => d.accept());
  await entry.locator('.danger').click();
  await page.waitForFunction(() => !document.querySelector('#cached-list li[data-model="test-org/linked"]'));
  await page.click('#cached-list li[data-model*="app-model"] button:not(.danger)');
  await page.waitForSelector('body[data-engine="ready"]', { timeout: 60_000 });
  assert.match(await page.textContent('#model-status'), /app-model/);
});

test('only the app\'s own page is kept as the offline shell', async () => {
  await page.evaluate(() => navigator.serviceWorker.ready);
  // Other documents in the service worker's scope, opened as pages.
  const nav = await env.context.newPage();
  for (const p of ['/www/app/app.css', '/www/app/manifest.webmanifest', '/www/app/no-such-page']) {
    await nav.goto(`${env.app.url}${p}`);
  }
  await nav.close();
  const shells = await page.evaluate(async () => {
    const index = new URL('index.html', location.href).href;
    const out = [];
    for (const name of await caches.keys()) {
      if (!name.startsWith('webqwen-app-')) continue;
      const res = await (await caches.open(name)).match(index);
      out.push({ name, type: res?.headers.get('content-type'), text: await res?.text() });
    }
    return out;
  });
  assert.ok(shells.length >= 1, 'the shell is cached');
  for (const s of shells) {
    assert.match(s.type ?? '', /^text\/html/, s.name);
    assert.match(s.text ?? '', /<title>webqwen<\/title>/, s.name);
  }
});

test('opens and answers offline (service worker + cached model)', async () => {
  await page.evaluate(() => navigator.serviceWorker.ready);
  assert.ok(await page.evaluate(() => Boolean(navigator.serviceWorker.controller)), 'the page is controlled by the service worker');
  await env.app.close();
  await env.models.close();
  await page.reload();
  await page.waitForSelector('body[data-engine="ready"]', { timeout: 60_000 });
  await ask('are you offline?');
  await answered();
  assert.equal(await lastAnswer().locator('.bubble').textContent(), 'Echo: are you offline?');
});

test('cached models can be deleted from the app', async () => {
  page.once('dialog', (d) => d.accept());
  await page.click('#cached-list li[data-model] .danger');
  await page.waitForFunction(() => !document.querySelector('#cached-list li[data-model]'));
  assert.match(await page.textContent('#cached-list'), /No models downloaded yet/);
});
