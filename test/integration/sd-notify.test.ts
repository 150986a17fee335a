import test from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../../src/errors.js';
import { notifierFromEnv, sdNotify } from '../../src/kernel/sd-notify.js';
import { startBerth } from '../helpers/berth.js';
import { bindNotifySocket } from '../helpers/notify-socket.js';

// berth under a Type=notify unit: sd_notify datagrams on a real unix datagram socket standing in for systemd's.

async function tempSocket(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-notify-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  return path.join(dir, 'notify');
}

test('sdNotify sends one datagram to a socket path and to an abstract name', async (t) => {
  const file = await tempSocket(t);
  const bound = bindNotifySocket(file);
  t.teardown(() => bound.close());
  const received = bound.receive();
  sdNotify(file, 'READY=1\nSTATUS=test');
  t.is(await received, 'READY=1\nSTATUS=test');

  const abstract = `@berth-test-notify-${process.pid}`;
  const named = bindNotifySocket(abstract);
  t.teardown(() => named.close());
  const got = named.receive();
  sdNotify(abstract, 'STOPPING=1');
  t.is(await got, 'STOPPING=1');
});

test('sdNotify to a socket nobody listens on, or a relative path, is an unavailable error naming the socket', async (t) => {
  const file = await tempSocket(t);
  const err = t.throws(() => sdNotify(file, 'READY=1'), { instanceOf: BerthError });
  t.is(err!.kind, 'unavailable');
  t.true(err!.message.includes(file) && err!.message.includes('ENOENT'), err!.message);
  const relative = t.throws(() => sdNotify('run/notify', 'READY=1'), { instanceOf: BerthError });
  t.regex(relative!.message, /NOTIFY_SOCKET "run\/notify": neither an absolute path/);
});

test('NOTIFY_SOCKET is taken out of the environment, so no process berth starts can notify for it', (t) => {
  const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: '/run/systemd/notify', PATH: '/bin' };
  t.is(notifierFromEnv(env)?.socket, '/run/systemd/notify');
  t.deepEqual(env, { PATH: '/bin' });
  t.is(notifierFromEnv({}), undefined);
});

test('berth says READY=1 once its socket serves, RELOADING=1 then READY=1 around SIGHUP, STOPPING=1 on SIGTERM', async (t) => {
  const file = await tempSocket(t);
  const systemd = bindNotifySocket(file);
  t.teardown(() => systemd.close());
  const ready = systemd.receive();
  const berth = await startBerth({ env: { NOTIFY_SOCKET: file } });
  t.teardown(() => berth.cleanup());
  const readyMessage = await ready;
  t.regex(readyMessage, /^READY=1\nSTATUS=serving CRI on /);
  t.true(readyMessage.includes(berth.socket));
  // Ready means serving: an RPC right away is answered.
  t.is((await berth.runtime.Version({ version: 'v1' })).runtime_name, 'berth');

  const reloading = systemd.receive();
  berth.child.kill('SIGHUP');
  t.regex(await reloading, /^RELOADING=1\nMONOTONIC_USEC=\d+$/);
  t.is(await systemd.receive(), 'READY=1');
  await berth.waitForLog((e) => e.msg === 'SIGHUP: configuration reloaded');

  const stopping = systemd.receive();
  t.is(await berth.stop(), 0);
  t.is(await stopping, 'STOPPING=1');
  t.false(berth.logs.some((l) => l.includes('sd_notify failed')), 'no notification failed');
});
