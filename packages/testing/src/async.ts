/** A promise with its resolver, for waiting on events in tests. */
export function deferred<T = void>(): { promise: Promise<T>; resolve: (v: T) => void } {
  let resolve!: (v: T) => void;
  const promise = new Promise<T>((r) => (resolve = r));
  return { promise, resolve };
}

/** Resolves with the abort reason when `signal` aborts (never rejects). */
export function aborted(signal: AbortSignal): Promise<unknown> {
  return new Promise((r) => {
    if (signal.aborted) r(signal.reason);
    else signal.addEventListener('abort', () => r(signal.reason), { once: true });
  });
}
