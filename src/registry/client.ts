import { Readable } from 'node:stream';
import { createHash } from 'node:crypto';
import { BerthError, errorMessage, notFound, unauthenticated, unavailable } from '../errors.js';
import { Logger } from '../log.js';
import { RegistryConfig } from '../config/schema.js';
import { IMAGE_MANIFEST_MEDIA_TYPES, INDEX_MEDIA_TYPES } from '../image/types.js';
import { basicHeader, credentialsApply, Credentials, parseChallenge } from './auth.js';
import { readBounded, RegistryLimit, REGISTRY_LIMITS } from './bounded.js';
import { hostEntry, isLoopback, RegistryTrust, request, takeNodeBody, TransportError } from './transport.js';

// A client for the OCI distribution API (docker registry v2): manifests and blobs of one repository,
// with mirrors, plain-HTTP hosts and Basic/Bearer auth.

export const MANIFEST_MEDIA_TYPES = [...INDEX_MEDIA_TYPES, ...IMAGE_MANIFEST_MEDIA_TYPES];

export interface Endpoint {
  /** `https://host:port` — where /v2/ lives. */
  base: string;
  /** Whether this endpoint is a mirror (for logs). */
  mirror: boolean;
}

const DOCKER_HUB_API = 'registry-1.docker.io';

/**
 * Plain HTTP for a host listed in registry.insecure, and for a loopback one (as containerd and Docker do) unless
 * registry.loopback_plain_http is off or registry.hosts gives it a CA, which says it speaks TLS.
 */
function plainHttp(hostPort: string, config: RegistryConfig): boolean {
  if (config.insecure.includes(hostPort)) return true;
  if (!config.loopbackPlainHttp || !isLoopback(hostPort)) return false;
  return hostEntry(config, new URL(`https://${hostPort}`))?.caFile === undefined;
}

/** Endpoints for a registry host: its mirrors in order (no fallback), else the host itself. */
export function endpointsFor(domain: string, config: RegistryConfig): Endpoint[] {
  const mirrors = config.mirrors[domain];
  if (mirrors && mirrors.length > 0) {
    return mirrors.map((m) => {
      const withScheme = m.includes('://') ? m : `${plainHttp(m.replace(/\/.*$/, ''), config) || config.insecure.includes(m) ? 'http' : 'https'}://${m}`;
      return { base: withScheme.replace(/\/+$/, ''), mirror: true };
    });
  }
  const host = domain === 'docker.io' ? DOCKER_HUB_API : domain;
  const scheme = plainHttp(domain, config) || plainHttp(host, config) ? 'http' : 'https';
  return [{ base: `${scheme}://${host}`, mirror: false }];
}

export interface FetchedManifest {
  body: Buffer;
  /** The Content-Type the registry sent; classifyManifest prefers the body's own mediaType. */
  mediaType: string;
  digest: string;
  endpoint: Endpoint;
}

export interface BlobStream {
  stream: Readable;
  size?: number;
}

export interface RepositoryOptions {
  domain: string;
  path: string;
  credentials?: Credentials;
  config: RegistryConfig;
  log: Logger;
  /** Aborts every request of this session (e.g. berth shutting down hard). */
  signal?: AbortSignal;
}

function sha256(data: Buffer): string {
  return 'sha256:' + createHash('sha256').update(data).digest('hex');
}

function networkError(err: unknown): string {
  if (err instanceof TransportError) return err.message;
  const cause = (err as { cause?: { code?: string; message?: string } }).cause;
  return cause?.code ?? cause?.message ?? errorMessage(err);
}

/** One repository on one registry, reached through its endpoints. Keeps bearer tokens for the session. */
export class Repository {
  private readonly endpoints: Endpoint[];
  private readonly tokens = new Map<string, string>();
  private readonly timeoutMs: number;
  private readonly trust: RegistryTrust;

  constructor(private readonly opts: RepositoryOptions) {
    this.endpoints = endpointsFor(opts.domain, opts.config);
    this.trust = new RegistryTrust(opts.config);
    this.timeoutMs = opts.config.requestTimeoutSeconds * 1000;
  }

  get name(): string {
    return `${this.opts.domain}/${this.opts.path}`;
  }

  /** GET a manifest by tag or digest; the bytes are checked against the digest they are addressed by. */
  async getManifest(reference: string, preferred?: Endpoint): Promise<FetchedManifest> {
    const order = preferred ? [preferred, ...this.endpoints.filter((e) => e !== preferred)] : this.endpoints;
    return this.tryEndpoints(order, async (endpoint) => {
      const controller = new AbortController();
      const res = await this.request(endpoint, `manifests/${reference}`, { accept: MANIFEST_MEDIA_TYPES.join(', '), signal: controller.signal });
      const body = await this.bodyWithin(res, controller, `manifest ${this.name}:${reference} from ${endpoint.base}`, REGISTRY_LIMITS.manifest);
      const digest = sha256(body);
      if (reference.startsWith('sha256:') && digest !== reference) {
        throw new BerthError('unavailable', `manifest ${this.name}@${reference} from ${endpoint.base} has digest ${digest}: content does not match`);
      }
      const header = res.headers.get('docker-content-digest');
      if (header && header.startsWith('sha256:') && header !== digest) {
        throw new BerthError('unavailable', `manifest ${this.name}:${reference} from ${endpoint.base}: Docker-Content-Digest ${header} does not match content ${digest}`);
      }
      const mediaType = res.headers.get('content-type')?.split(';')[0].trim() ?? '';
      return { body, mediaType, digest, endpoint };
    });
  }

  /** Opens a blob for streaming. The caller verifies the digest as it consumes the stream. */
  async openBlob(digest: string, preferred?: Endpoint): Promise<BlobStream> {
    const order = preferred ? [preferred, ...this.endpoints.filter((e) => e !== preferred)] : this.endpoints;
    return this.tryEndpoints(order, async (endpoint) => {
      const controller = new AbortController();
      const res = await this.request(endpoint, `blobs/${digest}`, { signal: controller.signal });
      if (!res.body) throw unavailable(`blob ${digest} from ${endpoint.base} has no body`);
      const length = res.headers.get('content-length');
      const stream = takeNodeBody(res) ?? Readable.fromWeb(res.body as import('node:stream/web').ReadableStream);
      this.watchStall(stream, controller, `blob ${this.name}@${digest}`);
      return { stream, size: length ? Number(length) : undefined };
    });
  }

  /** GET a small blob (an image config) into memory, at most `limit` bytes of it, checked against its digest. */
  async getBlob(digest: string, preferred: Endpoint | undefined, limit: RegistryLimit): Promise<Buffer> {
    const order = preferred ? [preferred, ...this.endpoints.filter((e) => e !== preferred)] : this.endpoints;
    return this.tryEndpoints(order, async (endpoint) => {
      const controller = new AbortController();
      const res = await this.request(endpoint, `blobs/${digest}`, { signal: controller.signal });
      const body = await this.bodyWithin(res, controller, `blob ${this.name}@${digest} from ${endpoint.base}`, limit);
      const actual = sha256(body);
      if (actual !== digest) throw unavailable(`blob ${this.name}@${digest} has digest ${actual}: content does not match`);
      return body;
    });
  }

  // A download that stops making progress is abandoned rather than hanging a pull forever.
  private watchStall(stream: Readable, controller: AbortController, what: string): void {
    let timer: NodeJS.Timeout | undefined;
    const arm = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stream.destroy(unavailable(`${what}: no data for ${this.timeoutMs / 1000}s`));
        controller.abort();
      }, this.timeoutMs);
    };
    arm();
    stream.on('data', arm);
    stream.on('close', () => clearTimeout(timer));
  }

  private async tryEndpoints<T>(order: Endpoint[], attempt: (e: Endpoint) => Promise<T>): Promise<T> {
    const errors: BerthError[] = [];
    for (const endpoint of order) {
      try {
        return await attempt(endpoint);
      } catch (err) {
        const e = err instanceof BerthError ? err : unavailable(errorMessage(err), err);
        errors.push(e);
        this.opts.log.warn('registry endpoint failed', { endpoint: endpoint.base, repository: this.name, error: e.message });
      }
    }
    // The most telling failure wins: a credential problem, a missing tag or an oversized body says more than a
    // dead mirror.
    const rank = (e: BerthError) => (e.kind === 'unauthenticated' ? 4 : e.kind === 'not_found' ? 3 : e.kind === 'resource_exhausted' ? 2 : 1);
    const worst = errors.sort((a, b) => rank(b) - rank(a))[0];
    if (errors.length === 1) throw worst;
    throw new BerthError(worst.kind, `${worst.message} (tried ${order.map((e) => e.base).join(', ')})`);
  }

  private url(endpoint: Endpoint, suffix: string): string {
    return `${endpoint.base}/v2/${this.opts.path}/${suffix}`;
  }

  private async request(endpoint: Endpoint, suffix: string, opts: { accept?: string; signal?: AbortSignal }): Promise<Response> {
    const url = this.url(endpoint, suffix);
    const scope = `repository:${this.opts.path}:pull`;
    const tokenKey = `${endpoint.base} ${scope}`;
    const headers: Record<string, string> = {};
    if (opts.accept) headers.accept = opts.accept;
    const creds = this.credentialsFor(endpoint);
    const cached = this.tokens.get(tokenKey) ?? (creds?.registryToken ? `Bearer ${creds.registryToken}` : undefined);
    if (cached) headers.authorization = cached;

    // Lets an error body that trickles in be cut off (see bodyWithin).
    const own = new AbortController();
    const signal = opts.signal ? AbortSignal.any([own.signal, opts.signal]) : own.signal;
    let res = await this.send(url, headers, signal);
    if (res.status === 401) {
      await res.body?.cancel();
      const authorization = await this.authorize(endpoint, res.headers.get('www-authenticate'), scope);
      this.tokens.set(tokenKey, authorization);
      res = await this.send(url, { ...headers, authorization }, signal);
      if (res.status === 401) {
        await res.body?.cancel();
        // Registries such as Docker Hub hand out anonymous tokens, then answer 401 for a repository that is
        // missing or private: without credentials there are none to blame.
        if (!creds) {
          const why = this.opts.credentials ? 'the pull credentials belong to another registry and were not sent' : 'no credentials were given';
          throw unauthenticated(`${this.name}: repository does not exist or requires authorization at ${endpoint.base} (401 Unauthorized; ${why})`);
        }
        throw unauthenticated(`${this.name}: ${endpoint.base} rejected the credentials (401 Unauthorized)`);
      }
    }
    if (res.status === 404) {
      await res.body?.cancel();
      throw notFound(`${this.name}: ${suffix.replace('/', ' ')} not found at ${endpoint.base}`);
    }
    if (res.status === 403) {
      await res.body?.cancel();
      throw unauthenticated(`${this.name}: access denied by ${endpoint.base} (403 Forbidden)`);
    }
    if (!res.ok) {
      const what = `${this.name}: ${endpoint.base} answered ${res.status} for ${suffix}`;
      let text: string;
      try {
        text = (await this.bodyWithin(res, own, what, REGISTRY_LIMITS.errorBody)).toString('utf8', 0, 200);
      } catch (err) {
        // The status already fails the request; an oversized or broken error body only changes what it says.
        text = err instanceof BerthError && err.kind === 'resource_exhausted' ? err.message.slice(what.length + 2) : '';
      }
      throw unavailable(`${what}: ${text}`);
    }
    return res;
  }

  // A small body (manifest, config, error text) must arrive whole within the request timeout, which send() no
  // longer applies once the headers are in, and within its size limit. `controller` must be one whose signal went
  // to fetch: aborting it drops the connection.
  private async bodyWithin(res: Response, controller: AbortController, what: string, limit: RegistryLimit): Promise<Buffer> {
    const timer = setTimeout(() => controller.abort(), this.timeoutMs);
    try {
      return await readBounded(res, limit, what, () => controller.abort());
    } catch (err) {
      if (err instanceof BerthError) throw err;
      if (this.opts.signal?.aborted) throw unavailable(`${what}: request cancelled`, err);
      if (controller.signal.aborted) throw unavailable(`${what}: body not complete within ${this.timeoutMs / 1000}s`, err);
      throw unavailable(`${what}: ${networkError(err)}`, err);
    } finally {
      clearTimeout(timer);
    }
  }

  // The timeout covers only the wait for the response headers: fetch's signal also aborts the body, and a big
  // blob may well take longer than that to stream. The body is guarded by watchStall instead.
  private async send(url: string, headers: Record<string, string>, signal?: AbortSignal): Promise<Response> {
    const timeout = new AbortController();
    const timer = setTimeout(() => timeout.abort(), this.timeoutMs);
    const signals = [timeout.signal, signal, this.opts.signal].filter((s): s is AbortSignal => s !== undefined);
    try {
      return await request(url, { headers, signal: AbortSignal.any(signals) }, this.trust);
    } catch (err) {
      if (this.opts.signal?.aborted) throw unavailable(`${url}: request cancelled`, err);
      if (timeout.signal.aborted) throw unavailable(`${url}: no answer within ${this.timeoutMs / 1000}s`);
      throw unavailable(`${url}: ${networkError(err)}`, err);
    } finally {
      clearTimeout(timer);
    }
  }

  private credentialsFor(endpoint: Endpoint): Credentials | undefined {
    const creds = this.opts.credentials;
    return creds && credentialsApply(creds, new URL(endpoint.base).host, endpoint.mirror) ? creds : undefined;
  }

  private async authorize(endpoint: Endpoint, header: string | null, scope: string): Promise<string> {
    const challenge = parseChallenge(header);
    const creds = this.credentialsFor(endpoint);
    if (!challenge) throw unauthenticated(`${this.name}: ${endpoint.base} requires authentication but sent no challenge`);
    if (challenge.scheme === 'basic') {
      const basic = creds && basicHeader(creds);
      if (!basic) {
        const why = this.opts.credentials ? 'the pull credentials belong to another registry and were not sent' : 'none were given';
        throw unauthenticated(`${this.name}: ${endpoint.base} requires credentials (Basic auth); ${why}`);
      }
      return basic;
    }
    if (challenge.scheme !== 'bearer') {
      throw unauthenticated(`${this.name}: ${endpoint.base} asks for unsupported auth scheme ${challenge.scheme}`);
    }
    const realm = challenge.params.realm;
    if (!realm) throw unauthenticated(`${this.name}: ${endpoint.base} sent a Bearer challenge without a realm`);
    const token = await this.fetchToken(realm, challenge.params.service, challenge.params.scope ?? scope, creds);
    return `Bearer ${token}`;
  }

  private async fetchToken(realm: string, service: string | undefined, scope: string, creds?: Credentials): Promise<string> {
    const url = new URL(realm);
    let res: Response;
    const own = new AbortController();
    const signal = AbortSignal.any([AbortSignal.timeout(this.timeoutMs), own.signal, ...(this.opts.signal ? [this.opts.signal] : [])]);
    try {
      if (creds?.identityToken) {
        const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'berth', scope });
        if (service) form.set('service', service);
        res = await request(url.href, { method: 'POST', form, signal }, this.trust);
      } else {
        if (service) url.searchParams.set('service', service);
        url.searchParams.set('scope', scope);
        const headers: Record<string, string> = {};
        const basic = creds && basicHeader(creds);
        if (basic) headers.authorization = basic;
        res = await request(url.href, { headers, signal }, this.trust);
      }
    } catch (err) {
      throw unavailable(`${this.name}: token service ${url.origin} unreachable: ${networkError(err)}`, err);
    }
    if (res.status === 401 || res.status === 403) {
      await res.body?.cancel();
      throw unauthenticated(`${this.name}: token service ${url.origin} rejected the credentials (${res.status})`);
    }
    if (!res.ok) {
      await res.body?.cancel();
      throw unavailable(`${this.name}: token service ${url.origin} answered ${res.status}`);
    }
    let body: { token?: unknown; access_token?: unknown } = {};
    try {
      const bytes = await readBounded(res, REGISTRY_LIMITS.token, `${this.name}: token service ${url.origin}`, () => own.abort());
      body = JSON.parse(bytes.toString('utf8')) ?? {};
    } catch (err) {
      if (err instanceof BerthError) throw err;
      if (signal.aborted) throw unavailable(`${this.name}: token service ${url.origin}: no complete answer within ${this.timeoutMs / 1000}s`, err);
      // not JSON: reported below as no token
    }
    const token = typeof body.token === 'string' && body.token ? body.token : typeof body.access_token === 'string' ? body.access_token : undefined;
    if (!token) throw unauthenticated(`${this.name}: token service ${url.origin} returned no token`);
    return token;
  }
}
