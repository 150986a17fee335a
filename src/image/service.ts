import path from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { BerthError, errorMessage, invalidArgument, notFound, unavailable } from '../errors.js';
import { Logger } from '../log.js';
import { RegistryConfig } from '../config/schema.js';
import { Credentials } from '../registry/auth.js';
import { Endpoint, Repository } from '../registry/client.js';
import { REGISTRY_LIMITS, tooLarge } from '../registry/bounded.js';
import { UnpackPool } from './layer/unpack-pool.js';
import { withUndo } from '../store/undo.js';
import { faultPoint } from '../fault.js';
import { digestName, formatReference, isDigest, parseReference, tagName } from './reference.js';
import { hostPlatform, selectPlatform } from './platform.js';
import { ImageStore } from './store.js';
import { classifyManifest, Descriptor, ImageConfig, ImageManifest, ImageRecord } from './types.js';

// Pulling, listing and removing images. Layers are streamed from the registry straight into their unpacked
// directory while their digests are computed (on an unpack worker thread), so a pull never keeps a second copy of
// the compressed data.

/** What metrics hear of pulls; called as the work happens, so they cost nothing while nobody scrapes. */
export interface PullObserver {
  /** A pull that succeeded, with its duration. */
  pulled(seconds: number): void;
  /** Layer bytes received from a registry. */
  received(bytes: number): void;
}

export interface ImageServiceOptions {
  store: ImageStore;
  registry: RegistryConfig;
  log: Logger;
  observer?: PullObserver;
}

async function limit<T>(items: T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: unknown;
  const runners = Array.from({ length: Math.min(concurrency, items.length) }, async () => {
    while (next < items.length && failure === undefined) {
      const item = items[next++];
      try {
        await work(item);
      } catch (err) {
        failure ??= err;
      }
    }
  });
  await Promise.all(runners);
  if (failure !== undefined) throw failure;
}

export class ImageService {
  private readonly store: ImageStore;
  // The pull's signal rides along: a download that fails because its own pull was cancelled is not the
  // verdict for another pull that was sharing it.
  private readonly inflightLayers = new Map<string, { work: Promise<void>; signal?: AbortSignal }>();
  private readonly unpacker = new UnpackPool();

  constructor(private readonly opts: ImageServiceOptions) {
    this.store = opts.store;
  }

  /** Resolves what a CRI ImageSpec.image names: an id, a tag or a digest reference. */
  /** The image with exactly this id, as a container's record names it: a map lookup, no reference parsing. */
  byId(id: string): ImageRecord | undefined {
    return this.store.get(id);
  }

  resolve(image: string): ImageRecord | undefined {
    if (image === '') throw invalidArgument('image.image is empty');
    const bareId = /^(sha256:)?[a-f0-9]{12,64}$/.test(image) ? image : undefined;
    let names: string[] = [];
    try {
      const ref = parseReference(image);
      names = [tagName(ref), ref.digest ? digestName(ref, ref.digest) : undefined].filter((n): n is string => !!n);
    } catch (err) {
      if (!bareId) throw err;
    }
    return this.store.find({ id: bareId, names });
  }

  list(filterImage?: string): ImageRecord[] {
    if (filterImage) {
      const found = this.resolve(filterImage);
      return found ? [found] : [];
    }
    return this.store.list();
  }

  async remove(image: string): Promise<void> {
    const found = this.resolve(image);
    if (!found) return;
    await this.store.remove(found.id);
    this.opts.log.info('image removed', { image: found.id, tags: found.repoTags });
  }

  fsUsage(): { mountpoint: string; bytes: number; inodes: number } {
    return { mountpoint: this.store.layersDir, ...this.store.usage() };
  }

  /** Deletes layers nothing uses any more, e.g. after the last container of a removed image went. */
  collectGarbage(): Promise<void> {
    return this.store.collectGarbage();
  }

  /** Keeps GC off an image's layers until the returned release is called (a container being created on them). */
  pinLayers(image: ImageRecord): () => void {
    return this.store.pin(image.layers);
  }

  layerPaths(image: ImageRecord): string[] {
    return image.layers.map((l) => this.store.layerPath(l));
  }

  /** Every failure names the reference as the caller wrote it, so kubelet's events say which image failed. */
  async pull(reference: string, credentials?: Credentials, signal?: AbortSignal): Promise<ImageRecord> {
    const started = process.hrtime.bigint();
    try {
      const record = await this.pullUnwrapped(reference, credentials, signal);
      this.opts.observer?.pulled(Number(process.hrtime.bigint() - started) / 1e9);
      return record;
    } catch (err) {
      const e = err instanceof BerthError ? err : unavailable(errorMessage(err), err);
      if (e.message.includes(`"${reference}"`)) throw e;
      throw new BerthError(e.kind, `pulling image "${reference}": ${e.message}`, { cause: e });
    }
  }

  private async pullUnwrapped(reference: string, credentials?: Credentials, signal?: AbortSignal): Promise<ImageRecord> {
    const ref = parseReference(reference);
    const name = formatReference(ref);
    const log = this.opts.log.child({ image: name });
    const started = Date.now();
    const repo = new Repository({ domain: ref.domain, path: ref.path, credentials, config: this.opts.registry, log, signal });
    const top = await repo.getManifest(ref.digest ?? ref.tag!);
    faultPoint('image.pull.manifest');
    let manifestDigest = top.digest;
    let endpoint = top.endpoint;
    let parsed = this.classify(top.mediaType, top.body, name);
    if (parsed.kind === 'index') {
      const want = hostPlatform();
      const index = selectPlatform(parsed.index.manifests, want);
      if (index < 0) {
        throw notFound(`image "${name}": no manifest for platform ${want.os}/${want.architecture} in its index`);
      }
      const chosen = parsed.index.manifests[index];
      const child = await repo.getManifest(chosen.digest, endpoint);
      manifestDigest = chosen.digest;
      endpoint = child.endpoint;
      parsed = this.classify(child.mediaType, child.body, name);
      if (parsed.kind !== 'manifest') throw unavailable(`image "${name}": nested index ${chosen.digest} is not supported`);
    }
    const manifest = parsed.manifest;
    // A config the manifest itself declares too large is refused before a byte of it is fetched.
    if (manifest.config.size > REGISTRY_LIMITS.config.bytes) {
      throw tooLarge(`image "${name}": config ${manifest.config.digest}`, REGISTRY_LIMITS.config, `the manifest declares ${manifest.config.size} bytes`);
    }
    const configBytes = await repo.getBlob(manifest.config.digest, endpoint, REGISTRY_LIMITS.config);
    const config = this.parseConfig(configBytes, name);
    const diffIds = config.rootfs?.diff_ids ?? [];
    if (diffIds.length !== manifest.layers.length) {
      throw unavailable(`image "${name}": manifest has ${manifest.layers.length} layers but its config lists ${diffIds.length} diff ids`);
    }
    const layers = manifest.layers.map((descriptor, i) => ({ descriptor, diffId: diffIds[i] }));
    // Until the image record names them, these layers are only ours: a RemoveImage or RemoveContainer meanwhile
    // would otherwise garbage-collect a layer we found present or just unpacked.
    const release = this.store.pin(diffIds);
    const tag = tagName(ref);
    const record: ImageRecord = {
      id: manifest.config.digest,
      repoTags: tag ? [tag] : [],
      repoDigests: [digestName(ref, top.digest)],
      size: imageSize(manifest),
      manifestDigest,
      layers: diffIds,
      config,
      pulledAt: Date.now(),
    };
    try {
      await limit(layers, this.opts.registry.maxConcurrentDownloads, ({ descriptor, diffId }) =>
        this.ensureLayer(repo, endpoint, descriptor, diffId, log, signal),
      );
      faultPoint('image.pull.record');
      await this.store.put(record);
    } catch (err) {
      release();
      // On a full disk the layers this pull did finish are no image's: they go, rather than hold the space
      // every other write on the node is waiting for. (Any other failure keeps them for the retry.)
      if (diskFull(err)) await this.store.collectGarbage();
      throw err;
    } finally {
      release();
    }
    faultPoint('image.pull.done');
    log.info('image pulled', { id: record.id, layers: diffIds.length, ms: Date.now() - started });
    return this.store.get(record.id)!;
  }

  private classify(mediaType: string, body: Buffer, name: string) {
    try {
      return classifyManifest(mediaType, body, `image "${name}"`);
    } catch (err) {
      throw unavailable(errorMessage(err));
    }
  }

  private parseConfig(bytes: Buffer, name: string): ImageConfig {
    try {
      return JSON.parse(bytes.toString('utf8')) as ImageConfig;
    } catch {
      throw unavailable(`image "${name}": config is not valid JSON`);
    }
  }

  // Two pulls that need the same layer share one download: the second awaits the first's promise.
  private async ensureLayer(
    repo: Repository,
    endpoint: Endpoint,
    descriptor: Descriptor,
    diffId: string,
    log: Logger,
    signal?: AbortSignal,
  ): Promise<void> {
    if (!isDigest(descriptor.digest) || !isDigest(diffId)) {
      throw unavailable(`image "${repo.name}": layer ${descriptor.digest} / diff id ${diffId} is not a sha256 digest`);
    }
    for (;;) {
      // A GC that started deleting this layer before our pin finishes first; then hasLayer is accurate.
      await this.store.layerSettled(diffId);
      if (this.store.hasLayer(diffId)) return;
      const inflight = this.inflightLayers.get(diffId);
      if (inflight) {
        try {
          return await inflight.work;
        } catch (err) {
          if (!inflight.signal?.aborted || signal?.aborted) throw err;
          continue; // the sharing pull was cancelled, not the download's fault: fetch it ourselves
        }
      }
      const work = this.downloadLayer(repo, endpoint, descriptor, diffId, log).finally(() => this.inflightLayers.delete(diffId));
      this.inflightLayers.set(diffId, { work, signal });
      return work;
    }
  }

  private async downloadLayer(repo: Repository, endpoint: Endpoint, descriptor: Descriptor, diffId: string, log: Logger): Promise<void> {
    const layerLog = log.child({ layer: descriptor.digest });
    const started = Date.now();
    layerLog.info('layer download started', { size: descriptor.size });
    try {
      await withUndo(layerLog, async (undo) => {
        const staging = await this.opts.store.stagingDir();
        undo.push('remove layer staging directory', () => this.opts.store.discardStaging(staging));
        faultPoint('image.pull.staging');
        const { stream } = await repo.openBlob(descriptor.digest, endpoint);
        undo.push('close layer stream', () => stream.destroy());
        let received = 0;
        let lastReport = Date.now();
        const counted = new PassThrough();
        counted.on('data', (chunk: Buffer) => {
          received += chunk.length;
          this.opts.observer?.received(chunk.length);
          if (Date.now() - lastReport >= 1000) {
            lastReport = Date.now();
            layerLog.info('layer progress', { received, size: descriptor.size });
          }
        });
        stream.on('error', (err) => counted.destroy(err));
        // Hashing, decompression and extraction run on a worker thread; this thread only moves the bytes.
        const result = await this.unpacker.unpack(stream.pipe(counted) as Readable, path.join(staging, 'fs'), layerLog);
        const actual = result.digest;
        if (actual !== descriptor.digest) {
          throw unavailable(`layer ${descriptor.digest} of ${repo.name}: downloaded content has digest ${actual}`);
        }
        if (result.compressedBytes !== descriptor.size) {
          throw unavailable(`layer ${descriptor.digest} of ${repo.name}: expected ${descriptor.size} bytes, got ${result.compressedBytes}`);
        }
        if (result.diffId !== diffId) {
          throw unavailable(`layer ${descriptor.digest} of ${repo.name}: uncompressed digest ${result.diffId} does not match diff id ${diffId}`);
        }
        faultPoint('image.pull.unpacked');
        await this.opts.store.commitLayer(staging, {
          diffId,
          digests: [descriptor.digest],
          unpackedBytes: result.unpackedBytes,
          inodes: result.inodes,
          createdAt: Date.now(),
        });
        faultPoint('image.pull.layer-committed');
        layerLog.info('layer done', { received, ms: Date.now() - started });
      });
    } catch (err) {
      throw layerError(err, descriptor.digest, repo.name);
    }
  }
}

// Whatever failed in a download (registry, decompressor, tar parser, disk), the message names the layer, so
// an event on the pod says which blob to look at; the kind is kept, except that a full disk is not the registry's fault.
function layerError(err: unknown, digest: string, repoName: string): BerthError {
  const message = errorMessage(err);
  const named = message.includes(digest) ? message : `layer ${digest} of ${repoName}: ${message}`;
  if (diskFull(err)) return new BerthError('resource_exhausted', named, { cause: err });
  if (err instanceof BerthError) return named === message ? err : new BerthError(err.kind, named, { cause: err });
  return unavailable(named, err);
}

function diskFull(err: unknown): boolean {
  for (let e = err, depth = 0; e instanceof Error && depth < 8; e = e.cause, depth++) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC' || code === 'EDQUOT') return true;
  }
  return false;
}

function imageSize(manifest: ImageManifest): number {
  return manifest.config.size + manifest.layers.reduce((sum, l) => sum + l.size, 0);
}
