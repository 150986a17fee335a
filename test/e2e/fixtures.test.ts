// Smoke test: the e2e fixtures (real registry, pushed images, proxy, auth) are real.
import test from 'ava';
import tar from 'tar-stream';
import { gunzipSync } from 'node:zlib';
import { spawnSync } from 'node:child_process';
import { startRegistry, leakedRegistryPids, startedRegistryPids, stopAllRegistries, type Registry } from '../helpers/registry.js';
import { standardFixtures, pushImage, pushIndex, busyboxLayer, MT, type PushedImage } from '../helpers/images.js';
import { startCountingProxy } from '../helpers/proxy.js';
import { getManifest, getBlob, registryFetch, parseChallenge, fetchToken, type RegistryTarget } from '../helpers/registry-client.js';
import { sha256, pidAlive } from '../helpers/util.js';

test.after.always('no docker-registry we started is left running', async (t) => {
  await stopAllRegistries();
  t.true(startedRegistryPids().length >= 3);
  t.deepEqual(leakedRegistryPids(), []);
  for (const pid of startedRegistryPids()) t.false(pidAlive(pid), `registry pid ${pid} still alive`);
});

async function withRegistry<T>(reg: Registry, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } finally {
    await reg.stop();
  }
}

interface TarEntry {
  name: string;
  type: string;
  mode: number;
  uid: number;
  gid: number;
  linkname: string | null;
  devmajor: number;
  devminor: number;
  pax: Record<string, string> | null;
  body: Buffer;
}

async function readTar(buf: Buffer): Promise<TarEntry[]> {
  const ex = tar.extract();
  const out: TarEntry[] = [];
  const done = (async () => {
    for await (const e of ex) {
      const chunks: Buffer[] = [];
      for await (const c of e) chunks.push(c as Buffer);
      const h = e.header as tar.Header & { pax?: Record<string, string> | null };
      out.push({
        name: h.name,
        type: h.type ?? 'file',
        mode: h.mode ?? 0,
        uid: h.uid ?? 0,
        gid: h.gid ?? 0,
        linkname: h.linkname ?? null,
        devmajor: h.devmajor ?? 0,
        devminor: h.devminor ?? 0,
        pax: h.pax ?? null,
        body: Buffer.concat(chunks),
      });
    }
  })();
  ex.end(buf);
  await done;
  return out;
}

async function checkManifest(t: import('ava').ExecutionContext, reg: RegistryTarget, name: string, ref: string, digest: string, mediaType: string) {
  const m = await getManifest(reg, name, ref, mediaType);
  t.is(m.status, 200, `${name}:${ref}`);
  t.is(m.digestHeader, digest, `${name}:${ref} Docker-Content-Digest`);
  t.is(m.digest, digest, `${name}:${ref} body digest`);
  t.is(m.mediaType, mediaType, `${name}:${ref} content-type`);
  return m;
}

async function checkImage(t: import('ava').ExecutionContext, reg: RegistryTarget, img: PushedImage) {
  await checkManifest(t, reg, img.name, img.tag ?? img.manifestDigest, img.manifestDigest, img.manifestMediaType);
  await checkManifest(t, reg, img.name, img.manifestDigest, img.manifestDigest, img.manifestMediaType);
  const cfg = await getBlob(reg, img.name, img.configDigest);
  t.is(sha256(cfg), img.imageId);
  const parsed = JSON.parse(cfg.toString()) as { rootfs: { diff_ids: string[] } };
  t.deepEqual(parsed.rootfs.diff_ids, img.layers.map((l) => l.diffId));
}

test('standard fixtures: pushed manifests/blobs read back with matching digests', async (t) => {
  const reg = await startRegistry();
  await withRegistry(reg, async () => {
    t.is(reg.host, `127.0.0.1:${new URL(reg.url).port}`);
    const fx = await standardFixtures(reg);
    t.is(fx.host, reg.host);

    for (const img of [fx.busybox, fx.multilayer, fx.zstd, fx.nonroot, fx.nonrootNamed, fx.sharedA, fx.sharedB, fx.big!]) {
      await checkImage(t, reg, img);
    }
    for (const img of [fx.multiarch.amd64, fx.multiarch.arm64, fx.ociindex.amd64, fx.ociindex.arm64]) {
      await checkImage(t, reg, img);
    }

    // formats / media types
    t.is(fx.multilayer.manifestMediaType, MT.dockerManifest);
    t.is(fx.multilayer.config.config.WorkingDir, '/keep');
    t.is(fx.zstd.manifestMediaType, MT.ociManifest);
    t.is(fx.zstd.layers[1]!.mediaType, MT.ociLayerZstd);
    t.is(fx.nonroot.config.config.User, '1000');
    t.is(fx.nonrootNamed.config.config.User, 'berthuser');
    t.is(fx.nonroot.ref, `${reg.host}/berth/nonroot:v1`);
    t.is(fx.nonrootNamed.ref, `${reg.host}/berth/nonroot:named`);
    t.true(fx.big!.layers[0]!.size > 64 << 20);

    // manifest list: arm64 decoy listed first
    const list = await checkManifest(t, reg, 'berth/multiarch', 'v1', fx.multiarch.list.digest, MT.dockerManifestList);
    const lj = list.json as { manifests: { digest: string; mediaType: string; platform: { architecture: string } }[] };
    t.deepEqual(lj.manifests.map((m) => m.platform.architecture), ['arm64', 'amd64']);
    t.is(lj.manifests[1]!.digest, fx.multiarch.amd64.manifestDigest);
    t.is(lj.manifests[1]!.mediaType, MT.dockerManifest);
    const idx = await checkManifest(t, reg, 'berth/ociindex', 'v1', fx.ociindex.index.digest, MT.ociIndex);
    const ij = idx.json as { manifests: { digest: string; platform: { architecture: string; variant?: string } }[] };
    t.deepEqual(ij.manifests.map((m) => m.platform), [{ architecture: 'arm64', os: 'linux', variant: 'v8' }, { architecture: 'amd64', os: 'linux' }]);
    t.is(ij.manifests[1]!.digest, fx.ociindex.amd64.manifestDigest);

    // pushIndex can look up size/media type of children by digest alone
    const looked = await pushIndex(reg, 'berth/ociindex', 'lookup', [
      { manifestDigest: fx.ociindex.amd64.manifestDigest, platform: { os: 'linux', architecture: 'amd64' } },
    ]);
    t.deepEqual(looked.manifests[0], {
      digest: fx.ociindex.amd64.manifestDigest,
      mediaType: MT.ociManifest,
      size: fx.ociindex.amd64.manifestSize,
      platform: { os: 'linux', architecture: 'amd64' },
    });
    await checkManifest(t, reg, 'berth/ociindex', 'lookup', looked.digest, MT.ociIndex);

    // shared layer really shared
    t.is(fx.sharedA.layers[1]!.digest, fx.sharedLayer.digest);
    t.is(fx.sharedB.layers[1]!.digest, fx.sharedLayer.digest);
    t.not(fx.sharedA.layers[2]!.digest, fx.sharedB.layers[2]!.digest);
    t.true(fx.sharedLayer.size > 8 << 20);

    // determinism: rebuilding the busybox layer gives the same digest as pushed
    t.is((await busyboxLayer()).digest, fx.busyboxLayer.digest);
    t.is(fx.multilayer.layers[0]!.digest !== fx.busyboxLayer.digest, true);

    // zstd layer decompresses (zstd CLI) to a tar whose sha256 is the diffId
    const zblob = await getBlob(reg, 'berth/zstd', fx.zstd.layers[1]!.digest);
    t.is(sha256(zblob), fx.zstd.layers[1]!.digest);
    const unz = spawnSync('zstd', ['-d', '-q', '-c'], { input: zblob, maxBuffer: 1 << 30 });
    t.is(unz.status, 0);
    t.is(sha256(unz.stdout), fx.zstd.layers[1]!.diffId);
    const zEntries = await readTar(unz.stdout);
    t.is(zEntries.find((e) => e.name === 'zstd.txt')?.body.toString(), 'zstd layer ok\n');

    // multilayer layer 2 has the special entries
    const l2 = await getBlob(reg, 'berth/multilayer', fx.multilayer.layers[1]!.digest);
    const l2tar = gunzipSync(l2);
    t.is(sha256(l2tar), fx.multilayer.layers[1]!.diffId);
    const es = await readTar(l2tar);
    const by = (n: string) => es.find((e) => e.name === n);
    t.truthy(by('data/.wh.gone.txt'));
    t.truthy(by('opq/.wh..wh..opq'));
    t.is(by('opq/new.txt')?.body.toString(), 'new in layer 2\n');
    t.is(by('keep/xattr.txt')?.pax?.['SCHILY.xattr.user.berth'], 'yes');
    t.is(by('keep/hard.txt')?.type, 'link');
    t.is(by('keep/hard.txt')?.linkname, 'keep/a2.txt');
    const dev = by('dev/berthnull');
    t.is(dev?.type, 'character-device');
    t.is(dev?.devmajor, 1);
    t.is(dev?.devminor, 3);
    t.is(dev?.mode, 0o666);
    // layer 1 has busybox + the files layer 2 removes
    const es1 = await readTar(gunzipSync(await getBlob(reg, 'berth/multilayer', fx.multilayer.layers[0]!.digest)));
    const names1 = new Set(es1.map((e) => e.name));
    for (const n of ['bin/busybox', 'bin/sh', 'bin/top', 'etc/passwd', 'etc/group', 'tmp/', 'data/gone.txt', 'opq/old.txt', 'keep/a.txt']) {
      t.true(names1.has(n), n);
    }
    t.false(names1.has('etc/hosts'));
    t.is(es1.find((e) => e.name === 'tmp/')?.mode, 0o1777);
    t.is(es1.find((e) => e.name === 'bin/sh')?.linkname, 'busybox');
    t.regex(es1.find((e) => e.name === 'etc/group')!.body.toString(), /^berthextra:x:2000:berthuser$/m);
    t.regex(es1.find((e) => e.name === 'etc/passwd')!.body.toString(), /^berthuser:x:1000:1000:/m);
  });
  t.false(pidAlive(reg.pid));
});

test('counting proxy counts blob GETs; failing proxy answers 503', async (t) => {
  const reg = await startRegistry();
  await withRegistry(reg, async () => {
    const img = await pushImage(reg, 'berth/proxied', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
    const proxy = await startCountingProxy(reg.url);
    try {
      const m = await getManifest(proxy, 'berth/proxied', 'v1', MT.dockerManifest);
      t.is(m.digest, img.manifestDigest);
      const blob = await getBlob(proxy, 'berth/proxied', img.layers[0]!.digest);
      t.is(sha256(blob), img.layers[0]!.digest);
      t.is(proxy.blobGets('berth/proxied', img.layers[0]!.digest), 1);
      t.is(proxy.blobGets('berth/proxied', img.configDigest), 0);
      t.is(proxy.manifestGets('berth/proxied'), 1);
      t.is(proxy.count('GET', /\/blobs\//, [200]), 1);
      const rec = proxy.requests.find((r) => r.path.includes('/blobs/'))!;
      t.is(rec.status, 200);
      t.is(rec.bytes, img.layers[0]!.size);

      proxy.failing = true;
      const res = await fetch(`${proxy.url}/v2/berth/proxied/blobs/${img.layers[0]!.digest}`);
      t.is(res.status, 503);
      await res.arrayBuffer();
      t.is(proxy.blobGets('berth/proxied', img.layers[0]!.digest), 2);
      t.is(proxy.count('GET', undefined, [503]), 1);
    } finally {
      await proxy.stop();
    }
    const failing = await startCountingProxy(reg.url, { failing: true });
    try {
      const res = await fetch(`${failing.url}/v2/`);
      t.is(res.status, 503);
      await res.arrayBuffer();
      t.is(failing.count(), 1);
    } finally {
      await failing.stop();
    }
    // throttled proxy still delivers the right bytes, slowly
    const slow = await startCountingProxy(reg.url, { bytesPerSecond: 4 << 20 });
    try {
      const t0 = Date.now();
      const blob = await getBlob(slow, 'berth/proxied', img.layers[0]!.digest);
      t.is(sha256(blob), img.layers[0]!.digest);
      t.true(Date.now() - t0 >= (img.layers[0]!.size / (4 << 20)) * 1000 * 0.8);
    } finally {
      await slow.stop();
    }
  });
});

test('htpasswd registry: 401 without credentials, 200 with', async (t) => {
  const reg = await startRegistry({ auth: { htpasswd: { users: { alice: 's3cret' } } } });
  await withRegistry(reg, async () => {
    t.is(reg.authMode, 'htpasswd');
    const anon = await fetch(`${reg.url}/v2/`);
    t.is(anon.status, 401);
    t.regex(anon.headers.get('www-authenticate') ?? '', /^Basic realm=/);
    await anon.arrayBuffer();
    const basic = (u: string, p: string) => ({ Authorization: 'Basic ' + Buffer.from(`${u}:${p}`).toString('base64') });
    const ok = await fetch(`${reg.url}/v2/`, { headers: basic('alice', 's3cret') });
    t.is(ok.status, 200);
    await ok.arrayBuffer();
    const bad = await fetch(`${reg.url}/v2/`, { headers: basic('alice', 'nope') });
    t.is(bad.status, 401);
    await bad.arrayBuffer();

    // pushing through the Basic challenge with reg.credentials
    const img = await pushImage(reg, 'berth/private', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
    const noAuth = await fetch(`${reg.url}/v2/berth/private/manifests/v1`, { headers: { Accept: MT.dockerManifest } });
    t.is(noAuth.status, 401);
    await noAuth.arrayBuffer();
    const m = await fetch(`${reg.url}/v2/berth/private/manifests/v1`, { headers: { Accept: MT.dockerManifest, ...basic('alice', 's3cret') } });
    t.is(m.status, 200);
    t.is(sha256(Buffer.from(await m.arrayBuffer())), img.manifestDigest);
  });
});

test('token registry: full Bearer challenge dance', async (t) => {
  const reg = await startRegistry({ auth: { token: { users: { bob: 'hunter2' } } } });
  await withRegistry(reg, async () => {
    t.is(reg.authMode, 'token');
    const ts = reg.tokenServer!;
    // push via the Bearer flow (registryFetch answers challenges with reg.credentials)
    const img = await pushImage(reg, 'berth/tokened', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
    t.true(ts.count() > 0);
    ts.reset();

    // 1. GET /v2/ → 401 Bearer realm=…
    const r1 = await fetch(`${reg.url}/v2/`);
    t.is(r1.status, 401);
    await r1.arrayBuffer();
    const ch = parseChallenge(r1.headers.get('www-authenticate'));
    t.is(ch?.scheme, 'bearer');
    t.is(ch?.params['realm'], ts.realm);
    t.is(ch?.params['service'], ts.service);

    // manifest GET challenge carries the scope
    const r2 = await fetch(`${reg.url}/v2/berth/tokened/manifests/v1`, { headers: { Accept: MT.dockerManifest } });
    t.is(r2.status, 401);
    await r2.arrayBuffer();
    const ch2 = parseChallenge(r2.headers.get('www-authenticate'))!;
    t.is(ch2.params['scope'], 'repository:berth/tokened:pull');

    // 2. token with Basic creds
    const tok = await fetchToken(ch2, { username: 'bob', password: 'hunter2' });
    t.is(tok.status, 200);
    t.truthy(tok.token);
    const [h, c] = tok.token!.split('.').slice(0, 2).map((p) => JSON.parse(Buffer.from(p, 'base64url').toString()) as Record<string, unknown>);
    t.is(h!['alg'], 'RS256');
    t.true(Array.isArray(h!['x5c']));
    t.is(c!['aud'], ts.service);
    t.is(c!['sub'], 'bob');
    t.deepEqual(c!['access'], [{ type: 'repository', name: 'berth/tokened', actions: ['pull'] }]);
    t.is(ts.count(), 1);
    t.is(ts.requests[0]!.user, 'bob');
    t.deepEqual(ts.requests[0]!.scopes, ['repository:berth/tokened:pull']);

    // 3. retry with Bearer → 200, blob too
    const r3 = await fetch(`${reg.url}/v2/berth/tokened/manifests/v1`, { headers: { Accept: MT.dockerManifest, Authorization: `Bearer ${tok.token}` } });
    t.is(r3.status, 200);
    t.is(r3.headers.get('docker-content-digest'), img.manifestDigest);
    t.is(sha256(Buffer.from(await r3.arrayBuffer())), img.manifestDigest);
    const r4 = await fetch(`${reg.url}/v2/berth/tokened/blobs/${img.layers[0]!.digest}`, { headers: { Authorization: `Bearer ${tok.token}` } });
    t.is(r4.status, 200);
    t.is(sha256(Buffer.from(await r4.arrayBuffer())), img.layers[0]!.digest);

    // token scoped to another repo is refused; push with a pull-only token is refused
    const other = await fetch(`${reg.url}/v2/berth/other/manifests/v1`, { headers: { Authorization: `Bearer ${tok.token}` } });
    t.is(other.status, 401);
    await other.arrayBuffer();
    const push = await fetch(`${reg.url}/v2/berth/tokened/blobs/uploads/`, { method: 'POST', headers: { Authorization: `Bearer ${tok.token}` } });
    t.is(push.status, 401);
    await push.arrayBuffer();
    // expired token is refused (registry allows 60s leeway)
    const expired = ts.mint('bob', ['repository:berth/tokened:pull'], { expiresInSec: -120, nbfOffsetSec: -300 });
    const r5 = await fetch(`${reg.url}/v2/berth/tokened/manifests/v1`, { headers: { Accept: MT.dockerManifest, Authorization: `Bearer ${expired}` } });
    t.is(r5.status, 401);
    await r5.arrayBuffer();

    // wrong password / no credentials → 401 from the token server
    const bad = await fetchToken(ch2, { username: 'bob', password: 'wrong' });
    t.is(bad.status, 401);
    t.is(bad.token, undefined);
    const none = await fetchToken(ch2);
    t.is(none.status, 401);
    t.is(ts.count((r) => r.status === 401), 2);

    // the generic client does the same dance
    const viaClient = await getManifest(reg, 'berth/tokened', 'v1', MT.dockerManifest);
    t.is(viaClient.status, 200);
    t.is(viaClient.digest, img.manifestDigest);
    const denied = await registryFetch(reg, '/v2/berth/tokened/manifests/v1', { credentials: { username: 'bob', password: 'wrong' }, repo: 'berth/tokened' });
    t.is(denied.status, 401);
    await denied.arrayBuffer();
  });
});
