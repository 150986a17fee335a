import { randomBytes } from 'node:crypto';
import { promises as fs, statfsSync } from 'node:fs';
import path from 'node:path';
import { BerthError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import { run } from '../network/exec.js';
import { MNT_DETACH, MS_NODEV, MS_NOSUID, mount, umount2 } from './libc.js';
import { attachLoop, closeFd } from './loop.js';
import { readMountInfo } from './mountinfo.js';
import { applyQuotaPlan, projectIdOf, projectQuotaFs, QuotaCommand, QuotaFs, releaseQuotaPlan } from './project-quota.js';

// A container's writable layer with an upper size limit. Where berth's storage enforces project quotas the upper
// directory gets one; elsewhere (this kind of host: no quota support in the kernel) the upper and work directories
// live on a filesystem of exactly the limit's size: an ext4 image file, sparse, on a loop device, mounted at
// <bundle>/layer. Making that filesystem (mkfs.ext4) costs 10-50 ms, so images are made ahead, off the request
// path, into a pool per size (<root>/writable-layers/pool); a create takes one by rename and the pool refills in
// the background. A container's image is <root>/writable-layers/<container id>.img: the name is the record of
// what exists, so recovery and `berth doctor` find an orphan by its name.

/** What a container's record keeps of its limited layer. */
export type WritableLayerState =
  | { mechanism: 'loop'; bytes: number; image: string; mountPoint: string }
  | { mechanism: 'quota'; bytes: number; fs: QuotaFs; mountPoint: string; projectId: number };

export interface LimitedLayer {
  upperDir: string;
  workDir: string;
  state: WritableLayerState;
}

/** Below this an ext4 with 4 KiB blocks holds too little to be a rootfs's upper layer. */
export const MIN_WRITABLE_LAYER_BYTES = 4 * 1024 * 1024;
export const MAX_WRITABLE_LAYER_BYTES = 2 ** 50;
/** Images kept ready per pooled size; the configured default and the sizes asked for lately are pooled. */
const POOL_DEPTH = 2;
const POOLED_SIZES = 4;
const MKFS_TIMEOUT_MS = 60_000;

/**
 * mkfs.ext4 for a writable layer: no journal (a node crash ends the container anyway) and no reserved blocks or
 * resize inode, so all of the limit is usable; 4 KiB blocks and an inode per 16 KiB keep the metadata of a sparse
 * image near 100 KiB.
 */
export function mkfsArgs(image: string): string[] {
  return ['-q', '-F', '-O', '^has_journal,^resize_inode', '-m', '0', '-b', '4096', '-i', '16384', '-E', 'nodiscard,root_owner=0:0', image];
}

/** The image's size: the limit rounded up to whole 4 KiB blocks. */
export function imageBytes(limit: number): number {
  return Math.ceil(limit / 4096) * 4096;
}

/** Where a container's upper directory is, whichever mechanism limits it (or none). */
export function upperDirOf(c: { bundle: string; writableLayer?: WritableLayerState }): string {
  return c.writableLayer?.mechanism === 'loop' ? path.join(c.writableLayer.mountPoint, 'upper') : path.join(c.bundle, 'upper');
}

export interface LimitedLayersOptions {
  /** berth's root: images go in <root>/writable-layers. */
  root: string;
  log: Logger;
  /** [runtime] writable_layer_max_bytes: pooled from the start when set. */
  defaultBytes: number;
}

export class LimitedLayers {
  private readonly dir: string;
  private readonly poolDir: string;
  /** Pooled images per size, as file names in poolDir. */
  private readonly pool = new Map<number, string[]>();
  private readonly pooledSizes: number[] = [];
  private refilling: Promise<void> = Promise.resolve();
  private quota: { fs: QuotaFs; mountPoint: string } | undefined;

  constructor(private readonly opts: LimitedLayersOptions) {
    this.dir = path.join(opts.root, 'writable-layers');
    this.poolDir = path.join(this.dir, 'pool');
  }

  /** Detects the mechanism, takes back the pool left by the last run, and starts filling it (not awaited). */
  async start(): Promise<void> {
    await fs.mkdir(this.poolDir, { recursive: true, mode: 0o700 });
    const containers = path.join(this.opts.root, 'containers');
    await fs.mkdir(containers, { recursive: true });
    const mnt = mountOf(containers);
    const found = mnt ? projectQuotaFs(statfsSync(containers).type, mnt.superOptions) : undefined;
    if (found && mnt) this.quota = { fs: found, mountPoint: mnt.mountPoint };
    this.opts.log.info('writable-layer limits', { mechanism: this.quota ? `project quota (${this.quota.fs})` : 'loop-backed ext4', defaultBytes: this.opts.defaultBytes });
    if (this.quota) return;
    for (const name of await fs.readdir(this.poolDir)) {
      const bytes = /^([0-9]+)-[0-9a-f]+\.img$/.exec(name)?.[1];
      if (bytes) this.pool.set(Number(bytes), [...(this.pool.get(Number(bytes)) ?? []), name]);
      // A half-made image of a run that stopped while making it.
      else await fs.rm(path.join(this.poolDir, name), { force: true });
    }
    if (this.opts.defaultBytes > 0) this.wantPooled(imageBytes(this.opts.defaultBytes));
  }

  get mechanism(): 'loop' | 'quota' {
    return this.quota ? 'quota' : 'loop';
  }

  imageOf(containerId: string): string {
    return path.join(this.dir, `${containerId}.img`);
  }

  /** The limited upper and work directories of a container being created in `bundle`. */
  async acquire(containerId: string, limit: number, bundle: string): Promise<LimitedLayer> {
    const bytes = imageBytes(limit);
    if (this.quota) return this.acquireQuota(containerId, bytes, bundle, this.quota);
    const image = this.imageOf(containerId);
    const mountPoint = path.join(bundle, 'layer');
    const pooled = this.pool.get(bytes)?.shift();
    if (pooled) await fs.rename(path.join(this.poolDir, pooled), image);
    else await this.makeImage(image, bytes);
    this.wantPooled(bytes);
    try {
      await fs.mkdir(mountPoint);
      const loop = attachLoop(image);
      try {
        mount(loop.device, mountPoint, 'ext4', MS_NOSUID | MS_NODEV, null);
      } finally {
        // Mounted, the device lives as long as the mount (autoclear); unmounted, closing it detaches it.
        closeFd(loop.fd);
      }
      await Promise.all([fs.mkdir(path.join(mountPoint, 'upper')), fs.mkdir(path.join(mountPoint, 'work'))]);
    } catch (err) {
      await this.release({ mechanism: 'loop', bytes, image, mountPoint }).catch(() => undefined);
      throw new BerthError('internal', `container ${containerId}: cannot set up its ${bytes}-byte writable layer: ${errorMessage(err)}`, { cause: err });
    }
    return { upperDir: path.join(mountPoint, 'upper'), workDir: path.join(mountPoint, 'work'), state: { mechanism: 'loop', bytes, image, mountPoint } };
  }

  private async acquireQuota(containerId: string, bytes: number, bundle: string, q: { fs: QuotaFs; mountPoint: string }): Promise<LimitedLayer> {
    const upperDir = path.join(bundle, 'upper');
    const workDir = path.join(bundle, 'work');
    await Promise.all([fs.mkdir(upperDir), fs.mkdir(workDir)]);
    const projectId = projectIdOf(containerId);
    await runPlan(applyQuotaPlan(q.fs, q.mountPoint, upperDir, projectId, bytes), `container ${containerId}: writable-layer quota`);
    return { upperDir, workDir, state: { mechanism: 'quota', bytes, fs: q.fs, mountPoint: q.mountPoint, projectId } };
  }

  /**
   * Frees a container's limited layer: unmounts it (the loop device detaches itself) and deletes the image, or
   * lifts the project's limit. Idempotent. Detached lazily: the mount may be held a moment longer by a container's
   * mount namespace that is going away; the image's space comes back when the device lets go of it.
   */
  async release(state: WritableLayerState): Promise<void> {
    if (state.mechanism === 'quota') {
      await runPlan(releaseQuotaPlan(state.fs, state.mountPoint, state.projectId), 'writable-layer quota release');
      return;
    }
    unmountIfMounted(state.mountPoint);
    await fs.rm(state.image, { force: true });
  }

  /**
   * Recovery: images of containers that have no record (a crash between the image's rename and the record's
   * write, or during a removal), unmounted from their bundle if they still are, and deleted.
   */
  async sweep(liveContainers: ReadonlySet<string>): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await fs.readdir(this.dir).catch(() => [] as string[])) {
      const id = /^([0-9a-f]{64})\.img$/.exec(name)?.[1];
      if (!id || liveContainers.has(id)) continue;
      await this.release({ mechanism: 'loop', bytes: 0, image: path.join(this.dir, name), mountPoint: path.join(this.opts.root, 'containers', id, 'layer') });
      removed.push(id);
    }
    return removed;
  }

  private wantPooled(bytes: number): void {
    const i = this.pooledSizes.indexOf(bytes);
    if (i >= 0) this.pooledSizes.splice(i, 1);
    this.pooledSizes.unshift(bytes);
    const dropped = this.pooledSizes.splice(POOLED_SIZES);
    const defaultBytes = imageBytes(this.opts.defaultBytes);
    for (const size of dropped) {
      if (size === defaultBytes) continue;
      for (const name of this.pool.get(size) ?? []) void fs.rm(path.join(this.poolDir, name), { force: true });
      this.pool.delete(size);
    }
    // One image at a time, behind whatever is being made: the pool never competes with itself for the disk.
    this.refilling = this.refilling.then(() => this.refill(bytes));
  }

  private async refill(bytes: number): Promise<void> {
    while (this.pooledSizes.includes(bytes) && (this.pool.get(bytes)?.length ?? 0) < POOL_DEPTH) {
      const name = `${bytes}-${randomBytes(8).toString('hex')}.img`;
      try {
        await this.makeImage(path.join(this.poolDir, name), bytes);
      } catch (err) {
        this.opts.log.warn('cannot make a writable-layer image for the pool', { bytes, error: errorMessage(err) });
        return;
      }
      this.pool.set(bytes, [...(this.pool.get(bytes) ?? []), name]);
    }
  }

  /** A sparse file of `bytes` with an empty ext4 in it, made under a temporary name and renamed into place. */
  private async makeImage(image: string, bytes: number): Promise<void> {
    const tmp = path.join(this.poolDir, `.tmp-${randomBytes(8).toString('hex')}`);
    try {
      const f = await fs.open(tmp, 'wx', 0o600);
      await f.truncate(bytes).finally(() => f.close());
      await run('mkfs.ext4', mkfsArgs(tmp), { what: `writable-layer image of ${bytes} bytes`, timeoutMs: MKFS_TIMEOUT_MS });
      await fs.rename(tmp, image);
    } catch (err) {
      await fs.rm(tmp, { force: true });
      throw err;
    }
  }

  /** Waits for the pool's refill (tests, shutdown). */
  async idle(): Promise<void> {
    await this.refilling;
  }
}

function mountOf(dir: string): { mountPoint: string; superOptions: string[] } | undefined {
  let best: { mountPoint: string; superOptions: string[] } | undefined;
  for (const m of readMountInfo()) {
    if ((dir === m.mountPoint || dir.startsWith(m.mountPoint === '/' ? '/' : `${m.mountPoint}/`)) && (!best || m.mountPoint.length >= best.mountPoint.length)) best = m;
  }
  return best;
}

function unmountIfMounted(mountPoint: string): void {
  try {
    umount2(mountPoint, MNT_DETACH);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    // EINVAL: not a mount point (never mounted, or unmounted already); ENOENT: the bundle is gone.
    if (code !== 'EINVAL' && code !== 'ENOENT') throw err;
  }
}

async function runPlan(plan: QuotaCommand[], what: string): Promise<void> {
  for (const step of plan) await run(step.cmd, step.args, { what, timeoutMs: 10_000 });
}
