import test from 'ava';
import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { startRegistry } from '../helpers/registry.js';
import { busyboxLayer, pushImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { failure } from '../helpers/cri.js';
import { linkExists, outsideHost } from './network-helpers.js';
import { leakedRegistryPids } from '../helpers/registry.js';
import { pidAlive } from '../helpers/util.js';

// How berth reaches registries by address: plain HTTP on loopback with no config, a clear hint when a registry
// elsewhere answers HTTPS with plain HTTP, and TLS with a private CA that is trusted once configured.

const run = promisify(execFile);

async function berthWith(t: { teardown(fn: () => Promise<void>): void }, config: string): Promise<BerthProcess> {
  const berth = await startBerth({ config });
  t.teardown(() => berth.cleanup());
  return berth;
}

/** Rewrites berth's config file (keeping the network section the test helper added) and waits for the reload. */
async function reconfigure(berth: BerthProcess, registryToml: string): Promise<void> {
  const file = path.join(berth.dir, 'config.toml');
  const text = await fs.readFile(file, 'utf8');
  const network = text.slice(text.indexOf('[network]'));
  const before = berth.logs.length;
  await fs.writeFile(file, `${registryToml}\n${network}`);
  berth.child.kill('SIGHUP');
  await berth.waitForLog((e) => e.msg === 'SIGHUP: configuration reloaded' && berth.logs.indexOf(JSON.stringify(e)) >= before);
}

/** A TCP relay: connections to `listen` are piped to `target`. Returns a closer that also ends open connections. */
function relay(listen: net.ListenOptions, target: net.NetConnectOpts, server = net.createServer()): Promise<{ port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  server.on(server instanceof tls.Server ? 'secureConnection' : 'connection', (client: net.Socket) => {
    const upstream = net.connect(target);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    client.pipe(upstream).pipe(client);
  });
  server.on('tlsClientError', () => undefined);
  return new Promise((resolve) => {
    server.listen(listen, () => {
      const { port } = server.address() as net.AddressInfo;
      resolve({
        port,
        close: () => {
          for (const s of sockets) s.destroy();
          return new Promise<void>((r) => server.close(() => r()));
        },
      });
    });
  });
}

test('a plain-HTTP registry on 127.0.0.1 pulls with no registry config at all', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const img = await pushImage(registry, 'berth/loopback', 'v1', { layers: [await busyboxLayer()] });
  const berth = await berthWith(t, '');
  const pulled = await berth.images.PullImage({ image: { image: img.ref } });
  t.is(pulled.image_ref, img.imageId);
});

test('the same registry reached at a non-loopback address fails with a hint naming the host and registry.insecure; the fix works', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  await pushImage(registry, 'berth/far', 'v1', { layers: [await busyboxLayer()] });
  // The registry listens on the node's loopback; the test's own network namespace relays its address to it (via a
  // relay on the node's end of the link, the only node address that namespace can reach).
  const outside = await outsideHost();
  let removed = false;
  t.teardown(() => (removed ? undefined : outside.remove()));
  const nodeRelay = await relay({ host: outside.nodeIp, port: 0 }, { host: '127.0.0.1', port: Number(registry.host.split(':')[1]) });
  t.teardown(() => nodeRelay.close());
  const script =
    `const net = require('net'); net.createServer((c) => { const u = net.connect(${nodeRelay.port}, '${outside.nodeIp}'); ` +
    `c.on('error', () => {}); u.on('error', () => {}); c.pipe(u).pipe(c); }).listen(5000, '${outside.ip}', () => console.log('up'));`;
  const inside = await outside.exec('sh', ['-c', `${process.execPath} -e "${script}" >/dev/null 2>&1 & echo $!`]);
  const insidePid = Number(inside.trim());
  const killInside = () => {
    if (pidAlive(insidePid)) process.kill(insidePid, 'SIGKILL');
  };
  t.teardown(killInside);
  const host = `${outside.ip}:5000`;
  const ref = `${host}/berth/far:v1`;
  const berth = await startBerth({ config: '' });
  let cleaned = false;
  t.teardown(() => (cleaned ? undefined : berth.cleanup()));
  // The relay inside the namespace may take a moment to listen.
  let err = await failure(berth.images.PullImage({ image: { image: ref } }));
  for (let i = 0; i < 50 && /ECONNREFUSED/.test(err.details); i++) {
    await new Promise((r) => setTimeout(r, 100));
    err = await failure(berth.images.PullImage({ image: { image: ref } }));
  }
  t.true(err.details.includes(`${host} answered plain HTTP to an HTTPS request`), err.details);
  t.true(err.details.includes(`add "${host}" to registry.insecure`), err.details);

  await reconfigure(berth, `[registry]\ninsecure = ["${host}"]\n`);
  const pulled = await berth.images.PullImage({ image: { image: ref } });
  t.truthy(pulled.image_ref);

  await berth.cleanup();
  cleaned = true;
  killInside();
  await nodeRelay.close();
  await outside.remove();
  removed = true;
  t.false(await linkExists(outside.nodeLink), 'the test link is gone');
  t.false(pidAlive(outside.pid), 'the namespace holder is gone');
});

test.after.always('no docker-registry this file started is left running', (t) => {
  t.deepEqual(leakedRegistryPids(), []);
});

test('a TLS registry with a private CA: unknown authority until its CA is configured, then it pulls; a wrong name and an expired certificate are said', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-tls-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const f = (name: string) => path.join(dir, name);
  const openssl = (...args: string[]) => run('openssl', args, { timeout: 30000 });
  await openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2', '-subj', '/CN=berth test CA');
  await openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('server.key'), '-out', f('server.csr'), '-subj', '/CN=127.0.0.1');
  await fs.writeFile(f('ext.cnf'), 'subjectAltName = IP:127.0.0.1\n');
  await openssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('server.pem'), '-days', '2', '-extfile', f('ext.cnf'));
  // Valid until the day before it was issued: expired from the start.
  await openssl('x509', '-req', '-in', f('server.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial', '-out', f('expired.pem'), '-days', '-1', '-extfile', f('ext.cnf'));

  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  await pushImage(registry, 'berth/secure', 'v1', { layers: [await busyboxLayer()] });
  const server = tls.createServer({ key: await fs.readFile(f('server.key')), cert: await fs.readFile(f('server.pem')) });
  const front = await relay({ host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port: Number(registry.host.split(':')[1]) }, server);
  t.teardown(() => front.close());
  const host = `127.0.0.1:${front.port}`;
  const ref = `${host}/berth/secure:v1`;

  // A loopback registry is plain HTTP by default; with that off, berth speaks TLS to it and does not trust it.
  const berth = await berthWith(t, '[registry]\nloopback_plain_http = false\n');
  const untrusted = await failure(berth.images.PullImage({ image: { image: ref } }));
  t.regex(untrusted.details, new RegExp(`TLS verification of ${host} failed: certificate signed by unknown authority`));
  t.true(untrusted.details.includes(`registry.hosts."${host}".ca_file`), untrusted.details);

  // A CA for the host also says it speaks TLS, so loopback_plain_http may stay on.
  await reconfigure(berth, `[registry.hosts."${host}"]\nca_file = "${f('ca.pem')}"\n`);
  const pulled = await berth.images.PullImage({ image: { image: ref } });
  t.truthy(pulled.image_ref);

  await reconfigure(berth, `[registry]\nloopback_plain_http = false\nca_files = ["${f('ca.pem')}"]\n`);
  const wrongName = await failure(berth.images.PullImage({ image: { image: `localhost:${front.port}/berth/secure:v1` } }));
  t.regex(wrongName.details, new RegExp(`TLS verification of localhost:${front.port} failed: certificate is for another name`));

  const stale = tls.createServer({ key: await fs.readFile(f('server.key')), cert: await fs.readFile(f('expired.pem')) });
  const staleFront = await relay({ host: '127.0.0.1', port: 0 }, { host: '127.0.0.1', port: Number(registry.host.split(':')[1]) }, stale);
  t.teardown(() => staleFront.close());
  const expired = await failure(berth.images.PullImage({ image: { image: `127.0.0.1:${staleFront.port}/berth/secure:v1` } }));
  t.regex(expired.details, new RegExp(`TLS verification of 127.0.0.1:${staleFront.port} failed: certificate expired`));
  t.deepEqual((await berth.images.ListImages({})).images.map((i) => i.repo_tags).flat(), [ref], 'nothing recorded by the failed pulls');
});
