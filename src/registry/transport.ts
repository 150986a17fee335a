import http from 'node:http';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { rootCertificates } from 'node:tls';
import { isIPv4 } from 'node:net';
import { Readable } from 'node:stream';
import { ReadableStream } from 'node:stream/web';
import { RegistryConfig } from '../config/schema.js';

// HTTP(S) for the registry client, on node:http/https rather than fetch, because the trust a registry gets is
// per host (registry.ca_files, registry.hosts."host".ca_file) and a TLS failure must say what went wrong and
// which config key fixes it, which fetch's "fetch failed" does not.

/** A request that failed before any answer; the message names the host, the reason and, where one exists, the fix. */
export class TransportError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
    this.name = 'TransportError';
  }
}

/** `host` or `host:port` of an image reference or endpoint is a loopback address: localhost, 127.0.0.0/8, ::1. */
export function isLoopback(hostPort: string): boolean {
  const host = hostPort.startsWith('[') ? hostPort.slice(1, hostPort.indexOf(']')) : hostPort.replace(/:\d+$/, '');
  if (host.toLowerCase() === 'localhost') return true;
  if (isIPv4(host)) return host.startsWith('127.');
  return host === '::1' || host === '0:0:0:0:0:0:0:1';
}

/** The registry.hosts entry of a URL's host, written with or without its default port. */
export function hostEntry(config: RegistryConfig, url: URL): RegistryConfig['hosts'][string] | undefined {
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  return config.hosts[url.host] ?? config.hosts[`${url.hostname}:${port}`];
}

const plainAgent = new http.Agent({ keepAlive: true });
const systemTrustAgent = new https.Agent({ keepAlive: true });
/** Agents trusting extra CAs, by the CAs' content: every pull of a registry reuses its connections. */
const extraTrustAgents = new Map<string, https.Agent>();

/**
 * The TLS trust of one pull: CA files are read when a host is first contacted, so a CA file replaced on disk is
 * used by the next pull without a restart.
 */
export class RegistryTrust {
  private readonly agents = new Map<string, https.Agent>();

  constructor(private readonly config: RegistryConfig) {}

  agentFor(url: URL): http.Agent | https.Agent {
    if (url.protocol === 'http:') return plainAgent;
    let agent = this.agents.get(url.host);
    if (!agent) {
      const files = [...this.config.caFiles];
      const own = hostEntry(this.config, url)?.caFile;
      if (own) files.push(own);
      agent = systemTrustAgent;
      if (files.length > 0) {
        const pems = files.map((f) => {
          try {
            return readFileSync(f, 'utf8');
          } catch (err) {
            throw new TransportError(`${url.host}: cannot read CA file ${f}: ${(err as Error).message}`, (err as NodeJS.ErrnoException).code);
          }
        });
        const key = createHash('sha256').update(pems.join('\0')).digest('hex');
        agent = extraTrustAgents.get(key);
        if (!agent) {
          agent = new https.Agent({ keepAlive: true, ca: [...rootCertificates, ...pems] });
          extraTrustAgents.set(key, agent);
        }
      }
      this.agents.set(url.host, agent);
    }
    return agent;
  }
}

const UNKNOWN_AUTHORITY = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
]);
// OpenSSL's words for a TLS record that is no TLS, e.g. "HTTP/1.1 400" sent back to a ClientHello. Node reports
// them as EPROTO with OpenSSL's reason in the message (or, from some paths, as ERR_SSL_<REASON>).
const NOT_TLS = /wrong[ _]version[ _]number|packet[ _]length[ _]too[ _]long|http[ _]request|record[ _]layer[ _]failure/i;

function explain(err: unknown, url: URL): TransportError {
  const e = err as NodeJS.ErrnoException & { reason?: string };
  const code = e.code;
  const host = url.host;
  const trustFix = `trust its CA with registry.ca_files or registry.hosts."${host}".ca_file`;
  if ((code === 'EPROTO' || code?.startsWith('ERR_SSL_')) && NOT_TLS.test(`${code} ${e.message}`)) {
    const loopbackHint = isLoopback(host) ? ' (or set registry.loopback_plain_http = true)' : '';
    return new TransportError(
      `${host} answered plain HTTP to an HTTPS request: if it is a plain-HTTP registry, add "${host}" to registry.insecure${loopbackHint}`,
      code,
    );
  }
  if (code && UNKNOWN_AUTHORITY.has(code)) {
    return new TransportError(`TLS verification of ${host} failed: certificate signed by unknown authority (${code}); ${trustFix}`, code);
  }
  if (code === 'CERT_HAS_EXPIRED') return new TransportError(`TLS verification of ${host} failed: certificate expired (${code})`, code);
  if (code === 'CERT_NOT_YET_VALID') return new TransportError(`TLS verification of ${host} failed: certificate not yet valid (${code})`, code);
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') {
    return new TransportError(`TLS verification of ${host} failed: certificate is for another name (${e.reason ?? code})`, code);
  }
  if (code && /CERT|SIGNATURE/.test(code)) return new TransportError(`TLS verification of ${host} failed: ${e.message} (${code})`, code);
  return new TransportError(`${host}: ${code ?? e.message}`, code);
}

export interface TransportRequest {
  method?: 'GET' | 'POST';
  headers?: Record<string, string>;
  /** A form body (token requests). */
  form?: URLSearchParams;
  signal: AbortSignal;
}

const REDIRECTS = [301, 302, 303, 307, 308];
const MAX_REDIRECTS = 10;
const NULL_BODY = [101, 204, 205, 304];

function once(url: URL, req: TransportRequest, trust: RegistryTrust): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    if (req.signal.aborted) return reject(req.signal.reason);
    const body = req.form?.toString();
    const headers = { ...req.headers, ...(body !== undefined ? { 'content-type': 'application/x-www-form-urlencoded' } : {}) };
    const client = url.protocol === 'https:' ? https : http;
    let response: http.IncomingMessage | undefined;
    // Aborting ends the response too (a stalled body, berth stopping), not only a request still waiting for headers.
    const abort = () => {
      const reason = req.signal.reason instanceof Error ? req.signal.reason : new Error('aborted');
      request.destroy(reason);
      response?.destroy(reason);
    };
    const request = client.request(url, { method: req.method ?? 'GET', headers, agent: trust.agentFor(url) }, (res) => {
      response = res;
      res.once('close', () => req.signal.removeEventListener('abort', abort));
      resolve(res);
    });
    req.signal.addEventListener('abort', abort, { once: true });
    request.once('error', (err) => {
      req.signal.removeEventListener('abort', abort);
      reject(req.signal.aborted ? err : explain(err, url));
    });
    request.end(body);
  });
}

/** The node stream behind each Response's body, until that body is first read. */
const nodeBodies = new WeakMap<Response, http.IncomingMessage>();

/**
 * The body of a Response from `request` as the node stream it came in on, for a caller that streams all of it (a
 * layer): a web stream adapter each way costs a promise and a copy per chunk on the daemon's thread. Undefined once
 * the web body was read; after this call the web body must not be used.
 */
export function takeNodeBody(res: Response): Readable | undefined {
  const body = nodeBodies.get(res);
  nodeBodies.delete(res);
  return body;
}

/** A web stream over `res` that only starts reading it when it is first read (so takeNodeBody can have it instead). */
function lazyWebBody(response: () => Response, res: http.IncomingMessage): ReadableStream<Uint8Array> {
  let chunks: AsyncIterator<Buffer> | undefined;
  return new ReadableStream<Uint8Array>(
    {
      async pull(controller) {
        if (!chunks) {
          if (!nodeBodies.delete(response())) throw new Error('the body was taken as a node stream');
          chunks = res[Symbol.asyncIterator]();
        }
        const next = await chunks.next();
        if (next.done) controller.close();
        else controller.enqueue(new Uint8Array(next.value.buffer, next.value.byteOffset, next.value.byteLength));
      },
      cancel() {
        nodeBodies.delete(response());
        res.destroy();
      },
    },
    { highWaterMark: 0 },
  );
}

function toResponse(res: http.IncomingMessage): Response {
  const headers = new Headers();
  for (let i = 0; i + 1 < res.rawHeaders.length; i += 2) {
    try {
      headers.append(res.rawHeaders[i], res.rawHeaders[i + 1]);
    } catch {
      // a header value Headers refuses is one berth never reads
    }
  }
  const status = res.statusCode ?? 0;
  if (status < 200 || status > 599) {
    res.destroy();
    throw new TransportError(`answered with HTTP status ${status}`, undefined);
  }
  if (NULL_BODY.includes(status)) {
    res.resume();
    return new Response(null, { status, headers });
  }
  const response: Response = new Response(lazyWebBody(() => response, res) as unknown as BodyInit, { status, headers });
  nodeBodies.set(response, res);
  return response;
}

/**
 * One request, redirects followed as fetch follows them: the Authorization header is dropped when a redirect
 * leaves the origin (a blob redirected to object storage must not carry the registry's token).
 */
export async function request(target: string, req: TransportRequest, trust: RegistryTrust): Promise<Response> {
  let url = new URL(target);
  let current = req;
  for (let hop = 0; ; hop++) {
    const res = await once(url, current, trust);
    const location = res.headers.location;
    if (!REDIRECTS.includes(res.statusCode ?? 0) || !location) return toResponse(res);
    res.resume();
    if (hop === MAX_REDIRECTS) throw new TransportError(`${url.host}: more than ${MAX_REDIRECTS} redirects`, undefined);
    const next = new URL(location, url);
    if (next.protocol !== 'http:' && next.protocol !== 'https:') throw new TransportError(`${url.host}: redirect to unsupported URL ${next.protocol}`, undefined);
    const headers = { ...current.headers };
    if (next.origin !== url.origin) delete headers.authorization;
    const toGet = res.statusCode === 303 || ((res.statusCode === 301 || res.statusCode === 302) && current.method === 'POST');
    current = { ...current, headers, ...(toGet ? { method: 'GET', form: undefined } : {}) };
    url = next;
  }
}
