import test, { ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as grpc from '@grpc/grpc-js';
import type { BerthProcess } from '../helpers/berth.js';
import { failure } from '../helpers/cri.js';
import { startCheckedBerth } from '../helpers/pod-env.js';
import { sleep } from '../helpers/util.js';

// A registry that attacks the puller with oversized bodies. This is a deliberate exception to the rule that e2e
// tests use the real loopback registry: the server below plays an attacker, not a registry, and answers only the
// handful of requests a pull makes before it would be refused.

const MiB = 1 << 20;
const HOSTILE_BYTES = 64 * MiB;
const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';

interface Hostile {
  host: string;
  /** Body bytes handed to each path's sockets so far. */
  sent: Map<string, number>;
  /** Every request path, in order. */
  requests: string[];
  stop(): Promise<void>;
}

/** Writes `total` bytes of `fill` chunked (no Content-Length), honouring backpressure; stops when the client leaves. */
function flood(path: string, res: http.ServerResponse, total: number, sent: Map<string, number>, fill = 0x20): void {
  const chunk = Buffer.alloc(64 * 1024, fill);
  let written = 0;
  const more = () => {
    while (written < total && !res.destroyed) {
      written += chunk.length;
      sent.set(path, (sent.get(path) ?? 0) + chunk.length);
      if (!res.write(chunk)) return void res.once('drain', more);
    }
    if (!res.destroyed) res.end();
  };
  more();
}

const sha256 = (b: Buffer | string) => 'sha256:' + createHash('sha256').update(b).digest('hex');

async function startHostile(): Promise<Hostile> {
  const sent = new Map<string, number>();
  const requests: string[] = [];
  // A small valid manifest whose config is served endlessly, and one whose config declares 64 MiB.
  const endlessConfig = sha256('endless config');
  const manifestFor = (config: { digest: string; size: number }) =>
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_MANIFEST, config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers: [] });
  const configManifest = manifestFor({ digest: endlessConfig, size: 1234 });
  const declaredManifest = manifestFor({ digest: sha256('declared'), size: HOSTILE_BYTES });
  const server = http.createServer((req, res) => {
    const path = (req.url ?? '').split('?')[0];
    requests.push(path);
    res.on('error', () => undefined);
    if (path === '/v2/' || path === '/v2') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    } else if (path === '/v2/evil/chunked/manifests/v1') {
      res.writeHead(200, { 'content-type': OCI_MANIFEST });
      flood(path, res, HOSTILE_BYTES, sent);
    } else if (path === '/v2/evil/lying/manifests/v1') {
      // Declares 64 MiB, then trickles: only the header can fail it quickly.
      res.writeHead(200, { 'content-type': OCI_MANIFEST, 'content-length': String(HOSTILE_BYTES) });
      res.write('{');
      sent.set(path, 1);
    } else if (path === '/v2/evil/config/manifests/v1') {
      res.writeHead(200, { 'content-type': OCI_MANIFEST }).end(configManifest);
    } else if (path === `/v2/evil/config/blobs/${endlessConfig}`) {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      flood(path, res, HOSTILE_BYTES, sent);
    } else if (path === '/v2/evil/declared/manifests/v1') {
      res.writeHead(200, { 'content-type': OCI_MANIFEST }).end(declaredManifest);
    } else if (path === '/v2/evil/token/manifests/v1') {
      const { port } = server.address() as AddressInfo;
      res.writeHead(401, { 'www-authenticate': `Bearer realm="http://127.0.0.1:${port}/token",service="evil"` }).end();
    } else if (path === '/token') {
      res.writeHead(200, { 'content-type': 'application/json' });
      flood(path, res, HOSTILE_BYTES, sent);
    } else if (path === '/v2/evil/errbody/manifests/v1') {
      res.writeHead(500, { 'content-type': 'text/plain' });
      flood(path, res, HOSTILE_BYTES, sent);
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    sent,
    requests,
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function rssKiB(pid: number): number {
  return Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

async function setup(t: ExecutionContext): Promise<{ berth: BerthProcess; hostile: Hostile }> {
  const hostile = await startHostile();
  t.teardown(() => hostile.stop());
  const { berth } = await startCheckedBerth(t, { registryHost: hostile.host });
  return { berth, hostile };
}

test('a 64 MiB chunked manifest fails the pull at the 4 MiB limit while berth stays within idle RSS + 32 MiB', async (t) => {
  const { berth, hostile } = await setup(t);
  const pid = berth.child.pid!;
  // Idle: a warm-up call so the gRPC path is loaded, then a pause for the post-start GC (src/memory.ts).
  await berth.images.ListImages({});
  await sleep(1500);
  const idle = rssKiB(pid);
  let peak = idle;
  let pulling = true;
  const sampler = (async () => {
    while (pulling) {
      peak = Math.max(peak, rssKiB(pid));
      await sleep(5);
    }
  })();
  const ref = `${hostile.host}/evil/chunked:v1`;
  const err = await failure(berth.images.PullImage({ image: { image: ref } }));
  pulling = false;
  await sampler;
  peak = Math.max(peak, rssKiB(pid));
  t.is(err.code, grpc.status.RESOURCE_EXHAUSTED, err.details);
  t.true(err.details.includes(ref), err.details);
  t.regex(err.details, /manifest .* over berth's limit of 4 MiB \(4194304 bytes\) for manifests and indexes/);
  t.log(`berth RSS idle ${idle} KiB, peak during the pull ${peak} KiB; the server got ${hostile.sent.get('/v2/evil/chunked/manifests/v1')} bytes out`);
  t.true(peak < idle + 32 * 1024, `peak RSS ${peak} KiB vs idle ${idle} KiB`);
  // berth dropped the connection instead of draining it: the server could not hand over much past the limit.
  t.true((hostile.sent.get('/v2/evil/chunked/manifests/v1') ?? 0) < 24 * MiB);
  t.deepEqual((await berth.images.ListImages({})).images, []);
});

test('a Content-Length over the limit fails the pull before the body is read', async (t) => {
  const { berth, hostile } = await setup(t);
  const ref = `${hostile.host}/evil/lying:v1`;
  const started = Date.now();
  const err = await failure(berth.images.PullImage({ image: { image: ref } }));
  t.is(err.code, grpc.status.RESOURCE_EXHAUSTED, err.details);
  t.regex(err.details, /Content-Length 67108864, over berth's limit of 4 MiB/);
  // The body never completes: only the header check can have failed it (the request timeout is 60 s).
  t.true(Date.now() - started < 30_000);
});

test('image configs are capped while streaming and by the size their manifest declares', async (t) => {
  const { berth, hostile } = await setup(t);
  const streamed = await failure(berth.images.PullImage({ image: { image: `${hostile.host}/evil/config:v1` } }));
  t.is(streamed.code, grpc.status.RESOURCE_EXHAUSTED, streamed.details);
  t.regex(streamed.details, /blob .* more than 8388608 bytes received, over berth's limit of 8 MiB \(8388608 bytes\) for image configs/);
  const declared = await failure(berth.images.PullImage({ image: { image: `${hostile.host}/evil/declared:v1` } }));
  t.is(declared.code, grpc.status.RESOURCE_EXHAUSTED, declared.details);
  t.regex(declared.details, /the manifest declares 67108864 bytes, over berth's limit of 8 MiB/);
  t.false(hostile.requests.some((p) => p.startsWith('/v2/evil/declared/blobs/')), 'the config was never requested');
});

test('an oversized token response and an oversized error body fail the pull naming their limit', async (t) => {
  const { berth, hostile } = await setup(t);
  const token = await failure(berth.images.PullImage({ image: { image: `${hostile.host}/evil/token:v1` } }));
  t.is(token.code, grpc.status.RESOURCE_EXHAUSTED, token.details);
  t.regex(token.details, /token service .* over berth's limit of 1 MiB \(1048576 bytes\) for token responses/);
  const errBody = await failure(berth.images.PullImage({ image: { image: `${hostile.host}/evil/errbody:v1` } }));
  // The 500 fails the pull; the body's size only shapes the message.
  t.is(errBody.code, grpc.status.UNAVAILABLE, errBody.details);
  t.regex(errBody.details, /answered 500 .* over berth's limit of 64 KiB \(65536 bytes\) for error bodies/);
});
