// Every session listens for berth's shutdown. One listener per signal fans out to the sessions, so a thousand
// sessions do not hang a thousand listeners (and a MaxListeners warning) on the one shared AbortSignal.

const subscribers = new WeakMap<AbortSignal, Set<() => void>>();

/** Calls fn once when signal aborts (at once if it has); returns the unsubscribe. */
export function onShutdown(signal: AbortSignal, fn: () => void): () => void {
  if (signal.aborted) {
    queueMicrotask(fn);
    return () => undefined;
  }
  let set = subscribers.get(signal);
  if (!set) {
    const created = new Set<() => void>();
    subscribers.set(signal, created);
    signal.addEventListener(
      'abort',
      () => {
        subscribers.delete(signal);
        for (const f of [...created]) f();
      },
      { once: true },
    );
    set = created;
  }
  const entry = () => fn();
  set.add(entry);
  return () => set.delete(entry);
}
