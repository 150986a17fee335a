import test from 'ava';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { startRegistry, leakedRegistryPids } from '../helpers/registry.js';
import { startCountingProxy } from '../helpers/proxy.js';
import { busyboxLayer, pushImage } from '../helpers/images.js';
import { startBerth } from '../helpers/berth.js';
import { failure } from '../helpers/cri.js';
import { freePort } from '../helpers/util.js';

// SIGHUP: the registry section and the log level change in a running berth; other keys wait for a restart.

test('SIGHUP: a changed mirror is used by the next pull and a changed log level applies, without a restart', async (t) => {
  const registry = await startRegistry();
  t.teardown(() => registry.stop());
  await pushImage(registry, 'berth/hup', 'v1', { layers: [await busyboxLayer()] });
  const mirror = await startCountingProxy(registry.url);
  t.teardown(() => mirror.stop());
  const dead = `http://127.0.0.1:${await freePort()}`;
  const ref = 'mirrored.example/berth/hup:v1';

  const berth = await startBerth({ config: `[log]\nlevel = "info"\n[registry]\nmirrors = { "mirrored.example" = ["${dead}"] }\n`, logLevel: null });
  t.teardown(() => berth.cleanup());
  const pid = berth.child.pid;
  const before = await failure(berth.images.PullImage({ image: { image: ref } }));
  t.true(before.details.includes(dead.replace('http://', '')), before.details);
  t.false(berth.logs.some((l) => l.includes('"level":"debug"')), 'info level: no debug lines yet');

  const file = path.join(berth.dir, 'config.toml');
  const text = await fs.readFile(file, 'utf8');
  const network = text.slice(text.indexOf('[network]'));
  await fs.writeFile(file, `[log]\nlevel = "debug"\n[registry]\nmirrors = { "mirrored.example" = ["${mirror.url}"] }\n[runtime]\nshm_size_bytes = 1048576\n${network}`);
  berth.child.kill('SIGHUP');
  const reloaded = await berth.waitForLog((e) => e.msg === 'SIGHUP: configuration reloaded');
  t.deepEqual(Object.keys(reloaded.changed as object).sort(), ['log.level', 'registry.mirrors']);
  const restart = await berth.waitForLog((e) => e.msg === 'SIGHUP: changed keys take effect only after a restart');
  t.deepEqual(restart.keys, ['runtime.shm_size_bytes']);

  const pulled = await berth.images.PullImage({ image: { image: ref } });
  t.truthy(pulled.image_ref);
  t.true(mirror.manifestGets('berth/hup') >= 1, 'the pull went to the new mirror');
  t.true(berth.logs.some((l) => l.includes('"level":"debug"')), 'debug lines after the reload');
  t.is(berth.child.pid, pid);
  t.is(berth.child.exitCode, null, 'the same berth, never restarted');

  // A file that no longer validates changes nothing: berth says so and keeps running with what it had.
  await fs.writeFile(file, `[registry]\nmirrors = "nope"\n${network}`);
  berth.child.kill('SIGHUP');
  const refused = await berth.waitForLog((e) => e.msg === 'SIGHUP: configuration not reloaded, berth keeps running with the previous one');
  t.regex(String(refused.error), /registry\.mirrors/);
  await berth.images.RemoveImage({ image: { image: ref } });
  t.truthy((await berth.images.PullImage({ image: { image: ref } })).image_ref, 'the mirror from the last good file still serves');
});

test.after.always('no docker-registry this file started is left running', (t) => {
  t.deepEqual(leakedRegistryPids(), []);
});
