import http from 'node:http';
import type { AddressInfo } from 'node:net';

// The /metrics HTTP endpoint. It is bound before berth touches the node, so a taken address stops berth with
// nothing changed; until the daemon is ready it answers 503.

/** A listen address berth cannot take: berth refuses to start, naming the key and the address. */
export class MetricsAddressError extends Error {}

export interface MetricsSource {
  scrape(): Promise<string>;
  contentType: string;
}

export interface MetricsServer {
  /** The bound address (port 0 in the config becomes the port the kernel chose). */
  address: string;
  serve(source: MetricsSource): void;
  close(): Promise<void>;
}

/** "host:port", "[v6]:port": as validated by the config (metrics.address). */
export function splitAddress(address: string): { host: string; port: number } {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(address);
  if (!m) throw new MetricsAddressError(`metrics.address "${address}" is not host:port`);
  return { host: m[1] ?? m[2], port: Number(m[3]) };
}

/** The longest a scrape may take before the request is answered 503 (a stuck stats read must not pile requests up). */
const SCRAPE_TIMEOUT_MS = 10_000;

export async function listenMetrics(address: string, onError: (err: unknown) => void): Promise<MetricsServer> {
  const { host, port } = splitAddress(address);
  let source: MetricsSource | undefined;
  const server = http.createServer((req, res) => {
    const url = (req.url ?? '').split('?')[0];
    if (url !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: berth serves /metrics\n');
      return;
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('method not allowed\n');
      return;
    }
    if (!source) {
      res.writeHead(503, { 'content-type': 'text/plain' }).end('berth is starting\n');
      return;
    }
    const { contentType } = source;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`scrape took longer than ${SCRAPE_TIMEOUT_MS} ms`)), SCRAPE_TIMEOUT_MS);
    });
    Promise.race([source.scrape(), timedOut])
      .then(
        (body) => res.writeHead(200, { 'content-type': contentType }).end(req.method === 'HEAD' ? undefined : body),
        (err: unknown) => {
          onError(err);
          res.writeHead(503, { 'content-type': 'text/plain' }).end('scrape failed\n');
        },
      )
      .finally(() => clearTimeout(timer));
  });
  // Scrapers keep connections alive; idle ones must not hold berth's shutdown.
  server.keepAliveTimeout = 5_000;
  server.requestTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      const why = err.code === 'EADDRINUSE' ? 'is already in use' : err.code === 'EADDRNOTAVAIL' ? 'is not an address of this host' : `cannot be bound (${err.message})`;
      reject(new MetricsAddressError(`metrics.address: ${address} ${why}; choose another address, or "" to disable metrics`));
    });
    server.listen({ host, port, exclusive: true }, () => resolve());
  });
  server.on('error', onError);
  const bound = server.address() as AddressInfo;
  return {
    address: bound.family === 'IPv6' ? `[${bound.address}]:${bound.port}` : `${bound.address}:${bound.port}`,
    serve: (s) => (source = s),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
