// Storage adapters. The SDK keeps two things across reloads and mini-program restarts: the
// outbox (sends not yet acknowledged) and the last seq emitted per conversation. Both are
// small JSON strings written synchronously, so that a page killed right after a `send()` call
// or a `message` event still finds them: the interface is deliberately synchronous.
//
// A storage is any object with get(key) -> string | null, set(key, string), remove(key).

/** Keeps everything in memory: exactly-once within one process only. */
export function memoryStorage() {
  const map = new Map();
  return {
    get: (key) => (map.has(key) ? map.get(key) : null),
    set: (key, value) => void map.set(key, String(value)),
    remove: (key) => void map.delete(key),
  };
}

/** Browser `localStorage` (or `sessionStorage`, or anything with the Web Storage methods). */
export function webStorage(store) {
  return {
    get: (key) => store.getItem(key),
    set: (key, value) => store.setItem(key, value),
    remove: (key) => store.removeItem(key),
  };
}

/**
 * WeChat (`wx`) or uni-app (`uni`) synchronous storage. `getStorageSync` answers '' for a
 * missing key; the SDK wants null for that.
 */
export function miniProgramStorage(api) {
  return {
    get: (key) => {
      const v = api.getStorageSync(key);
      return v === '' || v === undefined || v === null ? null : String(v);
    },
    set: (key, value) => api.setStorageSync(key, value),
    remove: (key) => api.removeStorageSync(key),
  };
}

/** Reads a JSON value; a corrupt or missing entry is the fallback, never a crash at start. */
export function readJson(storage, key, fallback) {
  let text;
  try {
    text = storage.get(key);
  } catch {
    return fallback;
  }
  if (text === null || text === undefined || text === '') return fallback;
  try {
    return JSON.parse(text);
  } catch {
    return fallback;
  }
}
