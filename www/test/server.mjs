#!/usr/bin/env node
// A static file server for the browser tests (Node only, no dependencies).
//
// - serves `root` (and `mounts`, e.g. /pkg/ -> an assembled package dir), with
//   `/<owner>/<name>/resolve/<rev>/<file>` mapped to `<root>/<owner>/<name>/<file>` and
//   `/api/models/<owner>/<name>/tree/<rev>` listing it, as the Hugging Face hub does;
// - single-range requests (206, Content-Range; 416 past the end);
// - ETag = the file's sha256 (hex, quoted); *.safetensors also get X-Linked-Etag and
//   X-Linked-Size like hub LFS files; other files under `/resolve/` get the git blob id as
//   their ETag, as on the hub, and the tree API lists the git blob id (`oid`) of those and
//   the sha256 (`lfs.oid`) of *.safetensors; CORS with the needed headers exposed;
// - counts requests per path: GET /__stats -> {paths: {path: {GET, HEAD, OPTIONS, ranges}}};
//   GET|POST /__reset clears the counts and the rules;
// - misbehaves on request, for resume tests: POST /__config {rules: [{path, range?, times?,
//   and one of status | ignoreRange | cutAfter | bytesPerSecond | noChecksum | badPartial}]},
//   or ?cut=N on one request. `path` is exact, or a substring when it starts with '*';
//   `range` a regexp the Range header must match. `cutAfter` sends N body bytes of a longer
//   response and then drops the connection; `status` answers with that status;
//   `ignoreRange` answers 200 with the whole file; `noChecksum` states no checksum at all
//   (no ETag, X-Linked-Etag, tree oids), like a plain static server without ETags;
//   `badPartial` answers a Range request with 206 but the whole file from byte 0 and
//   'omit': no Content-Range, or 'claim': a Content-Range claiming the requested range;
//   `times` limits a rule to the next N requests it applies to.
//
// CLI: node server.mjs --root DIR [--port 0] [--mount /pkg/=DIR]...   (prints the URL)

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';

const MIME = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.webmanifest': 'application/manifest+json',
  '.wasm': 'application/wasm',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
  '.ts': 'text/plain; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.jinja': 'text/plain; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

const hashCache = new Map(); // path -> {key, sha256, gitOid}

function hashesOf(file, stat) {
  const key = `${stat.size}:${stat.mtimeMs}`;
  const hit = hashCache.get(file);
  if (hit?.key === key) return hit;
  const bytes = fs.readFileSync(file);
  const entry = {
    key,
    sha256: crypto.createHash('sha256').update(bytes).digest('hex'),
    // What git (and so the hub) names a file by: sha1 of "blob <length>\0" + the bytes.
    gitOid: crypto.createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex'),
  };
  hashCache.set(file, entry);
  return entry;
}

function sha256Of(file, stat) {
  return hashesOf(file, stat).sha256;
}

export async function startServer({ root, mounts = {}, port = 0, host = '127.0.0.1', quiet = true } = {}) {
  root = path.resolve(root);
  const mountList = Object.entries(mounts).map(([prefix, dir]) => [prefix.endsWith('/') ? prefix : prefix + '/', path.resolve(dir)]);
  const state = { stats: {}, rules: [] };
  const sockets = new Set();

  function resolveFile(urlPath) {
    let rel;
    for (const [prefix, dir] of mountList) {
      if (urlPath.startsWith(prefix)) return safeJoin(dir, urlPath.slice(prefix.length));
    }
    const m = /^\/([^/]+)\/([^/]+)\/resolve\/[^/]+\/(.+)$/.exec(urlPath);
    if (m) rel = `${m[1]}/${m[2]}/${m[3]}`;
    else rel = urlPath.slice(1);
    return safeJoin(root, rel);
  }

  function safeJoin(dir, rel) {
    const full = path.resolve(dir, decodeURIComponent(rel));
    if (full !== dir && !full.startsWith(dir + path.sep)) return null;
    return full;
  }

  function count(urlPath, method, range) {
    const s = (state.stats[urlPath] ??= { GET: 0, HEAD: 0, OPTIONS: 0, ranges: [] });
    s[method] = (s[method] || 0) + 1;
    if (method === 'GET') s.ranges.push(range ?? null);
  }

  // Each rule does one thing (status, ignoreRange or cutAfter) and is taken only by the
  // requests it concerns, so `times` counts those alone.
  function takeRule(urlPath, req, concerns) {
    for (const rule of state.rules) {
      const match = rule.path.startsWith('*') ? urlPath.includes(rule.path.slice(1)) : urlPath === rule.path;
      if (!match || !concerns(rule)) continue;
      if (rule.range != null && !new RegExp(rule.range).test(req.headers.range ?? '')) continue;
      if (rule.times != null) {
        if (rule.times <= 0) continue;
        rule.times--;
      }
      return rule;
    }
    return null;
  }

  function cors(res) {
    res.setHeader('Access-Control-Allow-Origin', '*');
    res.setHeader('Access-Control-Allow-Methods', 'GET, HEAD, OPTIONS');
    res.setHeader('Access-Control-Allow-Headers', 'Range, Content-Type');
    res.setHeader('Access-Control-Expose-Headers',
      'ETag, Content-Range, Content-Length, Accept-Ranges, X-Linked-Size, X-Linked-Etag, X-Repo-Commit');
  }

  function json(res, status, body) {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' });
    res.end(text);
  }

  function readBody(req) {
    return new Promise((resolve, reject) => {
      let data = '';
      req.on('data', (c) => { data += c; });
      req.on('end', () => resolve(data));
      req.on('error', reject);
    });
  }

  function treeListing(res, owner, name, noChecksum) {
    const dir = safeJoin(root, `${owner}/${name}`);
    if (!dir || !fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) return json(res, 404, { error: 'Repository not found' });
    const out = [];
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      if (!entry.isFile()) continue;
      const full = path.join(dir, entry.name);
      const stat = fs.statSync(full);
      const item = { type: 'file', path: entry.name, size: stat.size };
      // (for LFS files the hub's `oid` is the pointer file's git id: not the file's)
      if (!noChecksum) item.oid = entry.name.endsWith('.safetensors') ? '0'.repeat(40) : hashesOf(full, stat).gitOid;
      if (entry.name.endsWith('.safetensors')) item.lfs = { size: stat.size, pointerSize: 134, ...(noChecksum ? {} : { oid: sha256Of(full, stat) }) };
      out.push(item);
    }
    return json(res, 200, out);
  }

  async function handle(req, res) {
    const url = new URL(req.url, 'http://localhost');
    const urlPath = url.pathname;
    cors(res);
    if (urlPath === '/__stats') return json(res, 200, { paths: state.stats });
    if (urlPath === '/__reset') {
      state.stats = {};
      state.rules = [];
      return json(res, 200, { ok: true });
    }
    if (urlPath === '/__config') {
      if (req.method === 'POST') {
        const body = JSON.parse((await readBody(req)) || '{}');
        state.rules = (body.rules ?? []).map((r) => ({ ...r }));
      }
      return json(res, 200, { rules: state.rules });
    }
    count(urlPath, req.method, req.headers.range);
    if (req.method === 'OPTIONS') {
      res.writeHead(204, { 'Access-Control-Max-Age': '600' });
      return res.end();
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405);
      return res.end();
    }
    const noChecksum = Boolean(takeRule(urlPath, req, (r) => r.noChecksum));
    const tree = /^\/api\/models\/([^/]+)\/([^/]+)\/tree\/[^/]+$/.exec(urlPath);
    if (tree) return treeListing(res, tree[1], tree[2], noChecksum);

    const statusRule = takeRule(urlPath, req, (r) => r.status != null);
    if (statusRule) {
      res.writeHead(statusRule.status, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' });
      return res.end(`configured status ${statusRule.status}`);
    }

    let file = resolveFile(urlPath);
    if (!file || !fs.existsSync(file)) {
      res.writeHead(404, { 'Content-Type': 'text/plain', 'Cache-Control': 'no-store' });
      return res.end('not found');
    }
    let stat = fs.statSync(file);
    if (stat.isDirectory()) {
      if (!urlPath.endsWith('/')) {
        res.writeHead(301, { Location: urlPath + '/' + url.search });
        return res.end();
      }
      file = path.join(file, 'index.html');
      if (!fs.existsSync(file)) {
        res.writeHead(404);
        return res.end('not found');
      }
      stat = fs.statSync(file);
    }

    const size = stat.size;
    const { sha256, gitOid } = hashesOf(file, stat);
    const headers = {
      'Content-Type': MIME[path.extname(file)] ?? 'application/octet-stream',
      'Accept-Ranges': 'bytes',
      // Revalidate every time: the tests change files between runs, and the app's own
      // service worker is what should make it work offline, not the HTTP cache.
      'Cache-Control': 'no-cache',
    };
    if (!noChecksum) headers.ETag = `"${urlPath.includes('/resolve/') && !file.endsWith('.safetensors') ? gitOid : sha256}"`;
    if (file.endsWith('.safetensors')) {
      if (!noChecksum) headers['X-Linked-Etag'] = `"${sha256}"`;
      headers['X-Linked-Size'] = String(size);
    }
    if (path.basename(file) === 'sw.js') headers['Service-Worker-Allowed'] = '/';

    let start = 0;
    let end = size - 1;
    let status = 200;
    const range = req.headers.range;
    const badPartial = range ? takeRule(urlPath, req, (r) => r.badPartial)?.badPartial : null;
    if (badPartial) {
      // A broken proxy: "206" over the whole file.
      status = 206;
      if (badPartial === 'claim') {
        const m = /^bytes=(\d+)-(\d*)$/.exec(range.trim());
        headers['Content-Range'] = `bytes ${m?.[1] ?? 0}-${m?.[2] || size - 1}/${size}`;
      }
    } else if (range && !takeRule(urlPath, req, (r) => r.ignoreRange)) {
      const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
      if (!m || (m[1] === '' && m[2] === '')) {
        res.writeHead(416, { 'Content-Range': `bytes */${size}` });
        return res.end();
      }
      if (m[1] === '') {
        start = Math.max(0, size - Number(m[2]));
      } else {
        start = Number(m[1]);
        if (m[2] !== '') end = Math.min(end, Number(m[2]));
      }
      if (start >= size || start > end) {
        res.writeHead(416, { 'Content-Range': `bytes */${size}` });
        return res.end();
      }
      status = 206;
      headers['Content-Range'] = `bytes ${start}-${end}/${size}`;
    }
    const length = end - start + 1;
    headers['Content-Length'] = String(length);
    res.writeHead(status, headers);
    if (req.method === 'HEAD') return res.end();

    const cutParam = url.searchParams.get('cut');
    const cutRule = takeRule(urlPath, req, (r) => r.cutAfter != null && length > r.cutAfter);
    const slowRule = takeRule(urlPath, req, (r) => r.bytesPerSecond != null);
    const cutAfter = cutRule?.cutAfter ?? (cutParam != null ? Number(cutParam) : null);
    await sendBody(res, file, start, length, cutAfter, slowRule?.bytesPerSecond);
  }

  async function sendBody(res, file, start, length, cutAfter, bytesPerSecond) {
    const fd = fs.openSync(file, 'r');
    try {
      const chunk = Buffer.alloc(64 * 1024);
      let sent = 0;
      const limit = cutAfter != null ? Math.min(cutAfter, length) : length;
      while (sent < limit) {
        const n = fs.readSync(fd, chunk, 0, Math.min(chunk.length, limit - sent), start + sent);
        if (n <= 0) break;
        const piece = Buffer.from(chunk.subarray(0, n));
        const ok = res.write(piece);
        sent += n;
        if (!ok) await new Promise((r) => res.once('drain', r));
        if (res.destroyed) return;
        if (bytesPerSecond) await new Promise((r) => setTimeout(r, (n / bytesPerSecond) * 1000));
      }
      if (cutAfter != null && cutAfter < length) {
        // Make sure the bytes before the cut reach the client, then drop the connection
        // without finishing the response.
        await new Promise((r) => res.write('', r));
        res.socket?.destroy();
        return;
      }
      res.end();
    } finally {
      fs.closeSync(fd);
    }
  }

  const server = http.createServer((req, res) => {
    handle(req, res).catch((e) => {
      if (!quiet) console.error(e);
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, resolve);
  });
  const actualPort = server.address().port;
  return {
    url: `http://${host}:${actualPort}`,
    port: actualPort,
    state,
    stats: () => state.stats,
    reset: () => { state.stats = {}; state.rules = []; },
    setRules: (rules) => { state.rules = rules.map((r) => ({ ...r })); },
    /** Stops listening and drops every open connection, like a server that went away. */
    close: () => new Promise((resolve) => {
      server.close(() => resolve());
      for (const s of sockets) s.destroy();
    }),
  };
}

function cli() {
  const args = process.argv.slice(2);
  const opts = { root: '.', port: 8080, mounts: {}, quiet: false };
  for (let i = 0; i < args.length; i++) {
    const a = args[i];
    if (a === '--root') opts.root = args[++i];
    else if (a === '--port') opts.port = Number(args[++i]);
    else if (a === '--host') opts.host = args[++i];
    else if (a === '--mount') {
      const [prefix, dir] = args[++i].split('=');
      opts.mounts[prefix] = dir;
    } else {
      console.error('usage: node server.mjs --root DIR [--port 8080] [--host 127.0.0.1] [--mount /pkg/=DIR]...');
      process.exit(2);
    }
  }
  startServer(opts).then((s) => console.log(s.url));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) cli();
