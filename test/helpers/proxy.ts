// A counting reverse proxy in front of a registry (for pull tests: dedup counts, failing
// mirrors, slow pulls).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { sleep } from './util.js';

export interface ProxyRequestRecord {
  method: string;
  /** Path without query string, e.g. '/v2/berth/big/blobs/sha256:…'. */
  path: string;
  /** Full request target including query. */
  url: string;
  /** Final status; 0 while still in flight. */
  status: number;
  /** Response body bytes sent to the client. */
  bytes: number;
  /** The client went away before the response finished. */
  aborted: boolean;
  /** Request Authorization header (if any). */
  authorization?: string;
  startedAt: number;
  finishedAt?: number;
}

export interface CountingProxyOptions {
  /** Answer 503 to everything (a mirror that fails). Can be toggled later via proxy.failing. */
  failing?: boolean;
  /** Throttle response bodies to about this many bytes/second (e.g. to make a pull slow). */
  bytesPerSecond?: number;
}

export interface CountingProxy {
  /** 'http://127.0.0.1:PORT' */
  url: string;
  /** '127.0.0.1:PORT' — usable as a registry host / mirror endpoint. */
  host: string;
  targetUrl: string;
  /** Every request, in arrival order (records are pushed on arrival and completed later). */
  requests: ProxyRequestRecord[];
  /** Mutable: answer 503 to everything while true. */
  failing: boolean;
  /** Mutable: response throttle (undefined = unthrottled). */
  bytesPerSecond: number | undefined;
  /**
   * Count requests; method undefined = any; path: exact pathname string, or RegExp tested against
   * the pathname. Only completed requests with status in `statuses` if given.
   */
  count(method?: string, path?: string | RegExp, statuses?: number[]): number;
  /** GETs of /v2/<name>/blobs/<digest> (any status). */
  blobGets(name: string, digest: string): number;
  /** GETs of /v2/<name>/manifests/<ref> (any status; ref undefined = any ref). */
  manifestGets(name: string, ref?: string): number;
  /** Forget recorded requests. */
  reset(): void;
  stop(): Promise<void>;
}

function drainOrClose(res: http.ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

function escapeRe(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

export async function startCountingProxy(targetUrl: string, opts: CountingProxyOptions = {}): Promise<CountingProxy> {
  const target = new URL(targetUrl);
  const targetOrigin = target.origin;
  const requests: ProxyRequestRecord[] = [];
  let selfOrigin = '';

  const state = { failing: opts.failing ?? false, bytesPerSecond: opts.bytesPerSecond };

  const server = http.createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://x');
    const rec: ProxyRequestRecord = {
      method: req.method ?? 'GET',
      path: u.pathname,
      url: req.url ?? '/',
      status: 0,
      bytes: 0,
      aborted: false,
      authorization: req.headers.authorization,
      startedAt: Date.now(),
    };
    requests.push(rec);
    const finish = () => {
      rec.finishedAt ??= Date.now();
    };
    res.on('close', () => {
      if (!res.writableFinished) rec.aborted = true;
      finish();
    });

    if (state.failing) {
      rec.status = 503;
      const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: 'berth test mirror is failing' }] });
      req.resume();
      res.writeHead(503, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
      rec.bytes = Buffer.byteLength(body);
      return;
    }

    const headers = { ...req.headers };
    delete headers.connection;
    const up = http.request(
      {
        protocol: target.protocol,
        hostname: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers, // Host stays the proxy's, so the registry builds URLs pointing at us
      },
      async (upRes) => {
        rec.status = upRes.statusCode ?? 502;
        const outHeaders: http.OutgoingHttpHeaders = { ...upRes.headers };
        delete outHeaders.connection;
        const loc = upRes.headers.location;
        if (loc && loc.startsWith(targetOrigin)) outHeaders.location = selfOrigin + loc.slice(targetOrigin.length);
        res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, outHeaders);
        try {
          for await (const chunk of upRes as AsyncIterable<Buffer>) {
            if (res.destroyed) break;
            const bps = state.bytesPerSecond;
            if (!bps) {
              rec.bytes += chunk.byteLength;
              if (!res.write(chunk)) await drainOrClose(res);
              continue;
            }
            const slice = Math.max(1, Math.floor(bps / 20));
            for (let off = 0; off < chunk.byteLength && !res.destroyed; off += slice) {
              const piece = chunk.subarray(off, off + slice);
              rec.bytes += piece.byteLength;
              if (!res.write(piece)) await drainOrClose(res);
              await sleep((piece.byteLength / bps) * 1000);
            }
          }
          if (res.destroyed) upRes.destroy();
          else res.end();
        } catch {
          upRes.destroy();
          res.destroy();
        }
      },
    );
    up.on('error', (err) => {
      if (!res.headersSent) {
        rec.status = 502;
        const body = JSON.stringify({ errors: [{ code: 'UNAVAILABLE', message: `proxy upstream error: ${err.message}` }] });
        res.writeHead(502, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
        res.end(body);
      } else {
        res.destroy();
      }
    });
    res.on('close', () => {
      if (!res.writableFinished) up.destroy();
    });
    req.pipe(up);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  selfOrigin = `http://127.0.0.1:${port}`;

  const count = (method?: string, path?: string | RegExp, statuses?: number[]) =>
    requests.filter(
      (r) =>
        (method === undefined || r.method === method.toUpperCase()) &&
        (path === undefined || (typeof path === 'string' ? r.path === path : path.test(r.path))) &&
        (statuses === undefined || statuses.includes(r.status)),
    ).length;

  const proxy: CountingProxy = {
    url: selfOrigin,
    host: `127.0.0.1:${port}`,
    targetUrl,
    requests,
    get failing() {
      return state.failing;
    },
    set failing(v: boolean) {
      state.failing = v;
    },
    get bytesPerSecond() {
      return state.bytesPerSecond;
    },
    set bytesPerSecond(v: number | undefined) {
      state.bytesPerSecond = v;
    },
    count,
    blobGets: (name, digest) => count('GET', `/v2/${name}/blobs/${digest}`),
    manifestGets: (name, ref) =>
      count('GET', ref === undefined ? new RegExp(`^/v2/${escapeRe(name)}/manifests/[^/]+$`) : `/v2/${name}/manifests/${ref}`),
    reset: () => {
      requests.length = 0;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
  return proxy;
}
