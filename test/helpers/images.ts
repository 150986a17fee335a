// Build OCI/docker image layers with tar-stream and push them over the distribution API.
import tar from 'tar-stream';
import { gzipSync } from 'node:zlib';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { sha256 } from './util.js';
import { MT, pushBlob, pushManifest, registryFetch, type RegistryTarget } from './registry-client.js';

export { MT } from './registry-client.js';

/** Fixed mtime (2024-01-01T00:00:00Z) for deterministic tars. */
export const FIXED_MTIME = new Date('2024-01-01T00:00:00Z');
export const FIXED_CREATED = '2024-01-01T00:00:00Z';

interface Owner {
  uid?: number;
  gid?: number;
  /** Default FIXED_MTIME. */
  mtime?: Date;
}
interface Extended {
  /** xattrs, encoded as pax `SCHILY.xattr.<name>` records. */
  xattrs?: Record<string, string>;
  /** Raw pax records, e.g. { 'SCHILY.xattr.user.berth': 'yes' }. */
  pax?: Record<string, string>;
}

/** Paths are relative to the rootfs ('bin/sh'; a leading '/' is stripped). */
export type LayerEntry =
  | ({ type: 'file'; path: string; content: string | Uint8Array; mode?: number } & Owner & Extended)
  | ({ type: 'dir'; path: string; mode?: number } & Owner & Extended)
  | ({ type: 'symlink'; path: string; target: string } & Owner)
  /** Hardlink `path` → `target` (target is a rootfs path written earlier, in this layer or a lower one). */
  | ({ type: 'hardlink'; path: string; target: string } & Owner)
  | ({ type: 'char'; path: string; major: number; minor: number; mode?: number } & Owner)
  | ({ type: 'block'; path: string; major: number; minor: number; mode?: number } & Owner)
  | ({ type: 'fifo'; path: string; mode?: number } & Owner)
  /** Whiteout for `path`: emits `<dir>/.wh.<base>`. */
  | { type: 'whiteout'; path: string }
  /** Opaque marker for directory `path`: emits `<path>/.wh..wh..opq`. */
  | { type: 'opaque'; path: string };

export type Compression = 'gzip' | 'zstd' | 'none';

export interface Layer {
  /** The blob as pushed (compressed). */
  bytes: Buffer;
  /** sha256 of bytes. */
  digest: string;
  /** sha256 of the uncompressed tar. */
  diffId: string;
  size: number;
  uncompressedSize: number;
  compression: Compression;
  /** OCI media type for this compression (tar / tar+gzip / tar+zstd). */
  mediaType: string;
  /** Docker schema2 media type (zstd has none: the OCI type is used, as docker does). */
  dockerMediaType: string;
}

/** What ends up in a manifest's `layers` array. */
export interface LayerDescriptorInfo {
  digest: string;
  diffId: string;
  size: number;
  mediaType: string;
}

function rel(p: string): string {
  const r = p.replace(/^\/+/, '').replace(/\/+$/, '');
  if (r === '') throw new Error(`bad layer path ${JSON.stringify(p)}`);
  return r;
}

function paxOf(e: Extended): Record<string, string> | undefined {
  const pax: Record<string, string> = { ...(e.pax ?? {}) };
  for (const [k, v] of Object.entries(e.xattrs ?? {})) pax[`SCHILY.xattr.${k}`] = v;
  return Object.keys(pax).length ? pax : undefined;
}

type TarHeader = Partial<tar.Header> & { name: string; pax?: Record<string, string> };

/** Build an uncompressed tar (ustar + pax) from entries, in order. */
export async function tarBytes(entries: LayerEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const c of pack) chunks.push(c as Buffer);
  })();
  const add = (h: TarHeader, body?: Uint8Array | string) =>
    new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (body === undefined) pack.entry(h, cb); // void entries finish by themselves
      else pack.entry(h, Buffer.from(body), cb);
    });
  for (const e of entries) {
    const base = { uid: 0, gid: 0, mtime: FIXED_MTIME, uname: '', gname: '' };
    switch (e.type) {
      case 'file':
        await add(
          { ...base, name: rel(e.path), type: 'file', mode: e.mode ?? 0o644, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? FIXED_MTIME, pax: paxOf(e) },
          typeof e.content === 'string' ? e.content : e.content,
        );
        break;
      case 'dir':
        await add({ ...base, name: rel(e.path) + '/', type: 'directory', mode: e.mode ?? 0o755, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? FIXED_MTIME, pax: paxOf(e) });
        break;
      case 'symlink':
        await add({ ...base, name: rel(e.path), type: 'symlink', mode: 0o777, linkname: e.target, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? FIXED_MTIME });
        break;
      case 'hardlink':
        await add({ ...base, name: rel(e.path), type: 'link', mode: 0o644, linkname: rel(e.target), uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? FIXED_MTIME });
        break;
      case 'char':
      case 'block':
        await add({
          ...base,
          name: rel(e.path),
          type: e.type === 'char' ? 'character-device' : 'block-device',
          mode: e.mode ?? 0o666,
          devmajor: e.major,
          devminor: e.minor,
          uid: e.uid ?? 0,
          gid: e.gid ?? 0,
          mtime: e.mtime ?? FIXED_MTIME,
        });
        break;
      case 'fifo':
        await add({ ...base, name: rel(e.path), type: 'fifo', mode: e.mode ?? 0o644, uid: e.uid ?? 0, gid: e.gid ?? 0, mtime: e.mtime ?? FIXED_MTIME });
        break;
      case 'whiteout': {
        const p = rel(e.path);
        const slash = p.lastIndexOf('/');
        const name = slash < 0 ? `.wh.${p}` : `${p.slice(0, slash)}/.wh.${p.slice(slash + 1)}`;
        await add({ ...base, name, type: 'file', mode: 0o600 }, Buffer.alloc(0));
        break;
      }
      case 'opaque':
        await add({ ...base, name: `${rel(e.path)}/.wh..wh..opq`, type: 'file', mode: 0o600 }, Buffer.alloc(0));
        break;
    }
  }
  pack.finalize();
  await collected;
  return Buffer.concat(chunks);
}

export function zstdCompress(data: Uint8Array, level = 3): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const p = spawn('zstd', ['-q', '-c', `-${level}`], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    p.stdout.on('data', (c: Buffer) => out.push(c));
    p.stderr.on('data', (c: Buffer) => err.push(c));
    p.on('error', reject);
    p.on('close', (code) => {
      if (code === 0) resolve(Buffer.concat(out));
      else reject(new Error(`zstd exited ${code}: ${Buffer.concat(err).toString()}`));
    });
    p.stdin.end(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  });
}

/** Compress an already-built tar into a Layer. */
export async function layerFromTar(tarball: Buffer, compression: Compression = 'gzip', opts: { level?: number } = {}): Promise<Layer> {
  let bytes: Buffer;
  let mediaType: string;
  let dockerMediaType: string;
  switch (compression) {
    case 'gzip':
      bytes = gzipSync(tarball, { level: opts.level ?? 6 });
      mediaType = MT.ociLayerGzip;
      dockerMediaType = MT.dockerLayerGzip;
      break;
    case 'zstd':
      bytes = await zstdCompress(tarball, opts.level ?? 3);
      mediaType = MT.ociLayerZstd;
      dockerMediaType = MT.ociLayerZstd;
      break;
    case 'none':
      bytes = tarball;
      mediaType = MT.ociLayerTar;
      dockerMediaType = MT.dockerLayerTar;
      break;
  }
  return {
    bytes,
    digest: sha256(bytes),
    diffId: sha256(tarball),
    size: bytes.byteLength,
    uncompressedSize: tarball.byteLength,
    compression,
    mediaType,
    dockerMediaType,
  };
}

/** Build a layer blob from entries. gzip/none are byte-deterministic; zstd via the zstd CLI. */
export async function layer(entries: LayerEntry[], compression: Compression = 'gzip', opts: { level?: number } = {}): Promise<Layer> {
  return layerFromTar(await tarBytes(entries), compression, opts);
}

// ---------------------------------------------------------------------------
// busybox base

/** Applets that get a /bin/<name> → busybox symlink in busyboxEntries(). */
export const BUSYBOX_APPLETS = [
  // required by the e2e suite
  'sh', 'ls', 'cat', 'echo', 'sleep', 'id', 'env', 'true', 'false', 'touch', 'mkdir', 'rm', 'grep', 'wc',
  'head', 'dd', 'ps', 'ping', 'hostname', 'mount', 'stat', 'top',
  // handy extras
  'kill', 'ln', 'chmod', 'chown', 'cp', 'mv', 'readlink', 'realpath', 'sed', 'tail', 'printf', 'test', '[',
  'uname', 'whoami', 'sort', 'tr', 'cut', 'xargs', 'seq', 'find', 'tee', 'sha256sum', 'md5sum', 'basename',
  'dirname', 'pwd', 'date', 'umount', 'df', 'du', 'nc', 'wget', 'ip', 'ifconfig', 'nslookup', 'timeout',
  'awk', 'mknod', 'mkfifo', 'rmdir', 'usleep', 'uptime', 'free', 'pidof', 'nproc', 'sync', 'truncate',
  'base64', 'od', 'expr', 'groups', 'mktemp', 'yes', 'unshare', 'nsenter', 'setsid', 'stty', 'tty', 'which', 'tar',
] as const;

export const BUSYBOX_PASSWD =
  'root:x:0:0:root:/root:/bin/sh\n' +
  'nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' +
  'berthuser:x:1000:1000:berth user:/home/berthuser:/bin/sh\n';

export const BUSYBOX_GROUP =
  'root:x:0:\n' +
  'nobody:x:65534:\n' +
  'berthgroup:x:1000:\n' +
  'berthextra:x:2000:berthuser\n';

export const DEFAULT_PATH_ENV = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/**
 * Entries of the busybox base: /bin/busybox (host's static busybox) + /bin/<applet> symlinks
 * (relative target 'busybox'), /etc/passwd, /etc/group (no /etc/hosts, resolv.conf, hostname),
 * /tmp 1777, /root 0700, /home/berthuser (1000:1000), /dev, /proc, /sys, /usr/bin, /sbin.
 */
export function busyboxEntries(): LayerEntry[] {
  const bin = readFileSync('/bin/busybox');
  return [
    { type: 'dir', path: 'bin', mode: 0o755 },
    { type: 'file', path: 'bin/busybox', content: bin, mode: 0o755 },
    ...BUSYBOX_APPLETS.map((a): LayerEntry => ({ type: 'symlink', path: `bin/${a}`, target: 'busybox' })),
    { type: 'dir', path: 'dev', mode: 0o755 },
    { type: 'dir', path: 'etc', mode: 0o755 },
    { type: 'file', path: 'etc/passwd', content: BUSYBOX_PASSWD, mode: 0o644 },
    { type: 'file', path: 'etc/group', content: BUSYBOX_GROUP, mode: 0o644 },
    { type: 'dir', path: 'home', mode: 0o755 },
    { type: 'dir', path: 'home/berthuser', mode: 0o755, uid: 1000, gid: 1000 },
    { type: 'dir', path: 'proc', mode: 0o555 },
    { type: 'dir', path: 'root', mode: 0o700 },
    { type: 'dir', path: 'sbin', mode: 0o755 },
    { type: 'dir', path: 'sys', mode: 0o555 },
    { type: 'dir', path: 'tmp', mode: 0o1777 },
    { type: 'dir', path: 'usr', mode: 0o755 },
    { type: 'dir', path: 'usr/bin', mode: 0o755 },
    { type: 'dir', path: 'var', mode: 0o755 },
  ];
}

let busyboxMemo: Promise<Layer> | undefined;
/** The busybox base as a gzip layer (memoized per process; deterministic for a given host busybox). */
export function busyboxLayer(): Promise<Layer> {
  busyboxMemo ??= layer(busyboxEntries(), 'gzip');
  return busyboxMemo;
}

// ---------------------------------------------------------------------------
// push

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
  'os.version'?: string;
  'os.features'?: string[];
}

/** The Go-style platform of this host (linux/amd64 on x86_64). */
export function hostPlatform(): Platform {
  const arch: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };
  return { os: 'linux', architecture: arch[process.arch] ?? process.arch };
}

/** The image config's `config` object (docker capitalisation). */
export interface ImageConfigSpec {
  User?: string;
  Env?: string[];
  Cmd?: string[];
  Entrypoint?: string[];
  WorkingDir?: string;
  StopSignal?: string;
  Labels?: Record<string, string>;
  ExposedPorts?: Record<string, object>;
  Volumes?: Record<string, object>;
}

export type ImageFormat = 'docker' | 'oci';

export interface PushImageOptions {
  layers: Layer[];
  config?: ImageConfigSpec;
  /** Default 'docker'. */
  format?: ImageFormat;
  /** Default hostPlatform(). */
  platform?: Platform;
  /** Image config `created`; default FIXED_CREATED. */
  created?: string;
  /** Override the media type written for layer i in the manifest. */
  layerMediaTypes?: (string | undefined)[];
  /** OCI manifest annotations (oci format only). */
  annotations?: Record<string, string>;
}

export interface PushedImage {
  /** Repository, e.g. 'berth/multilayer'. */
  name: string;
  /** Tag, or null when pushed by digest only. */
  tag: string | null;
  /** '127.0.0.1:PORT/berth/multilayer:v1' (or @digest when untagged). */
  ref: string;
  /** '127.0.0.1:PORT/berth/multilayer@sha256:…' */
  digestRef: string;
  manifestDigest: string;
  manifestMediaType: string;
  manifestSize: number;
  manifestBytes: Buffer;
  configDigest: string;
  /** = configDigest (what CRI reports as the image id). */
  imageId: string;
  configMediaType: string;
  configSize: number;
  configBytes: Buffer;
  config: ImageConfigJson;
  layers: LayerDescriptorInfo[];
  /** Sum of compressed layer sizes. */
  layersSize: number;
  /** config + layers (compressed), what a full pull downloads as blobs. */
  totalBlobSize: number;
  platform: Platform;
  format: ImageFormat;
}

export interface ImageConfigJson {
  created: string;
  architecture: string;
  os: string;
  variant?: string;
  config: ImageConfigSpec;
  rootfs: { type: 'layers'; diff_ids: string[] };
  history: { created: string; created_by: string }[];
}

function hostOf(target: RegistryTarget): string {
  return new URL(target.url).host;
}

/** Push config + layers + manifest; tag may be null to push by digest only. */
export async function pushImage(target: RegistryTarget, name: string, tag: string | null, opts: PushImageOptions): Promise<PushedImage> {
  const format = opts.format ?? 'docker';
  const platform = opts.platform ?? hostPlatform();
  const created = opts.created ?? FIXED_CREATED;
  const cfg: ImageConfigJson = {
    created,
    architecture: platform.architecture,
    os: platform.os,
    ...(platform.variant ? { variant: platform.variant } : {}),
    config: { ...(opts.config ?? {}) },
    rootfs: { type: 'layers', diff_ids: opts.layers.map((l) => l.diffId) },
    history: opts.layers.map((_, i) => ({ created, created_by: `berth fixture layer ${i}` })),
  };
  const configBytes = Buffer.from(JSON.stringify(cfg));
  const configMediaType = format === 'docker' ? MT.dockerConfig : MT.ociConfig;
  const configDigest = await pushBlob(target, name, configBytes);
  for (const l of opts.layers) await pushBlob(target, name, l.bytes, { digest: l.digest });

  const layers: LayerDescriptorInfo[] = opts.layers.map((l, i) => ({
    digest: l.digest,
    diffId: l.diffId,
    size: l.size,
    mediaType: opts.layerMediaTypes?.[i] ?? (format === 'docker' ? l.dockerMediaType : l.mediaType),
  }));
  const manifestMediaType = format === 'docker' ? MT.dockerManifest : MT.ociManifest;
  const manifest = {
    schemaVersion: 2,
    mediaType: manifestMediaType,
    config: { mediaType: configMediaType, size: configBytes.byteLength, digest: configDigest },
    layers: layers.map((l) => ({ mediaType: l.mediaType, size: l.size, digest: l.digest })),
    ...(format === 'oci' && opts.annotations ? { annotations: opts.annotations } : {}),
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 3));
  const manifestDigest = sha256(manifestBytes);
  await pushManifest(target, name, tag ?? manifestDigest, manifestBytes, manifestMediaType);
  const host = hostOf(target);
  const layersSize = layers.reduce((a, l) => a + l.size, 0);
  return {
    name,
    tag,
    ref: tag ? `${host}/${name}:${tag}` : `${host}/${name}@${manifestDigest}`,
    digestRef: `${host}/${name}@${manifestDigest}`,
    manifestDigest,
    manifestMediaType,
    manifestSize: manifestBytes.byteLength,
    manifestBytes,
    configDigest,
    imageId: configDigest,
    configMediaType,
    configSize: configBytes.byteLength,
    configBytes,
    config: cfg,
    layers,
    layersSize,
    totalBlobSize: layersSize + configBytes.byteLength,
    platform,
    format,
  };
}

export type IndexFormat = 'docker-list' | 'oci-index';

export interface IndexEntryInput {
  manifestDigest: string;
  platform: Platform;
  /** Looked up with a HEAD when missing. */
  manifestSize?: number;
  manifestMediaType?: string;
  annotations?: Record<string, string>;
}

export interface PushedIndex {
  name: string;
  tag: string;
  ref: string;
  digestRef: string;
  digest: string;
  mediaType: string;
  size: number;
  bytes: Buffer;
  manifests: { digest: string; mediaType: string; size: number; platform: Platform }[];
}

/** Push a docker manifest list / OCI index over manifests already in `name` (order preserved). */
export async function pushIndex(
  target: RegistryTarget,
  name: string,
  tag: string,
  entries: IndexEntryInput[],
  format: IndexFormat = 'oci-index',
): Promise<PushedIndex> {
  const manifests: PushedIndex['manifests'] = [];
  const descs: object[] = [];
  for (const e of entries) {
    let size = e.manifestSize;
    let mediaType = e.manifestMediaType;
    if (size === undefined || mediaType === undefined) {
      const res = await registryFetch(target, `/v2/${name}/manifests/${e.manifestDigest}`, {
        method: 'HEAD',
        repo: name,
        headers: { Accept: [MT.ociManifest, MT.dockerManifest].join(', ') },
      });
      if (res.status !== 200) throw new Error(`HEAD manifest ${e.manifestDigest}: ${res.status}`);
      size ??= Number(res.headers.get('content-length'));
      mediaType ??= res.headers.get('content-type') ?? MT.dockerManifest;
    }
    manifests.push({ digest: e.manifestDigest, mediaType, size, platform: e.platform });
    const platform: Record<string, unknown> = { architecture: e.platform.architecture, os: e.platform.os };
    if (e.platform['os.version']) platform['os.version'] = e.platform['os.version'];
    if (e.platform['os.features']) platform['os.features'] = e.platform['os.features'];
    if (e.platform.variant) platform['variant'] = e.platform.variant;
    descs.push({ mediaType, size, digest: e.manifestDigest, platform, ...(e.annotations ? { annotations: e.annotations } : {}) });
  }
  const mediaType = format === 'docker-list' ? MT.dockerManifestList : MT.ociIndex;
  const bytes = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType, manifests: descs }, null, 3));
  const digest = await pushManifest(target, name, tag, bytes, mediaType);
  const host = hostOf(target);
  return { name, tag, ref: `${host}/${name}:${tag}`, digestRef: `${host}/${name}@${digest}`, digest, mediaType, size: bytes.byteLength, bytes, manifests };
}

// ---------------------------------------------------------------------------
// standard fixtures

/** What a path in the unpacked rootfs should look like. Modes are permission bits only (e.g. 0o644). */
export type ExpectedPath =
  | { type: 'file'; content?: string; mode?: number; uid?: number; gid?: number; xattrs?: Record<string, string>; hardlinkOf?: string; size?: number }
  | { type: 'dir'; mode?: number; uid?: number; gid?: number; xattrs?: Record<string, string> }
  | { type: 'symlink'; target: string }
  | { type: 'char'; major: number; minor: number; mode?: number };

export interface ExpectedContents {
  /** rootfs path (absolute, '/keep/a.txt') → expectation. */
  present: Record<string, ExpectedPath>;
  /** Paths that must not exist after unpacking all layers. */
  absent: string[];
}

export interface FixtureImage extends PushedImage {
  description: string;
  expect: ExpectedContents;
}

export interface StandardFixtures {
  host: string;
  url: string;
  /** The busybox base layer (first layer of most images). */
  busyboxLayer: LayerDescriptorInfo;
  /** `berth/busybox:v1` — just the base (docker). Cmd ["sh"]. */
  busybox: FixtureImage;
  /** `berth/multilayer:v1` (docker) — whiteouts, opaque dir, xattr, hardlink, char device. */
  multilayer: FixtureImage;
  /** `berth/zstd:v1` (OCI) — busybox base (gzip) + a zstd layer with /zstd.txt. */
  zstd: FixtureImage;
  /** `berth/multiarch:v1` — docker manifest list [arm64 decoy, amd64]. */
  multiarch: { list: PushedIndex; amd64: FixtureImage; arm64: FixtureImage };
  /** `berth/ociindex:v1` — OCI index [arm64/v8 decoy, amd64]. */
  ociindex: { index: PushedIndex; amd64: FixtureImage; arm64: FixtureImage };
  /** `berth/nonroot:v1` — User "1000". */
  nonroot: FixtureImage;
  /** `berth/nonroot:named` — User "berthuser". */
  nonrootNamed: FixtureImage;
  /** `berth/shared-a:v1` and `berth/shared-b:v1`: [busybox base, shared 8 MiB layer, distinct small layer]. */
  sharedA: FixtureImage;
  sharedB: FixtureImage;
  /** The 8 MiB layer (a single file /shared/blob.bin of random data) both share. */
  sharedLayer: LayerDescriptorInfo;
  /** `berth/big:v1` — one ~64 MiB gzip layer of random data (/big.bin); undefined if opts.big === false. */
  big?: FixtureImage;
}

function info(l: Layer): LayerDescriptorInfo {
  return { digest: l.digest, diffId: l.diffId, size: l.size, mediaType: l.mediaType };
}

const busyboxExpect: Record<string, ExpectedPath> = {
  '/bin/busybox': { type: 'file', mode: 0o755 },
  '/bin/sh': { type: 'symlink', target: 'busybox' },
  '/etc/passwd': { type: 'file', content: BUSYBOX_PASSWD, mode: 0o644 },
  '/etc/group': { type: 'file', content: BUSYBOX_GROUP, mode: 0o644 },
  '/tmp': { type: 'dir', mode: 0o1777 },
  '/root': { type: 'dir', mode: 0o700 },
  '/home/berthuser': { type: 'dir', uid: 1000, gid: 1000 },
};
const busyboxAbsent = ['/etc/hosts', '/etc/resolv.conf', '/etc/hostname'];

let sharedMemo: Promise<Layer> | undefined;
let bigMemo: Promise<Layer> | undefined;

/** Push the standard fixture set to a registry and describe it. ~2 MiB + 8 MiB + 64 MiB of blobs. */
export async function standardFixtures(target: RegistryTarget, opts: { big?: boolean } = {}): Promise<StandardFixtures> {
  const base = await busyboxLayer();
  const amd64: Platform = { os: 'linux', architecture: 'amd64' };
  const arm64: Platform = { os: 'linux', architecture: 'arm64' };
  const arm64v8: Platform = { os: 'linux', architecture: 'arm64', variant: 'v8' };
  const baseCfg: ImageConfigSpec = { Env: [DEFAULT_PATH_ENV], Cmd: ['sh'] };
  const fx = (img: PushedImage, description: string, expect: ExpectedContents): FixtureImage => ({ ...img, description, expect });

  // berth/busybox:v1
  const busybox = fx(
    await pushImage(target, 'berth/busybox', 'v1', { layers: [base], config: baseCfg, format: 'docker', platform: amd64 }),
    'busybox base only',
    { present: busyboxExpect, absent: busyboxAbsent },
  );

  // berth/multilayer:v1
  const ml1 = await layer(
    [
      ...busyboxEntries(),
      { type: 'dir', path: 'data' },
      { type: 'file', path: 'data/gone.txt', content: 'this file is whited out by layer 2\n' },
      { type: 'file', path: 'data/stays.txt', content: 'stays\n' },
      { type: 'dir', path: 'opq' },
      { type: 'file', path: 'opq/old.txt', content: 'hidden by the opaque dir in layer 2\n' },
      { type: 'dir', path: 'opq/olddir' },
      { type: 'file', path: 'opq/olddir/deep.txt', content: 'also hidden\n' },
      { type: 'dir', path: 'keep' },
      { type: 'file', path: 'keep/a.txt', content: 'a from layer 1\n', mode: 0o640, uid: 1000, gid: 2000 },
    ],
    'gzip',
  );
  const ml2 = await layer(
    [
      { type: 'dir', path: 'data' },
      { type: 'whiteout', path: 'data/gone.txt' },
      { type: 'dir', path: 'opq' },
      { type: 'opaque', path: 'opq' },
      { type: 'file', path: 'opq/new.txt', content: 'new in layer 2\n' },
      { type: 'dir', path: 'keep' },
      { type: 'file', path: 'keep/xattr.txt', content: 'has an xattr\n', xattrs: { 'user.berth': 'yes' } },
      { type: 'file', path: 'keep/a2.txt', content: 'hardlinked content\n', mode: 0o600 },
      { type: 'hardlink', path: 'keep/hard.txt', target: 'keep/a2.txt' },
      { type: 'dir', path: 'dev' },
      { type: 'char', path: 'dev/berthnull', major: 1, minor: 3, mode: 0o666 },
    ],
    'gzip',
  );
  const multilayer = fx(
    await pushImage(target, 'berth/multilayer', 'v1', {
      layers: [ml1, ml2],
      config: {
        ...baseCfg,
        Env: [DEFAULT_PATH_ENV, 'BERTH_FIXTURE=multilayer'],
        WorkingDir: '/keep',
        Labels: { 'org.berth.fixture': 'multilayer' },
      },
      format: 'docker',
      platform: amd64,
    }),
    'layer1: busybox + /data/gone.txt, /data/stays.txt, /opq/old.txt, /opq/olddir/deep.txt, /keep/a.txt; ' +
      'layer2: whiteout /data/gone.txt, opaque /opq + /opq/new.txt, /keep/xattr.txt (user.berth=yes), ' +
      '/keep/a2.txt + hardlink /keep/hard.txt, /dev/berthnull c 1:3 0666',
    {
      present: {
        ...busyboxExpect,
        '/data/stays.txt': { type: 'file', content: 'stays\n' },
        '/opq/new.txt': { type: 'file', content: 'new in layer 2\n' },
        '/keep/a.txt': { type: 'file', content: 'a from layer 1\n', mode: 0o640, uid: 1000, gid: 2000 },
        '/keep/xattr.txt': { type: 'file', content: 'has an xattr\n', xattrs: { 'user.berth': 'yes' } },
        '/keep/a2.txt': { type: 'file', content: 'hardlinked content\n', mode: 0o600 },
        '/keep/hard.txt': { type: 'file', content: 'hardlinked content\n', mode: 0o600, hardlinkOf: '/keep/a2.txt' },
        '/dev/berthnull': { type: 'char', major: 1, minor: 3, mode: 0o666 },
      },
      absent: [
        ...busyboxAbsent,
        '/data/gone.txt',
        '/data/.wh.gone.txt',
        '/opq/old.txt',
        '/opq/olddir',
        '/opq/.wh..wh..opq',
      ],
    },
  );

  // berth/zstd:v1 (OCI)
  const zl = await layer([{ type: 'file', path: 'zstd.txt', content: 'zstd layer ok\n' }], 'zstd');
  const zstd = fx(
    await pushImage(target, 'berth/zstd', 'v1', {
      layers: [base, zl],
      config: { ...baseCfg, Labels: { 'org.berth.fixture': 'zstd' } },
      format: 'oci',
      platform: amd64,
    }),
    'OCI manifest: busybox (tar+gzip) + /zstd.txt in a tar+zstd layer',
    { present: { ...busyboxExpect, '/zstd.txt': { type: 'file', content: 'zstd layer ok\n' } }, absent: busyboxAbsent },
  );

  // arch images (pushed by digest only, then listed)
  const archImage = async (name: string, format: ImageFormat, platform: Platform, arch: string): Promise<FixtureImage> => {
    const l = await layer([{ type: 'file', path: 'arch.txt', content: arch }], 'gzip');
    return fx(
      await pushImage(target, name, null, { layers: [base, l], config: baseCfg, format, platform }),
      `${platform.os}/${platform.architecture}${platform.variant ? '/' + platform.variant : ''} image, /arch.txt = "${arch}"`,
      { present: { ...busyboxExpect, '/arch.txt': { type: 'file', content: arch } }, absent: busyboxAbsent },
    );
  };
  const maArm = await archImage('berth/multiarch', 'docker', arm64, 'arm64');
  const maAmd = await archImage('berth/multiarch', 'docker', amd64, 'amd64');
  const maList = await pushIndex(target, 'berth/multiarch', 'v1', [maArm, maAmd], 'docker-list');
  const oiArm = await archImage('berth/ociindex', 'oci', arm64v8, 'arm64');
  const oiAmd = await archImage('berth/ociindex', 'oci', amd64, 'amd64');
  const oiIndex = await pushIndex(target, 'berth/ociindex', 'v1', [oiArm, oiAmd], 'oci-index');

  // nonroot
  const nonroot = fx(
    await pushImage(target, 'berth/nonroot', 'v1', { layers: [base], config: { ...baseCfg, User: '1000' }, format: 'docker', platform: amd64 }),
    'busybox base, User "1000" (berthuser, gid 1000, supplementary 2000 via /etc/group)',
    { present: busyboxExpect, absent: busyboxAbsent },
  );
  const nonrootNamed = fx(
    await pushImage(target, 'berth/nonroot', 'named', { layers: [base], config: { ...baseCfg, User: 'berthuser' }, format: 'docker', platform: amd64 }),
    'busybox base, User "berthuser" (uid 1000, gid 1000, supplementary 2000)',
    { present: busyboxExpect, absent: busyboxAbsent },
  );

  // shared
  sharedMemo ??= layer([{ type: 'dir', path: 'shared' }, { type: 'file', path: 'shared/blob.bin', content: randomBytes(8 << 20) }], 'gzip', { level: 1 });
  const shared = await sharedMemo;
  const sharedImage = async (which: 'a' | 'b'): Promise<FixtureImage> => {
    const own = await layer([{ type: 'file', path: `only-${which}.txt`, content: `shared-${which}\n` }], 'gzip');
    return fx(
      await pushImage(target, `berth/shared-${which}`, 'v1', { layers: [base, shared, own], config: baseCfg, format: 'docker', platform: amd64 }),
      `busybox + shared 8 MiB /shared/blob.bin + /only-${which}.txt`,
      {
        present: {
          ...busyboxExpect,
          '/shared/blob.bin': { type: 'file', size: 8 << 20 },
          [`/only-${which}.txt`]: { type: 'file', content: `shared-${which}\n` },
        },
        absent: [...busyboxAbsent, which === 'a' ? '/only-b.txt' : '/only-a.txt'],
      },
    );
  };
  const sharedA = await sharedImage('a');
  const sharedB = await sharedImage('b');

  let big: FixtureImage | undefined;
  if (opts.big !== false) {
    bigMemo ??= layer([{ type: 'file', path: 'big.bin', content: randomBytes(64 << 20) }], 'gzip', { level: 1 });
    const bl = await bigMemo;
    big = fx(
      await pushImage(target, 'berth/big', 'v1', { layers: [bl], config: { Env: [DEFAULT_PATH_ENV], Cmd: ['/big.bin'] }, format: 'docker', platform: amd64 }),
      'one ~64 MiB gzip layer of random data (/big.bin); no busybox, not runnable',
      { present: { '/big.bin': { type: 'file', size: 64 << 20 } }, absent: [] },
    );
  }

  return {
    host: hostOf(target),
    url: target.url,
    busyboxLayer: info(base),
    busybox,
    multilayer,
    zstd,
    multiarch: { list: maList, amd64: maAmd, arm64: maArm },
    ociindex: { index: oiIndex, amd64: oiAmd, arm64: oiArm },
    nonroot,
    nonrootNamed,
    sharedA,
    sharedB,
    sharedLayer: info(shared),
    big,
  };
}
