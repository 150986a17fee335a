import { Logger } from './log.js';

// After a burst of work (pods started, images pulled), V8's old generation holds the garbage of the burst until its
// memory reducer gets to it, which under kubelet's steady polling can take a long time, and glibc keeps the freed
// buffers' pages in its arenas (the thread pool's grow to tens of MiB during a pull or a burst of pod starts):
// berth would sit on the burst's high-water mark. One full collection and a malloc_trim once the burst is over
// give those pages back. Polls (List*, *Status, and ExecSync, which kubelet's exec probes send every few seconds per
// container) do not count as work: waiting for true idleness would never end, and a collection after every probe
// would cost more than it returns.

/** RPCs that allocate enough to be worth a collection once they stop coming. */
const WORK_RPCS = new Set([
  'RunPodSandbox', 'StopPodSandbox', 'RemovePodSandbox',
  'CreateContainer', 'StartContainer', 'StopContainer', 'RemoveContainer',
  'PullImage', 'RemoveImage',
]);

export interface CompactorOptions {
  /** Quiet time after the last work RPC before collecting. */
  quietMs: number;
  /** The collector; absent when node runs without --expose-gc (berth run without its launcher). */
  gc?: () => void;
  /** Returns the C heap's free pages to the kernel (buffers freed by the collection live there). */
  trim?: () => void;
  log: Logger;
}

export class IdleCompactor {
  private timer: NodeJS.Timeout | undefined;
  private workSince = 0;

  constructor(private readonly opts: CompactorOptions) {}

  /** Called when an RPC finishes. */
  readonly observe = (rpc: string): void => {
    if (!this.opts.gc || !WORK_RPCS.has(rpc)) return;
    this.workSince++;
    if (this.timer) this.timer.refresh();
    else {
      this.timer = setTimeout(() => this.compact(), this.opts.quietMs);
      this.timer.unref();
    }
  };

  private compact(): void {
    this.timer = undefined;
    const before = process.memoryUsage.rss();
    const t0 = process.hrtime.bigint();
    this.opts.gc!();
    this.opts.trim?.();
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    const mib = (n: number) => Math.round((n / 1048576) * 10) / 10;
    this.opts.log.info('compacted the heap after a burst of work', { rpcs: this.workSince, ms: Math.round(ms * 100) / 100, rssMiB: mib(before), rssAfterMiB: mib(process.memoryUsage.rss()) });
    this.workSince = 0;
  }

  close(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** The collector node exposes with --expose-gc (the launcher passes it). */
export function exposedGc(): (() => void) | undefined {
  const gc = (globalThis as { gc?: unknown }).gc;
  return typeof gc === 'function' ? () => (gc as () => void)() : undefined;
}
