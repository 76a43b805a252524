// Deadline-based waiting: tests wait for a condition (checked when something happens, and
// on a short poll for conditions outside our event loop, like a pid file), never for a fixed
// time.

/**
 * Resolves with the first truthy value of `cond()`; rejects with `what` after `timeout` ms.
 * `cond` may throw to fail at once.
 */
export function until(cond, { what = 'condition', timeout = 10000, every = 10 } = {}) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + timeout;
    const check = () => {
      let v;
      try {
        v = cond();
      } catch (err) {
        reject(err);
        return;
      }
      if (v) resolve(v);
      else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(check, every);
    };
    check();
  });
}

/** The next `event` of an emitter satisfying `pred`, or a rejection after `timeout` ms. */
export function nextEvent(emitter, event, { pred = () => true, timeout = 10000 } = {}) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(new Error(`timed out waiting for event ${event}`));
    }, timeout);
    const off = emitter.on(event, (...args) => {
      if (!pred(...args)) return;
      clearTimeout(timer);
      off();
      resolve(args.length > 1 ? args : args[0]);
    });
  });
}
