import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { readJson, syncDir, writeFileNamed, writeJsonAtomic } from '../store/atomic.js';
import { syncfsAsync } from '../store/sync.js';
import { restoreReserve } from '../store/reserve.js';
import { errorMessage, internal } from '../errors.js';
import { Logger } from '../log.js';
import { ImageRecord, LayerRecord } from './types.js';

// The content-addressed image store under <root>/: image records by config digest and unpacked layers by diff id.
// Layers are shared by every image that has them and deleted only when no image and no container holds them.

const hex = (digest: string) => digest.replace(/^sha256:/, '');

export type LayerHolds = () => Set<string>;

/** A record that is missing or not JSON is debris of a crash; any other read failure (EIO, EACCES) is not a reason to delete. */
async function readRecord<T>(file: string): Promise<T | undefined> {
  try {
    return await readJson<T>(file);
  } catch (err) {
    if (err instanceof SyntaxError || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return undefined;
    throw internal(`reading ${file}: ${errorMessage(err)}`, err);
  }
}

/** Layers an image lists or a container holds: the rest is garbage (collected here at start, listed by `berth doctor`). */
export function layersInUse(images: Iterable<Pick<ImageRecord, 'layers'>>, held: ReadonlySet<string>): Set<string> {
  const used = new Set<string>(held);
  for (const image of images) for (const layer of image.layers) used.add(layer);
  return used;
}

export class ImageStore {
  readonly imagesDir: string;
  readonly layersDir: string;
  private readonly images = new Map<string, ImageRecord>();
  private readonly layers = new Map<string, LayerRecord>();
  // Layers a pull has decided to use but no image record lists yet; GC must leave them alone.
  private readonly pins = new Map<string, number>();
  // Layers GC is moving out of the way; a pull waits for that to end before it looks for them.
  private readonly deleting = new Map<string, Promise<void>>();

  constructor(
    readonly root: string,
    private readonly log: Logger,
    /** Containers report the layers under their rootfs so removing an image does not pull them away. */
    private readonly holds: LayerHolds,
  ) {
    this.imagesDir = path.join(root, 'images');
    this.layersDir = path.join(root, 'layers');
  }

  async load(): Promise<void> {
    await fs.mkdir(this.imagesDir, { recursive: true, mode: 0o700 });
    await fs.mkdir(this.layersDir, { recursive: true, mode: 0o700 });
    for (const name of await fs.readdir(this.layersDir)) {
      const dir = path.join(this.layersDir, name);
      const record = name.startsWith('.') ? undefined : await readRecord<LayerRecord>(path.join(dir, 'layer.json'));
      if (record) {
        this.layers.set(record.diffId, record);
      } else {
        // An unpack that a crash interrupted: never referenced, safe to drop.
        this.log.info('removing incomplete layer', { dir });
        await fs.rm(dir, { recursive: true, force: true });
      }
    }
    for (const name of await fs.readdir(this.imagesDir)) {
      if (!name.endsWith('.json')) {
        await fs.rm(path.join(this.imagesDir, name), { force: true });
        continue;
      }
      const record = await readRecord<ImageRecord>(path.join(this.imagesDir, name));
      if (!record || record.layers.some((l) => !this.layers.has(l))) {
        this.log.warn('dropping image record with missing layers', { file: name });
        await fs.rm(path.join(this.imagesDir, name), { force: true });
        continue;
      }
      this.images.set(record.id, record);
    }
    await this.collectGarbage();
  }

  list(): ImageRecord[] {
    return [...this.images.values()];
  }

  get(id: string): ImageRecord | undefined {
    return this.images.get(id);
  }

  /** Finds an image by id (full, bare hex or a unique prefix of at least 12 hex digits), tag or repo digest. */
  find(candidates: { id?: string; names: string[] }): ImageRecord | undefined {
    if (candidates.id) {
      const id = candidates.id.startsWith('sha256:') ? candidates.id : `sha256:${candidates.id}`;
      const exact = this.images.get(id);
      if (exact) return exact;
      if (/^sha256:[a-f0-9]{12,63}$/.test(id)) {
        const matches = this.list().filter((img) => img.id.startsWith(id));
        if (matches.length === 1) return matches[0];
      }
    }
    for (const image of this.images.values()) {
      if (candidates.names.some((n) => image.repoTags.includes(n) || image.repoDigests.includes(n))) return image;
    }
    return undefined;
  }

  hasLayer(diffId: string): boolean {
    return this.layers.has(diffId);
  }

  /**
   * Keeps GC off these layers until the returned release is called: a pull pins its layers before it looks
   * them up and releases them once its image record is written (or the pull failed). Pins are counted, so
   * concurrent pulls sharing a layer each hold it.
   */
  pin(diffIds: string[]): () => void {
    for (const id of diffIds) this.pins.set(id, (this.pins.get(id) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const id of diffIds) {
        const n = (this.pins.get(id) ?? 1) - 1;
        if (n > 0) this.pins.set(id, n);
        else this.pins.delete(id);
      }
    };
  }

  /** Resolves once GC is done with a layer it had started to delete, so `hasLayer` then tells the truth. */
  async layerSettled(diffId: string): Promise<void> {
    await this.deleting.get(diffId);
  }

  layerPath(diffId: string): string {
    return path.join(this.layersDir, hex(diffId), 'fs');
  }

  /** A fresh directory to unpack into; `commitLayer` moves it into place once it is verified. */
  async stagingDir(): Promise<string> {
    const dir = path.join(this.layersDir, `.staging-${randomBytes(8).toString('hex')}`);
    await fs.mkdir(dir, { mode: 0o700 });
    return dir;
  }

  async commitLayer(staging: string, record: LayerRecord): Promise<void> {
    const existing = this.layers.get(record.diffId);
    if (existing) {
      await fs.rm(staging, { recursive: true, force: true });
      return;
    }
    // One syncfs makes the unpacked files and layer.json durable before the rename publishes them, and
    // syncing layersDir makes the rename itself survive a power cut, as the image record that will name it does.
    await writeFileNamed(path.join(staging, 'layer.json'), JSON.stringify(record, null, 1) + '\n', 0o600);
    await syncfsAsync(staging);
    await fs.rename(staging, path.join(this.layersDir, hex(record.diffId)));
    await syncDir(this.layersDir);
    this.layers.set(record.diffId, record);
  }

  async discardStaging(staging: string): Promise<void> {
    await fs.rm(staging, { recursive: true, force: true });
  }

  /** Records an image; a tag or digest another image had moves to this one, as a re-pushed tag does. */
  async put(record: ImageRecord): Promise<void> {
    const previous = this.images.get(record.id);
    if (previous) {
      record.repoTags = [...new Set([...previous.repoTags, ...record.repoTags])];
      record.repoDigests = [...new Set([...previous.repoDigests, ...record.repoDigests])];
    }
    for (const other of this.images.values()) {
      if (other.id === record.id) continue;
      const tags = other.repoTags.filter((t) => !record.repoTags.includes(t));
      if (tags.length !== other.repoTags.length) {
        const updated = { ...other, repoTags: tags };
        await writeJsonAtomic(this.imageFile(other.id), updated);
        this.images.set(other.id, updated);
      }
    }
    await writeJsonAtomic(this.imageFile(record.id), record);
    this.images.set(record.id, record);
  }

  async remove(id: string): Promise<void> {
    if (!this.images.has(id)) return;
    try {
      await fs.rm(this.imageFile(id), { force: true });
    } catch (err) {
      throw internal(`removing the record of image ${id}: ${errorMessage(err)}`, err);
    }
    this.images.delete(id);
    await this.collectGarbage();
    await restoreReserve(this.root);
  }

  /**
   * Deletes layers no image, no container and no pull uses. Never throws: it runs after RemoveImage and
   * RemoveContainer have already dropped their records, and a layer it cannot delete now is retried next time.
   */
  async collectGarbage(): Promise<void> {
    const used = layersInUse(this.images.values(), this.holds());
    for (const diffId of [...this.layers.keys()]) {
      // Pins are checked per layer, right before its delete starts: a pull may have pinned it since the loop began.
      if (used.has(diffId) || this.pins.has(diffId) || this.deleting.has(diffId) || !this.layers.has(diffId)) continue;
      const done = this.deleteLayer(diffId);
      this.deleting.set(diffId, done);
      try {
        await done;
      } finally {
        this.deleting.delete(diffId);
      }
    }
  }

  private async deleteLayer(diffId: string): Promise<void> {
    const dir = path.join(this.layersDir, hex(diffId));
    // Rename first so a crash mid-delete leaves a dot-dir that load() discards, not a half layer with a record.
    const doomed = path.join(this.layersDir, `.deleting-${hex(diffId)}-${randomBytes(4).toString('hex')}`);
    try {
      await fs.rename(dir, doomed);
    } catch (err) {
      this.log.error('removing layer', { diffId, dir, error: errorMessage(err) });
      return;
    }
    this.layers.delete(diffId);
    try {
      await fs.rm(doomed, { recursive: true, force: true });
    } catch (err) {
      // The layer is gone from the store already; load() finishes the dot-dir on the next start.
      this.log.error('removing a deleted layer\'s files', { diffId, dir: doomed, error: errorMessage(err) });
    }
    this.log.info('layer removed', { diffId });
  }

  usage(): { bytes: number; inodes: number } {
    let bytes = 0;
    let inodes = 0;
    for (const layer of this.layers.values()) {
      bytes += layer.unpackedBytes;
      inodes += layer.inodes;
    }
    for (const image of this.images.values()) {
      bytes += JSON.stringify(image).length;
      inodes += 1;
    }
    return { bytes, inodes };
  }

  private imageFile(id: string): string {
    return path.join(this.imagesDir, `${hex(id)}.json`);
  }
}
