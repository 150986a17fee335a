// The writable layers' disk use, computed off the request path: a periodic walk of each container's upper
// directory, one container after another, its results cached. The stats RPCs only read the cache, so a
// ListContainerStats never walks a tree. The walk pauses while nobody reads the cache (no kubelet, no crictl):
// the first read after a pause wakes it.
import type { Logger } from '../log.js';

export interface LayerDirUsage {
  usedBytes: number;
  inodesUsed: number;
}

export interface WritableLayerOptions {
  /** The containers whose layers exist now, with their upper directories. */
  layers(): { id: string; upperDir: string }[];
  walk(dir: string): Promise<LayerDirUsage | undefined>;
  intervalMs: number;
  log: Logger;
  /** Unix milliseconds; tests pass a fake clock. */
  now?: () => number;
}

export interface CachedLayerUsage extends LayerDirUsage {
  /** Unix nanoseconds when the walk of this layer ended. */
  timestampNs: bigint;
}

export class WritableLayers {
  private readonly cache = new Map<string, CachedLayerUsage>();
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private lastRead = 0;
  private closed = false;
  private readonly now: () => number;

  constructor(private readonly opts: WritableLayerOptions) {
    this.now = opts.now ?? Date.now;
  }

  /** The last walk's result for a container; undefined before its first walk. */
  usage(id: string): CachedLayerUsage | undefined {
    const idle = this.now() - this.lastRead > this.idleAfterMs();
    this.lastRead = this.now();
    if (idle) this.wake();
    return this.cache.get(id);
  }

  /** Starts the periodic walk; the first one runs at once. */
  start(): void {
    this.lastRead = this.now();
    this.wake();
  }

  /** One full pass over every layer (also what the timer runs); resolves when it is done. */
  refresh(): Promise<void> {
    this.running ??= this.walkAll().finally(() => {
      this.running = undefined;
      this.schedule();
    });
    return this.running;
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }

  private idleAfterMs(): number {
    // kubelet asks every 10-15 s; several intervals without a reader means nobody is looking.
    return Math.max(5 * this.opts.intervalMs, 60_000);
  }

  private wake(): void {
    if (this.closed) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    void this.refresh();
  }

  private schedule(): void {
    if (this.closed || this.timer) return;
    if (this.now() - this.lastRead > this.idleAfterMs()) return; // asleep until the next read
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.refresh();
    }, this.opts.intervalMs);
    this.timer.unref();
  }

  private async walkAll(): Promise<void> {
    const layers = this.opts.layers();
    const live = new Set(layers.map((l) => l.id));
    for (const id of this.cache.keys()) if (!live.has(id)) this.cache.delete(id);
    for (const { id, upperDir } of layers) {
      if (this.closed) return;
      try {
        const usage = await this.opts.walk(upperDir);
        if (usage) this.cache.set(id, { ...usage, timestampNs: BigInt(this.now()) * 1_000_000n });
        else this.cache.delete(id);
      } catch (err) {
        this.opts.log.warn('cannot measure a writable layer', { containerId: id, dir: upperDir, err });
      }
    }
  }
}
