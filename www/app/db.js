// The conversation, kept in IndexedDB so it survives reloads (and Safari's 7-day limit
// on script-writable storage does not apply once the app is on the home screen).

const DB_NAME = 'webqwen-app';
const STORE = 'kv';

let dbPromise = null;

function open() {
  dbPromise ??= new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  return dbPromise;
}

async function run(mode, fn) {
  const db = await open();
  return new Promise((resolve, reject) => {
    const tx = db.transaction(STORE, mode);
    const req = fn(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req?.result);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  });
}

export async function load(key) {
  try {
    return await run('readonly', (s) => s.get(key));
  } catch (e) {
    console.warn('webqwen app: could not read IndexedDB', e);
    return undefined;
  }
}

export async function save(key, value) {
  try {
    await run('readwrite', (s) => s.put(value, key));
  } catch (e) {
    console.warn('webqwen app: could not write IndexedDB', e);
  }
}
