// Minimal distribution-API client with plain fetch, for pushing fixtures and for
// inspecting a registry from tests. Handles Basic and Bearer (token) challenges.
import { sha256 } from './util.js';

export const MT = {
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerConfig: 'application/vnd.docker.container.image.v1+json',
  dockerLayerGzip: 'application/vnd.docker.image.rootfs.diff.tar.gzip',
  dockerLayerTar: 'application/vnd.docker.image.rootfs.diff.tar',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociConfig: 'application/vnd.oci.image.config.v1+json',
  ociLayerTar: 'application/vnd.oci.image.layer.v1.tar',
  ociLayerGzip: 'application/vnd.oci.image.layer.v1.tar+gzip',
  ociLayerZstd: 'application/vnd.oci.image.layer.v1.tar+zstd',
} as const;

/** Accept header that asks for any manifest kind (no schema1 conversion, no list resolution). */
export const ACCEPT_ALL_MANIFESTS = [MT.ociIndex, MT.ociManifest, MT.dockerManifestList, MT.dockerManifest].join(', ');

export interface Credentials {
  username: string;
  password: string;
}

/** Anything with a base URL: a Registry, a CountingProxy, or {url}. */
export interface RegistryTarget {
  url: string;
  credentials?: Credentials;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parse `Bearer realm="…",service="…",scope="…"` (first challenge only). */
export function parseChallenge(header: string | null): Challenge | null {
  if (!header) return null;
  const m = /^\s*(\S+)\s*(.*)$/.exec(header);
  if (!m) return null;
  const params: Record<string, string> = {};
  const re = /([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?/g;
  let p: RegExpExecArray | null;
  while ((p = re.exec(m[2]!)) !== null) {
    params[p[1]!.toLowerCase()] = p[2] !== undefined ? p[2].replace(/\\(.)/g, '$1') : (p[3] ?? '');
  }
  return { scheme: m[1]!.toLowerCase(), params };
}

function basic(c: Credentials): string {
  return 'Basic ' + Buffer.from(`${c.username}:${c.password}`).toString('base64');
}

export interface TokenResponse {
  status: number;
  token?: string;
  body: string;
}

/** GET <realm>?service=…&scope=… with optional Basic credentials. */
export async function fetchToken(challenge: Challenge, creds?: Credentials, scopes?: string[]): Promise<TokenResponse> {
  const realm = challenge.params['realm'];
  if (!realm) throw new Error('challenge has no realm');
  const u = new URL(realm);
  if (challenge.params['service']) u.searchParams.set('service', challenge.params['service']);
  const sc = scopes ?? (challenge.params['scope'] ? challenge.params['scope'].split(' ') : []);
  for (const s of sc) u.searchParams.append('scope', s);
  if (creds) u.searchParams.set('account', creds.username);
  const res = await fetch(u, { headers: creds ? { Authorization: basic(creds) } : {} });
  const body = await res.text();
  let token: string | undefined;
  if (res.ok) {
    const j = JSON.parse(body) as { token?: string; access_token?: string };
    token = j.token ?? j.access_token;
  }
  return { status: res.status, token, body };
}

// Authorization header cache: base url → (credentials, repo) → header.
const authCache = new Map<string, Map<string, string>>();

export interface RegistryFetchInit {
  method?: string;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  /** Repository the request is about (auth cache key). */
  repo?: string;
  /** Override target.credentials. */
  credentials?: Credentials;
  /** Don't follow redirects (default: follow). */
  manualRedirect?: boolean;
}

/**
 * fetch against a registry; on a 401 answers the Basic/Bearer challenge with the
 * target's credentials and retries once. `pathOrUrl` is '/v2/…' or an absolute URL.
 */
export async function registryFetch(target: RegistryTarget, pathOrUrl: string, init: RegistryFetchInit = {}): Promise<Response> {
  const url = new URL(pathOrUrl, target.url);
  const creds = init.credentials ?? target.credentials;
  const cacheKey = creds ? `${creds.username}\u0000${creds.password}\u0000${init.repo ?? ''}` : `\u0000\u0000${init.repo ?? ''}`;
  let cache = authCache.get(target.url);
  if (!cache) authCache.set(target.url, (cache = new Map()));
  const doFetch = (authz?: string) =>
    fetch(url, {
      method: init.method ?? 'GET',
      headers: { ...(init.headers ?? {}), ...(authz ? { Authorization: authz } : {}) },
      body: init.body as RequestInit['body'],
      redirect: init.manualRedirect ? 'manual' : 'follow',
    });
  const cached = cache.get(cacheKey);
  let res = await doFetch(cached);
  if (res.status !== 401) return res;
  const ch = parseChallenge(res.headers.get('www-authenticate'));
  if (!ch) return res;
  let authz: string | undefined;
  if (ch.scheme === 'basic') {
    if (!creds) return res;
    authz = basic(creds);
  } else if (ch.scheme === 'bearer') {
    const tok = await fetchToken(ch, creds);
    if (!tok.token) return res;
    authz = 'Bearer ' + tok.token;
  } else {
    return res;
  }
  await res.arrayBuffer().catch(() => undefined);
  res = await doFetch(authz);
  if (res.status !== 401) cache.set(cacheKey, authz);
  return res;
}

async function expectStatus(res: Response, ok: number[], what: string): Promise<void> {
  if (!ok.includes(res.status)) {
    const body = await res.text().catch(() => '');
    throw new Error(`${what}: HTTP ${res.status} ${body.slice(0, 500)}`);
  }
}

/** True if the blob exists in the repository (HEAD). */
export async function blobExists(target: RegistryTarget, name: string, digest: string): Promise<boolean> {
  const res = await registryFetch(target, `/v2/${name}/blobs/${digest}`, { method: 'HEAD', repo: name });
  return res.status === 200;
}

/**
 * Monolithic upload: POST /v2/<name>/blobs/uploads/ then PUT <location>&digest=….
 * Skips the upload when the blob already exists (unless force).
 */
export async function pushBlob(
  target: RegistryTarget,
  name: string,
  bytes: Uint8Array,
  opts: { digest?: string; force?: boolean } = {},
): Promise<string> {
  const digest = opts.digest ?? sha256(bytes);
  if (!opts.force && (await blobExists(target, name, digest))) return digest;
  const post = await registryFetch(target, `/v2/${name}/blobs/uploads/`, { method: 'POST', repo: name });
  await expectStatus(post, [202], `POST upload ${name}`);
  await post.arrayBuffer();
  const loc = post.headers.get('location');
  if (!loc) throw new Error('upload POST returned no Location');
  const u = new URL(loc, target.url);
  u.searchParams.set('digest', digest);
  const put = await registryFetch(target, u.toString(), {
    method: 'PUT',
    repo: name,
    headers: { 'Content-Type': 'application/octet-stream', 'Content-Length': String(bytes.byteLength) },
    body: bytes,
  });
  await expectStatus(put, [201], `PUT blob ${digest} to ${name}`);
  await put.arrayBuffer();
  const got = put.headers.get('docker-content-digest');
  if (got && got !== digest) throw new Error(`registry stored ${got}, expected ${digest}`);
  return digest;
}

/** PUT /v2/<name>/manifests/<ref>; returns the digest of the bytes. */
export async function pushManifest(
  target: RegistryTarget,
  name: string,
  ref: string,
  bytes: Uint8Array,
  mediaType: string,
): Promise<string> {
  const digest = sha256(bytes);
  const res = await registryFetch(target, `/v2/${name}/manifests/${ref}`, {
    method: 'PUT',
    repo: name,
    headers: { 'Content-Type': mediaType },
    body: bytes,
  });
  await expectStatus(res, [201], `PUT manifest ${name}:${ref}`);
  await res.arrayBuffer();
  const got = res.headers.get('docker-content-digest');
  if (got && got !== digest) throw new Error(`registry says manifest digest ${got}, expected ${digest}`);
  return digest;
}

export interface FetchedManifest {
  status: number;
  /** Docker-Content-Digest header. */
  digestHeader: string | null;
  /** sha256 of the body. */
  digest: string;
  mediaType: string | null;
  bytes: Buffer;
  json: unknown;
}

/** GET a manifest (default Accept: every schema2/OCI type). */
export async function getManifest(
  target: RegistryTarget,
  name: string,
  ref: string,
  accept: string = ACCEPT_ALL_MANIFESTS,
): Promise<FetchedManifest> {
  const res = await registryFetch(target, `/v2/${name}/manifests/${ref}`, { headers: { Accept: accept }, repo: name });
  const bytes = Buffer.from(await res.arrayBuffer());
  let json: unknown = null;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch {
    /* not json */
  }
  return {
    status: res.status,
    digestHeader: res.headers.get('docker-content-digest'),
    digest: sha256(bytes),
    mediaType: res.headers.get('content-type'),
    bytes,
    json,
  };
}

/** GET a blob's bytes (throws on non-200). */
export async function getBlob(target: RegistryTarget, name: string, digest: string): Promise<Buffer> {
  const res = await registryFetch(target, `/v2/${name}/blobs/${digest}`, { repo: name });
  await expectStatus(res, [200], `GET blob ${digest}`);
  return Buffer.from(await res.arrayBuffer());
}

/** DELETE a manifest by digest (the registry has delete enabled). */
export async function deleteManifest(target: RegistryTarget, name: string, digest: string): Promise<number> {
  const res = await registryFetch(target, `/v2/${name}/manifests/${digest}`, { method: 'DELETE', repo: name });
  await res.arrayBuffer();
  return res.status;
}

/** DELETE a blob from a repository. */
export async function deleteBlob(target: RegistryTarget, name: string, digest: string): Promise<number> {
  const res = await registryFetch(target, `/v2/${name}/blobs/${digest}`, { method: 'DELETE', repo: name });
  await res.arrayBuffer();
  return res.status;
}
