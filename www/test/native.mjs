// The native engine as the browser tests' peer: the same fixture models, run by the release
// binary (target/release/webqwen), give the tokens and text the browser must reproduce.

import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { repoRoot } from './fixtures.mjs';

export const FIXTURES = path.join(repoRoot, 'tests/fixtures/models');
export const NATIVE = path.join(repoRoot, 'target/release/webqwen');
export const PKG = path.join(repoRoot, 'pkg');

/**
 * Why the real-engine tests cannot run here, or false when they can. Under the test command
 * (which sets WEBQWEN_REQUIRE_FIXTURES) a missing piece is an error, never a silent skip.
 */
export const realEngineSkip = (() => {
  const missing = [
    [path.join(FIXTURES, 'manifest.json'), 'the fixture models'],
    [NATIVE, 'the native binary'],
    [path.join(PKG, 'webqwen_wasm_bg.wasm'), 'pkg/ (./pkg-build.sh)'],
  ].filter(([file]) => !fs.existsSync(file)).map(([, what]) => what);
  if (!missing.length) return false;
  const why = `needs ${missing.join(', ')}: bash tests/run_all.sh builds them`;
  if (process.env.WEBQWEN_REQUIRE_FIXTURES) throw new Error(why);
  return why;
})();

const memo = new Map();

/** Greedy completion of one user message, thinking off: `{tokens, text}`. `extra`: more CLI flags. */
export function nativeGreedy(name, prompt, maxTokens, extra = []) {
  const key = JSON.stringify([name, prompt, maxTokens, extra]);
  if (!memo.has(key)) {
    const out = execFileSync(NATIVE, [
      'generate', '--model', path.join(FIXTURES, name), '--prompt', prompt, '--temperature', '0',
      '--max-tokens', String(maxTokens), '--no-think', '--json', ...extra,
    ], { encoding: 'utf8', env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || '/tmp' } });
    const v = JSON.parse(out);
    memo.set(key, { tokens: v.tokens, text: v.content });
  }
  return memo.get(key);
}

/** Copies fixture model `name`'s files into `dst` (a directory a test server serves). */
export function copyFixture(name, dst) {
  fs.mkdirSync(dst, { recursive: true });
  for (const f of fs.readdirSync(path.join(FIXTURES, name))) {
    const src = path.join(FIXTURES, name, f);
    if (fs.statSync(src).isFile()) fs.copyFileSync(src, path.join(dst, f));
  }
}
