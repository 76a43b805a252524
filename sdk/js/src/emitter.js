// A minimal event emitter: the SDK must run in mini-programs and browsers, where Node's
// EventEmitter does not exist, and it must not pull in a dependency for forty lines.

export class Emitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this._listeners = new Map();
  }

  /** Adds a listener; returns a function that removes it (handy in page `onUnload`). */
  on(event, fn) {
    let set = this._listeners.get(event);
    if (!set) {
      set = new Set();
      this._listeners.set(event, set);
    }
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** Like `on`, for one call only. */
  once(event, fn) {
    const off = this.on(event, (...args) => {
      off();
      fn(...args);
    });
    return off;
  }

  off(event, fn) {
    const set = this._listeners.get(event);
    if (set) set.delete(fn);
  }

  /**
   * Calls the listeners in the order they were added. A listener that throws must not break
   * the SDK's own state updates (the caller of emit is usually in the middle of one), so the
   * error is reported on the next tick instead of propagating.
   */
  emit(event, ...args) {
    const set = this._listeners.get(event);
    if (!set || set.size === 0) return false;
    for (const fn of [...set]) {
      try {
        fn(...args);
      } catch (err) {
        setTimeout(() => {
          throw err;
        }, 0);
      }
    }
    return true;
  }
}
