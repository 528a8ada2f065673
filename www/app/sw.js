// Service worker of the webqwen chat app: keeps the app shell and the webqwen package
// (JS + wasm) so the app opens without a network. Model weights are not its business:
// the package caches them itself (OPFS / Cache API), so their requests pass through.
//
// Strategy: network first (so a deployed update shows up on the next visit), the cache
// when the network fails or takes too long.

// v2: v1 stored any navigation in its scope as the shell; activating v2 deletes that cache.
const VERSION = 'webqwen-app-v2';
const NETWORK_TIMEOUT_MS = 4000;

// app.js registers this worker as sw.js?pkg=<package directory URL>, with a scope wide
// enough to cover the package as well (see registerServiceWorker there).
const APP_DIR = new URL('./', self.location.href).href;
const PKG_DIR = new URL(new URL(self.location.href).searchParams.get('pkg') || '../../pkg/', self.location.href);

const SHELL = [
  './', 'index.html', 'app.css', 'app.js', 'db.js', 'manifest.webmanifest',
  'icons/icon.svg', 'icons/icon-192.png', 'icons/icon-512.png', 'icons/maskable-512.png', 'icons/apple-touch-icon.png',
].map((p) => new URL(p, APP_DIR).href);

const PACKAGE = ['index.js', 'worker.js', 'cache.js', 'errors.js', 'webqwen_wasm.js', 'webqwen_wasm_bg.wasm']
  .map((p) => new URL(p, PKG_DIR).href);

const KNOWN = new Set([...SHELL, ...PACKAGE]);

// The app's page: the only navigations answered with (and stored as) the shell. Anything
// else in the scope (the package's folder, other pages of the site, the app's own CSS
// opened as a page) passes through: storing it as index.html would replace the app.
const INDEX = new URL('index.html', APP_DIR).href;
const PAGES = new Set([APP_DIR, INDEX]);

self.addEventListener('install', (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(VERSION);
    await cache.addAll(SHELL.map((url) => new Request(url, { cache: 'reload' })));
    // A missing package file must not block the shell from installing (the page says
    // what is wrong); it is cached when it is first fetched.
    await Promise.all(PACKAGE.map((url) => cache.add(new Request(url, { cache: 'reload' })).catch((e) => {
      console.warn(`webqwen sw: could not cache ${url}`, e);
    })));
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    // Only this app's older shells: the package's model cache lives in the same origin.
    for (const name of await caches.keys()) {
      if (name.startsWith('webqwen-app-') && name !== VERSION) await caches.delete(name);
    }
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', (event) => {
  const req = event.request;
  if (req.method !== 'GET') return;
  const url = new URL(req.url);
  url.search = '';
  url.hash = '';
  if (req.mode === 'navigate') {
    if (PAGES.has(url.href)) event.respondWith(networkFirst(req, INDEX));
  } else if (KNOWN.has(url.href)) {
    event.respondWith(networkFirst(req, url.href));
  }
});

async function networkFirst(req, key) {
  const cache = await caches.open(VERSION);
  const network = fetch(req, { cache: 'no-cache' }).then(async (res) => {
    // Stored only when it is that very file: same origin, not redirected elsewhere, and
    // (for the page) an HTML document.
    const html = key !== INDEX || (res.headers.get('content-type') || '').startsWith('text/html');
    if (res.ok && res.type === 'basic' && !res.redirected && html) await cache.put(key, res.clone());
    return res;
  });
  network.catch(() => {}); // a late failure after the timeout is not an error
  const timeout = new Promise((resolve) => setTimeout(resolve, NETWORK_TIMEOUT_MS, null));
  let res = null;
  try {
    res = await Promise.race([network, timeout]);
    if (res?.ok) return res;
  } catch {
    // offline: fall through to the cache
  }
  const cached = await cache.match(key);
  if (cached) return cached;
  return res ?? network; // nothing cached: the server's answer after all (or its failure)
}
