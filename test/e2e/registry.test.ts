import test from 'ava';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { startRegistry } from '../helpers/registry.js';
import { busyboxLayer, layer, layerFromTar, pushImage, tarBytes } from '../helpers/images.js';
import { startCountingProxy } from '../helpers/proxy.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { waitFor } from '../helpers/util.js';
import tar from 'tar-stream';
import { loadCri } from '../../src/cri/grpc.js';
import type { ImageServiceClient } from '../../src/gen/runtime/v1/ImageService.js';

// Pull behaviour that needs registries of its own: auth, mirrors, shared downloads, bad content, shutdown.

const failure = async (p: Promise<unknown>): Promise<grpc.ServiceError> => {
  try {
    await p;
  } catch (err) {
    return err as grpc.ServiceError;
  }
  throw new Error('expected the call to fail');
};

async function berthWith(t: { teardown(fn: () => Promise<void>): void }, config: string): Promise<BerthProcess> {
  const berth = await startBerth({ config });
  t.teardown(() => berth.cleanup());
  return berth;
}

test('htpasswd registry: right credentials pull, wrong ones are a clear auth error', async (t) => {
  const registry = await startRegistry({ auth: { htpasswd: { users: { alice: 'wonderland' } } } });
  t.teardown(() => registry.stop());
  const img = await pushImage(registry, 'berth/private', 'v1', { layers: [await busyboxLayer()] });
  const berth = await berthWith(t, `[registry]\ninsecure = ["${registry.host}"]\n`);

  const anonymous = await failure(berth.images.PullImage({ image: { image: img.ref } }));
  t.is(anonymous.code, grpc.status.UNAUTHENTICATED);
  t.true(anonymous.details.includes(img.ref));
  const wrong = await failure(berth.images.PullImage({ image: { image: img.ref }, auth: { username: 'alice', password: 'nope' } }));
  t.is(wrong.code, grpc.status.UNAUTHENTICATED);
  t.regex(wrong.details, /rejected the credentials/);
  t.deepEqual((await berth.images.ListImages({})).images, []);

  const ok = await berth.images.PullImage({ image: { image: img.ref }, auth: { username: 'alice', password: 'wonderland' } });
  t.is(ok.image_ref, img.imageId);
  // The docker config "auth" form works too.
  await berth.images.RemoveImage({ image: { image: img.ref } });
  const viaAuth = await berth.images.PullImage({ image: { image: img.ref }, auth: { auth: Buffer.from('alice:wonderland').toString('base64') } });
  t.is(viaAuth.image_ref, img.imageId);
});

test('token registry: the bearer challenge is answered with credentials, a registry_token is used as is', async (t) => {
  const registry = await startRegistry({ auth: { token: { users: { bob: 'builder' } } } });
  t.teardown(() => registry.stop());
  const img = await pushImage(registry, 'berth/tokened', 'v1', { layers: [await busyboxLayer()] });
  const berth = await berthWith(t, `[registry]\ninsecure = ["${registry.host}"]\n`);
  const server = registry.tokenServer!;
  server.reset();

  const wrong = await failure(berth.images.PullImage({ image: { image: img.ref }, auth: { username: 'bob', password: 'x' } }));
  t.is(wrong.code, grpc.status.UNAUTHENTICATED);
  t.regex(wrong.details, /token service/);

  const ok = await berth.images.PullImage({ image: { image: img.ref }, auth: { username: 'bob', password: 'builder' } });
  t.is(ok.image_ref, img.imageId);
  t.true(server.count((r) => r.user === 'bob' && r.status === 200) >= 1);
  t.true(server.requests.every((r) => r.scopes.every((s) => s === 'repository:berth/tokened:pull')));

  await berth.images.RemoveImage({ image: { image: img.ref } });
  const before = server.requests.length;
  const token = server.mint('bob', ['repository:berth/tokened:pull']);
  const direct = await berth.images.PullImage({ image: { image: img.ref }, auth: { registry_token: token } });
  t.is(direct.image_ref, img.imageId);
  t.is(server.requests.length, before, 'a registry_token needs no trip to the token service');
});

test('two concurrent pulls that share a layer download it once', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const base = await busyboxLayer();
  const shared = await layer([{ type: 'file', path: 'shared.bin', content: randomBytes(4 << 20) }]);
  const a = await pushImage(registry, 'berth/a', 'v1', { layers: [base, shared, await layer([{ type: 'file', path: 'a', content: 'a' }])] });
  const b = await pushImage(registry, 'berth/b', 'v1', { layers: [base, shared, await layer([{ type: 'file', path: 'b', content: 'b' }])] });
  const proxy = await startCountingProxy(registry.url, { bytesPerSecond: 8 << 20 });
  t.teardown(() => proxy.stop());
  const berth = await berthWith(t, `[registry]\ninsecure = ["${proxy.host}"]\n`);
  proxy.reset();
  const refA = `${proxy.host}/${a.name}:v1`;
  const refB = `${proxy.host}/${b.name}:v1`;
  const [ra, rb] = await Promise.all([
    berth.images.PullImage({ image: { image: refA } }),
    berth.images.PullImage({ image: { image: refB } }),
  ]);
  t.is(ra.image_ref, a.imageId);
  t.is(rb.image_ref, b.imageId);
  const sharedGets = proxy.blobGets(a.name, shared.digest) + proxy.blobGets(b.name, shared.digest);
  t.is(sharedGets, 1);
  t.is(proxy.blobGets(a.name, base.digest) + proxy.blobGets(b.name, base.digest), 1);
});

test('mirrors are used in order and a failing mirror does not fall back to the original host', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const img = await pushImage(registry, 'berth/mirrored', 'v1', { layers: [await busyboxLayer()] });
  const origin = await startCountingProxy(registry.url);
  const broken = await startCountingProxy(registry.url, { failing: true });
  const good = await startCountingProxy(registry.url);
  t.teardown(async () => {
    await Promise.all([origin.stop(), broken.stop(), good.stop()]);
  });
  const ref = `${origin.host}/${img.name}:v1`;

  const onlyBroken = await berthWith(t, `[registry]\ninsecure = ["${origin.host}"]\n[registry.mirrors]\n"${origin.host}" = ["${broken.url}"]\n`);
  const err = await failure(onlyBroken.images.PullImage({ image: { image: ref } }));
  t.is(err.code, grpc.status.UNAVAILABLE);
  t.true(err.details.includes(ref));
  t.true(broken.requests.length > 0);
  t.is(origin.requests.length, 0, 'the original host was never contacted');

  const fallsThrough = await berthWith(t, `[registry.mirrors]\n"${origin.host}" = ["${broken.url}", "${good.url}"]\n`);
  const ok = await fallsThrough.images.PullImage({ image: { image: ref } });
  t.is(ok.image_ref, img.imageId);
  t.true(good.count('GET', /\/blobs\//) > 0);
  t.is(origin.requests.length, 0);
  const status = await fallsThrough.images.ImageStatus({ image: { image: ref } });
  t.deepEqual(status.image?.repo_tags, [`${origin.host}/berth/mirrored:v1`], 'the image keeps the name it was asked by');
});

test('a corrupted blob fails the pull and records nothing', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const bad = await layer([{ type: 'file', path: 'x', content: randomBytes(64 << 10) }]);
  const img = await pushImage(registry, 'berth/corrupt', 'v1', { layers: [await busyboxLayer(), bad] });
  const file = registry.blobPath(bad.digest);
  const original = await fs.readFile(file);
  const corrupted = Buffer.from(original);
  corrupted[corrupted.length >> 1] ^= 0xff;
  await fs.writeFile(file, corrupted);
  const berth = await berthWith(t, `[registry]\ninsecure = ["${registry.host}"]\n`);
  const err = await failure(berth.images.PullImage({ image: { image: img.ref } }));
  t.is(err.code, grpc.status.UNAVAILABLE);
  t.true(err.details.includes(img.ref));
  t.deepEqual((await berth.images.ListImages({})).images, []);
  t.is((await berth.images.ImageStatus({ image: { image: img.ref } })).image, null);
  const layers = await fs.readdir(path.join(berth.root, 'images', 'layers'));
  t.false(layers.includes(bad.diffId.slice(7)), 'the corrupted layer was not kept');
  t.false(layers.some((n) => n.startsWith('.staging')), 'no staging directory left');
});

async function escapingLayer(name: string) {
  const pack = tar.pack();
  pack.entry({ name: 'ok.txt', mode: 0o644 }, 'fine');
  pack.entry({ name: name, mode: 0o644 }, 'escaped');
  pack.finalize();
  const chunks: Buffer[] = [];
  for await (const chunk of pack) chunks.push(chunk as Buffer);
  return layerFromTar(Buffer.concat(chunks), 'gzip');
}

test('a layer entry with ../ fails the pull and writes nothing outside the layer', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const marker = `escape-${randomBytes(4).toString('hex')}`;
  const evil = await escapingLayer(`../../../../../../../../tmp/${marker}`);
  const img = await pushImage(registry, 'berth/evil', 'v1', { layers: [evil] });
  const berth = await berthWith(t, `[registry]\ninsecure = ["${registry.host}"]\n`);
  const err = await failure(berth.images.PullImage({ image: { image: img.ref } }));
  t.true([grpc.status.INVALID_ARGUMENT, grpc.status.UNAVAILABLE, grpc.status.FAILED_PRECONDITION].includes(err.code));
  t.regex(err.details, /escapes/);
  t.true(err.details.includes(img.ref));
  t.false(await fs.lstat(`/tmp/${marker}`).then(() => true, () => false));
  const found: string[] = [];
  const walk = async (dir: string) => {
    for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
      if (entry.name.includes(marker)) found.push(path.join(dir, entry.name));
      if (entry.isDirectory()) await walk(path.join(dir, entry.name));
    }
  };
  await walk(berth.dir);
  t.deepEqual(found, []);
  t.deepEqual((await berth.images.ListImages({})).images, []);
  void tarBytes;
});

test('SIGTERM during a pull lets the pull finish, then berth exits 0', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const heavy = await layer([{ type: 'file', path: 'heavy.bin', content: randomBytes(12 << 20) }]);
  const img = await pushImage(registry, 'berth/heavy', 'v1', { layers: [heavy] });
  const slow = await startCountingProxy(registry.url, { bytesPerSecond: 4 << 20 });
  t.teardown(() => slow.stop());
  const berth = await berthWith(t, `[registry]\ninsecure = ["${slow.host}"]\n`);
  const ref = `${slow.host}/${img.name}:v1`;
  const pull = berth.images.PullImage({ image: { image: ref } });
  await berth.waitForLog((e) => e.msg === 'layer progress');
  berth.child.kill('SIGTERM');
  const result = await pull;
  t.is(result.image_ref, img.imageId);
  t.is(await berth.exited, 0);
  await berth.waitForLog((e) => e.msg === 'berth stopped');
});

test('anonymous pull of a private repository on a token registry says so; a malformed auth field is INVALID_ARGUMENT', async (t) => {
  // Like Docker Hub: anyone gets a token, but an anonymous one grants nothing on this repository.
  const registry = await startRegistry({
    auth: { token: { users: { carol: 'secret' }, anonymous: true, grant: (user, req) => (user === null ? [] : req.actions) } },
  });
  t.teardown(() => registry.stop());
  const img = await pushImage(registry, 'berth/hidden', 'v1', { layers: [await busyboxLayer()] });
  const berth = await berthWith(t, `[registry]\ninsecure = ["${registry.host}"]\n`);

  const anonymous = await failure(berth.images.PullImage({ image: { image: img.ref } }));
  t.is(anonymous.code, grpc.status.UNAUTHENTICATED);
  t.regex(anonymous.details, /does not exist or requires authorization/);
  t.regex(anonymous.details, /no credentials were given/);
  t.notRegex(anonymous.details, /rejected the credentials/);

  const malformed = await failure(berth.images.PullImage({ image: { image: img.ref }, auth: { auth: Buffer.from('carol').toString('base64') } }));
  t.is(malformed.code, grpc.status.INVALID_ARGUMENT);
  t.regex(malformed.details, /\bauth\b/);
  t.false(malformed.details.includes('carol'), 'the secret is not echoed');

  const ok = await berth.images.PullImage({ image: { image: img.ref }, auth: { auth: Buffer.from('carol:secret').toString('base64') } });
  t.is(ok.image_ref, img.imageId);
});

test('a blob that streams for longer than request_timeout_seconds still downloads', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const long = await layer([{ type: 'file', path: 'long.bin', content: randomBytes(12 << 20) }]);
  const img = await pushImage(registry, 'berth/long', 'v1', { layers: [long] });
  // About 12 s of steady data against a 5 s timeout: only the wait for headers is timed, the stall watchdog guards the body.
  const slow = await startCountingProxy(registry.url, { bytesPerSecond: 1 << 20 });
  t.teardown(() => slow.stop());
  // A first answer from a freshly started registry can be slow on a busy host; that is not what is tested here.
  await (await fetch(`${registry.url}/v2/${img.name}/manifests/v1`, { headers: { accept: 'application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json' } })).arrayBuffer();
  const berth = await berthWith(t, `[registry]\ninsecure = ["${slow.host}"]\nrequest_timeout_seconds = 5\n`);
  const started = Date.now();
  const ok = await berth.images.PullImage({ image: { image: `${slow.host}/${img.name}:v1` } });
  t.is(ok.image_ref, img.imageId);
  t.true(Date.now() - started > 10000, 'the download did outlast the timeout');
  t.is(slow.blobGets(img.name, long.digest), 1, 'no retry was needed');
});

test('a cancelled PullImage stops its download and leaves nothing behind', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  const heavy = await layer([{ type: 'file', path: 'heavy.bin', content: randomBytes(32 << 20) }]);
  const img = await pushImage(registry, 'berth/cancelled', 'v1', { layers: [heavy] });
  const slow = await startCountingProxy(registry.url, { bytesPerSecond: 1 << 20 });
  t.teardown(() => slow.stop());
  const berth = await berthWith(t, `[registry]\ninsecure = ["${slow.host}"]\n`);
  const ref = `${slow.host}/${img.name}:v1`;
  const blob = `/v2/${img.name}/blobs/${heavy.digest}`;
  // A client of our own, to cancel the call once the layer download is under way (as kubelet does on its timeout).
  const client = new (loadCri().runtime.v1.ImageService)(`unix://${berth.socket}`, grpc.credentials.createInsecure()) as unknown as ImageServiceClient;
  t.teardown(() => client.close());
  let call: grpc.ClientUnaryCall | undefined;
  const pulled = new Promise<grpc.ServiceError | null>((resolve) => {
    call = client.PullImage({ image: { image: ref } }, (err) => resolve(err));
  });
  await berth.waitForLog((e) => e.msg === 'layer progress');
  call!.cancel();
  t.is((await pulled)?.code, grpc.status.CANCELLED);
  // The blob request is dropped by berth long before the 32 s the whole layer would take.
  await waitFor('the blob download to end', () => slow.requests.some((r) => r.path === blob && r.finishedAt !== undefined), { intervalMs: 100 });
  const rec = slow.requests.find((r) => r.path === blob);
  t.truthy(rec?.finishedAt, 'the blob download ended');
  t.true(rec!.aborted, 'berth went away mid-body');
  t.true(rec!.bytes < heavy.size);
  await berth.waitForLog((e) => e.msg === 'rpc failed' && e.rpc === 'PullImage');
  t.deepEqual((await berth.images.ListImages({})).images, []);
  const layers = await fs.readdir(path.join(berth.root, 'images', 'layers'));
  t.deepEqual(layers.filter((n) => n.startsWith('.staging')), []);
  t.false(layers.includes(heavy.diffId.slice(7)));
});
