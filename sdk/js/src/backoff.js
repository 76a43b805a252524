// Reconnect delays: "full jitter" exponential backoff. Each delay is uniform in
// [0, min(cap, base * 2^attempt)), so clients that lost the server at the same moment spread
// their reconnects over the whole window instead of arriving in waves.

/**
 * @param {number} attempt 0 for the first retry
 * @param {number} base ms
 * @param {number} cap ms
 * @param {() => number} random uniform in [0, 1)
 */
export function fullJitter(attempt, base, cap, random = Math.random) {
  // 2^attempt overflows to Infinity past ~1024; min() keeps the ceiling finite anyway.
  const ceiling = Math.min(cap, base * Math.pow(2, Math.min(attempt, 52)));
  return Math.floor(random() * ceiling);
}
