import test, { ExecutionContext } from 'ava';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import type { BerthProcess } from '../helpers/berth.js';
import { failure } from '../helpers/cri.js';
import { waitFor } from '../helpers/util.js';
import { podEnv } from '../helpers/pod-env.js';
import type { PodSandboxConfig } from '../../src/gen/runtime/v1/PodSandboxConfig.js';

// A container's log stays beneath its pod's log_directory: log_path is hostile input (the pod spec shapes it),
// and the log directory may hold links a container planted there through a hostPath volume.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/logs', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

interface Env {
  berth: BerthProcess;
  logDir: string;
  /** A directory beside the log directory, where an escaping log would land. */
  outside: string;
  podId: string;
  pod: PodSandboxConfig;
  create(logPath: string, script?: string): Promise<string>;
}

async function env(t: ExecutionContext): Promise<Env> {
  const p = await podEnv(t, { registryHost: registry.host, image: image.ref });
  const logDir = path.join(p.berth.dir, 'logs', 'pod');
  const outside = path.join(p.berth.dir, 'outside');
  await fs.mkdir(logDir, { recursive: true });
  await fs.mkdir(outside);
  const pod = await p.pod({ log_directory: logDir });
  return {
    berth: p.berth,
    logDir,
    outside,
    podId: pod.id,
    pod: pod.config,
    create: (logPath, script = 'echo escaped; echo escaped >&2') => p.container(pod, { command: ['/bin/sh', '-c', script], log_path: logPath }, false),
  };
}

/** Every file under dir, relative. */
async function filesUnder(dir: string): Promise<string[]> {
  const entries = await fs.readdir(dir, { recursive: true, withFileTypes: true });
  return entries.filter((e) => !e.isDirectory()).map((e) => path.relative(dir, path.join(e.parentPath, e.name))).sort();
}

test('a log_path that climbs out of the log directory, or is absolute, is INVALID_ARGUMENT and nothing is written outside', async (t) => {
  const e = await env(t);
  for (const logPath of ['../x.log', 'a/../../x.log', '..', path.join(e.outside, 'abs.log')]) {
    const err = await failure(e.create(logPath));
    t.is(err.code, grpc.status.INVALID_ARGUMENT, `${logPath}: ${err.details}`);
    t.regex(err.details, /config\.log_path/, logPath);
  }
  t.deepEqual((await e.berth.runtime.ListContainers({})).containers, [], 'no container was recorded');
  t.deepEqual(await filesUnder(path.dirname(e.logDir)), [], 'nothing was written beside or in the log directory');
  t.deepEqual(await filesUnder(e.outside), []);
});

test('a symlink planted in the log directory is not followed: the create fails clearly and nothing is written where it points', async (t) => {
  const e = await env(t);
  const target = path.join(e.outside, 'target.log');
  await fs.writeFile(target, '');
  await fs.symlink(e.outside, path.join(e.logDir, 'link'));
  const viaDir = await failure(e.create('link/c.log'));
  t.is(viaDir.code, grpc.status.FAILED_PRECONDITION, viaDir.details);
  t.regex(viaDir.details, /config\.log_path "link\/c\.log": .*link is a symlink/);
  await fs.symlink(target, path.join(e.logDir, 'c.log'));
  const asFile = await failure(e.create('c.log'));
  t.is(asFile.code, grpc.status.FAILED_PRECONDITION, asFile.details);
  t.regex(asFile.details, /config\.log_path "c\.log": .*c\.log is a symlink/);
  t.deepEqual((await e.berth.runtime.ListContainers({})).containers, []);
  t.deepEqual(await filesUnder(e.outside), ['target.log']);
  t.is(await fs.readFile(target, 'utf8'), '');
});

test('ReopenContainerLog does not follow a symlink put in the log file\'s place; the container keeps logging to its file', async (t) => {
  const e = await env(t);
  const target = path.join(e.outside, 'target.log');
  await fs.writeFile(target, '');
  const id = await e.create('c/0.log', 'while true; do echo tick; sleep 0.05; done');
  await e.berth.runtime.StartContainer({ container_id: id });
  const log = path.join(e.logDir, 'c', '0.log');
  const ticks = async (file: string) => (await fs.readFile(file, 'utf8').catch(() => '')).split('\n').filter((l) => l.endsWith(' tick')).length;
  await waitFor('the first tick', async () => (await ticks(log)) > 0);
  await fs.rename(log, `${log}.1`);
  await fs.symlink(target, log);
  const err = await failure(e.berth.runtime.ReopenContainerLog({ container_id: id }));
  t.is(err.code, grpc.status.FAILED_PRECONDITION, err.details);
  t.regex(err.details, /is a symlink/);
  // Even signalled (berth refuses before it signals; kubelet-like tools may not), the monitor does not follow it.
  const status = await e.berth.runtime.ContainerStatus({ container_id: id, verbose: true });
  const monitorPid = JSON.parse(status.info.info ?? '{}').monitorPid as number | undefined;
  if (monitorPid) process.kill(monitorPid, 'SIGUSR1');
  const before = await ticks(`${log}.1`);
  await waitFor('more ticks in the file the monitor holds', async () => (await ticks(`${log}.1`)) > before + 3);
  t.is(await fs.readFile(target, 'utf8'), '', 'nothing was written through the symlink');
  t.true((await fs.lstat(log)).isSymbolicLink());
});
