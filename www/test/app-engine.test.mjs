// The chat app (www/app) on the real package (pkg/ from ./pkg-build.sh) in headless Chromium:
// it downloads a random-weight fixture model, streams an answer into the page, and that answer
// is exactly the native engine's for the same prompt and sampling (greedy from the URL). A
// screenshot of the answered chat is taken and checked to show the answer.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { setUp, OUT_DIR, assertNotBlank } from './setup.mjs';
import { nativeGreedy, copyFixture, realEngineSkip as skip } from './native.mjs';

const MODEL = 'q4_g64';
const PROMPT = 'Hello';
const MAX_TOKENS = 12;

let env;
let page;

before(async () => {
  if (skip) return;
  env = await setUp('app-engine', { realPackage: true });
  copyFixture(MODEL, path.join(env.modelsDir, MODEL));
  page = await env.context.newPage();
});

after(async () => {
  await env?.tearDown();
});

test('the chat app streams the real engine\'s answer, equal to the native one', { skip }, async () => {
  const want = nativeGreedy(MODEL, PROMPT, MAX_TOKENS);
  const model = `${env.models.url}/${MODEL}/`;
  await page.goto(`${env.app.url}/www/app/?model=${encodeURIComponent(model)}&temperature=0&max_tokens=${MAX_TOKENS}`);
  // A model named by the link loads once the user agrees.
  await page.waitForSelector('#confirm-load[open]');
  assert.equal(await page.textContent('#confirm-load .confirm-origin'), env.models.url);
  await page.click('#confirm-load .confirm-load');
  await page.waitForSelector('body[data-engine="ready"], body[data-engine="error"]', { timeout: 120_000 });
  assert.equal(await page.getAttribute('body', 'data-engine'), 'ready', `${await page.textContent('#notice')}\n${env.logs.slice(-20).join('\n')}`);
  assert.match(await page.textContent('#model-status'), new RegExp(MODEL));
  // The cached list knows the model is the one in use (no second "Load" button for it).
  await page.waitForFunction(() => document.querySelector('#cached-list li[data-model]')?.textContent.includes('in use'));
  assert.equal(await page.locator('#cached-list li[data-model] button', { hasText: 'Load' }).count(), 0);

  if (await page.isChecked('#thinking')) await page.click('label.switch'); // the native peer runs --no-think
  // Every state of the answer bubble while it streams.
  await page.evaluate(() => {
    window.seen = [];
    new MutationObserver(() => {
      const t = document.querySelector('.msg.assistant:last-child .bubble')?.textContent;
      if (t && t !== window.seen.at(-1)) window.seen.push(t);
    }).observe(document.getElementById('messages'), { subtree: true, childList: true, characterData: true });
  });
  await page.fill('#input', PROMPT);
  await page.press('#input', 'Enter');
  await page.waitForSelector('body[data-generating="true"]');
  await page.waitForSelector('body[data-generating="false"]', { timeout: 120_000 });

  const answer = page.locator('.msg.assistant').last();
  assert.equal(await answer.locator('.bubble').textContent(), want.text, 'the app shows the native engine\'s greedy answer');
  const seen = await page.evaluate(() => window.seen);
  assert.ok(seen.length >= 2 && seen.every((t) => want.text.startsWith(t)), `streamed in growing prefixes: ${JSON.stringify(seen)}`);
  assert.match(await answer.locator('.meta').textContent(), new RegExp(`${MAX_TOKENS} tokens · [\\d.]+ tok/s · length limit reached`));
  assert.match(await page.textContent('#speed'), /[\d.]+ tok\/s/);

  const shot = await page.screenshot({ path: path.join(OUT_DIR, 'app-real-engine.png') });
  await assertNotBlank(page, shot, 'the chat screenshot');
  // The answer itself is in the picture: its bubble, cut out of the screenshot, holds text.
  const box = await answer.locator('.bubble').boundingBox();
  assert.ok(box && box.width > 20 && box.height > 10, `the answer bubble is on screen: ${JSON.stringify(box)}`);
  const bubble = await page.screenshot({ clip: box, path: path.join(OUT_DIR, 'app-real-engine-answer.png') });
  await assertNotBlank(page, bubble, 'the answer bubble', { colours: 3, stdev: 3 });
});
