// The parts of OCI image manifests and configs berth reads. Docker schema2 uses the same field names.

export interface Descriptor {
  mediaType?: string;
  digest: string;
  size: number;
  platform?: { os?: string; architecture?: string; variant?: string };
  annotations?: Record<string, string>;
}

export interface ImageManifest {
  schemaVersion?: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface ImageIndex {
  schemaVersion?: number;
  mediaType?: string;
  manifests: Descriptor[];
}

export interface ImageConfig {
  architecture?: string;
  os?: string;
  variant?: string;
  created?: string;
  config?: {
    User?: string;
    Env?: string[];
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    WorkingDir?: string;
    StopSignal?: string;
    Labels?: Record<string, string> | null;
    ExposedPorts?: Record<string, unknown>;
    Volumes?: Record<string, unknown> | null;
  };
  rootfs?: { type?: string; diff_ids?: string[] };
  history?: unknown[];
}

export interface ImageRecord {
  /** The config digest: what CRI calls the image id. */
  id: string;
  repoTags: string[];
  repoDigests: string[];
  /** Config plus compressed layers, as the registry serves them. */
  size: number;
  manifestDigest: string;
  /** Layer diff ids, bottom layer first. */
  layers: string[];
  config: ImageConfig;
  pulledAt: number;
}

export interface LayerRecord {
  diffId: string;
  /** Compressed digests this layer was downloaded as. */
  digests: string[];
  unpackedBytes: number;
  inodes: number;
  createdAt: number;
}

export const INDEX_MEDIA_TYPES = [
  'application/vnd.oci.image.index.v1+json',
  'application/vnd.docker.distribution.manifest.list.v2+json',
];
export const IMAGE_MANIFEST_MEDIA_TYPES = [
  'application/vnd.oci.image.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v2+json',
];
const INDEX_TYPES = new Set(INDEX_MEDIA_TYPES);
const MANIFEST_TYPES = new Set(IMAGE_MANIFEST_MEDIA_TYPES);

export type ParsedManifest = { kind: 'index'; index: ImageIndex } | { kind: 'manifest'; manifest: ImageManifest };

/** Classifies a manifest body; some registries omit mediaType in OCI documents, so the shape decides then. */
export function classifyManifest(mediaType: string, body: Buffer, what: string): ParsedManifest {
  let doc: { mediaType?: string; manifests?: unknown; layers?: unknown; config?: unknown; schemaVersion?: number };
  try {
    doc = JSON.parse(body.toString('utf8'));
  } catch {
    throw new Error(`${what}: manifest is not valid JSON`);
  }
  const type = doc.mediaType ?? mediaType;
  if (doc.schemaVersion === 1 || type.startsWith('application/vnd.docker.distribution.manifest.v1')) {
    throw new Error(`${what}: Docker schema 1 manifests are not supported`);
  }
  if (INDEX_TYPES.has(type) || (!MANIFEST_TYPES.has(type) && Array.isArray(doc.manifests))) {
    if (!Array.isArray(doc.manifests)) throw new Error(`${what}: index has no manifests`);
    return { kind: 'index', index: doc as ImageIndex };
  }
  if (MANIFEST_TYPES.has(type) || (Array.isArray(doc.layers) && doc.config)) {
    if (!Array.isArray(doc.layers) || !doc.config) throw new Error(`${what}: manifest lacks config or layers`);
    return { kind: 'manifest', manifest: doc as ImageManifest };
  }
  throw new Error(`${what}: unsupported manifest media type "${type}"`);
}

/** Splits the image config's User into what CRI's Image message carries: a numeric uid or a username. */
export function imageUser(user: string | undefined): { uid?: number; username?: string } {
  if (!user) return {};
  const name = user.split(':')[0];
  if (/^\d+$/.test(name)) return { uid: Number(name) };
  return name ? { username: name } : {};
}
