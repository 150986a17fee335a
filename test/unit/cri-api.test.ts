import test from 'ava';
import protobuf from 'protobufjs';
import * as protoLoader from '@grpc/proto-loader';
import { EventEmitter } from 'node:events';
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { imagePathKind } from '../../src/container/image-files.js';
import * as grpc from '@grpc/grpc-js';
import { BerthError, invalidArgument } from '../../src/errors.js';
import { logger } from '../../src/log.js';
import { loaderOptions, PROTO_PATH } from '../../src/cri/grpc.js';
import { runtimeHandlers, RuntimeInfo } from '../../src/cri/runtime.js';
import { imageHandlers } from '../../src/cri/image.js';
import { containerConfigFromProto, stopSignalFromProto, stopSignalToProto } from '../../src/cri/translate.js';
import { pagedStream } from '../../src/cri/paging.js';
import { parseStopSignal, signalNumber } from '../../src/container/signals.js';
import type { ImageService } from '../../src/image/service.js';
import type { ContainerConfig__Output } from '../../src/gen/runtime/v1/ContainerConfig.js';

// proto/api.proto follows CRI 1.37 (cri-api v0.37): every RPC of it has a handler, and what changed on the wire since
// 1.26 still reads a 1.26 client's bytes the same.

const definition = protoLoader.loadSync(PROTO_PATH, loaderOptions);
const methodsOf = (service: string) => Object.keys(definition[`runtime.v1.${service}`] as object);

test('the proto declares the 43 RPCs of CRI 1.37, and berth registers a handler for each of them', (t) => {
  const runtime = methodsOf('RuntimeService');
  const image = methodsOf('ImageService');
  t.is(runtime.length + image.length, 43);
  const info = {} as RuntimeInfo;
  const runtimeServed = runtimeHandlers(info, logger(), {}) as unknown as Record<string, unknown>;
  const imageServed = imageHandlers({} as ImageService, logger()) as unknown as Record<string, unknown>;
  t.deepEqual(runtime.filter((rpc) => typeof runtimeServed[rpc] !== 'function'), []);
  t.deepEqual(image.filter((rpc) => typeof imageServed[rpc] !== 'function'), []);
  for (const rpc of ['StreamPodSandboxes', 'StreamContainers', 'StreamContainerStats', 'StreamPodSandboxStats', 'StreamPodSandboxMetrics']) {
    t.true((definition['runtime.v1.RuntimeService'] as Record<string, { responseStream: boolean }>)[rpc].responseStream, `${rpc} streams`);
  }
});

test('a 1.26 client\'s string env value reads as the same text through the 1.37 bytes field', (t) => {
  // KeyValue as Kubernetes 1.26 declared it: value was a string. Same wire type (length-delimited), so same bytes.
  const old = protobuf.Root.fromJSON({
    nested: { KeyValue: { fields: { key: { type: 'string', id: 1 }, value: { type: 'string', id: 2 } } } },
  }).lookupType('KeyValue');
  const wire = old.encode({ key: 'GREETING', value: 'grüß dich' }).finish();
  const current = new protobuf.Root().loadSync(PROTO_PATH, { keepCase: true }).lookupType('runtime.v1.KeyValue');
  const decoded = current.toObject(current.decode(wire)) as { key: string; value: Uint8Array };
  const config = containerConfigFromProto(container([{ key: decoded.key, value: Buffer.from(decoded.value) }]));
  t.deepEqual(config.envs, [{ key: 'GREETING', value: 'grüß dich' }]);
});

function container(envs: { key: string; value: Buffer }[]): ContainerConfig__Output {
  return {
    metadata: { name: 'c', attempt: 0 },
    image: { image: 'img' },
    command: [], args: [], working_dir: '', envs, mounts: [], devices: [], CDI_devices: [], labels: {}, annotations: {},
    log_path: '', stdin: false, stdin_once: false, tty: false,
  } as unknown as ContainerConfig__Output;
}

test('an env value that is not UTF-8 or holds a NUL is INVALID_ARGUMENT naming config.envs[i].value', (t) => {
  const ok = { key: 'A', value: Buffer.from('1') };
  for (const [bad, words] of [[Buffer.from([0x66, 0xff, 0x6f]), 'is not UTF-8'], [Buffer.from('a\0b'), 'NUL']] as const) {
    const err = t.throws(() => containerConfigFromProto(container([ok, { key: 'B', value: bad }])), { instanceOf: BerthError }) as BerthError;
    t.is(err.kind, 'invalid_argument');
    t.true(err.message.startsWith('config.envs[1].value'), err.message);
    t.true(err.message.includes(words), err.message);
  }
});

// ---- stop_signal ----

test('stop signals: image STOPSIGNAL forms and CRI enum names map to one canonical name and the Linux number', (t) => {
  t.is(parseStopSignal('quit'), 'SIGQUIT');
  t.is(parseStopSignal('3'), 'SIGQUIT');
  t.is(parseStopSignal('SIGCLD'), 'SIGCHLD');
  t.is(parseStopSignal('RTMIN+2'), 'SIGRTMIN+2');
  t.is(parseStopSignal('50'), 'SIGRTMAX-14', 'signal 50 is RTMAX-14 as glibc and Go count');
  t.is(parseStopSignal('SIGRTMIN+40'), undefined);
  t.is(parseStopSignal('SIGBOGUS'), undefined);
  t.is(parseStopSignal('99'), undefined);
  t.is(signalNumber('SIGRTMIN+3'), 37);
  t.is(signalNumber('SIGRTMAX'), 64);
  t.is(signalNumber('SIGTERM'), 15);
  t.is(stopSignalFromProto('SIGNAL_RUNTIME_DEFAULT'), undefined);
  t.is(stopSignalFromProto('SIGNAL_SIGRTMINPLUS3'), 'SIGRTMIN+3');
  t.is(stopSignalFromProto('SIGNAL_SIGRTMAXMINUS2'), 'SIGRTMAX-2');
  const err = t.throws(() => stopSignalFromProto(99), { instanceOf: BerthError }) as BerthError;
  t.is(err.kind, 'invalid_argument');
  t.regex(err.message, /^config\.stop_signal 99/);
});

test('every Signal of the proto but RUNTIME_DEFAULT is a Linux signal, and ContainerStatus names it back in the same enum', (t) => {
  const root = new protobuf.Root().loadSync(PROTO_PATH, { keepCase: true });
  const names = Object.keys(root.lookupEnum('runtime.v1.Signal').values).filter((n) => n !== 'SIGNAL_RUNTIME_DEFAULT');
  t.is(names.length, 65);
  const numbers = new Set<number>();
  for (const name of names) {
    const canonical = stopSignalFromProto(name)!;
    const n = signalNumber(canonical);
    t.truthy(n, name);
    numbers.add(n!);
    // Aliases (SIGCLD, SIGIOT, SIGPOLL) come back as the name Node uses for the same number.
    t.is(signalNumber(stopSignalFromProto(stopSignalToProto(canonical))!), n, name);
    t.true(names.includes(stopSignalToProto(canonical)), `${name} -> ${canonical} -> ${stopSignalToProto(canonical)}`);
  }
  t.is(numbers.size, 62, '31 standard signals (less 32/33) and the 31 real-time ones');
});

// ---- mounts: mount_options and image volumes ----

const mount = (over: Record<string, unknown>) => ({
  container_path: '/data', host_path: '/srv', readonly: false, selinux_relabel: false, propagation: 'PROPAGATION_PRIVATE',
  uidMappings: [], gidMappings: [], recursive_read_only: false, image: null, image_sub_path: '', mount_options: [], ...over,
});
const withMounts = (mounts: unknown[]) => ({ ...container([]), mounts }) as unknown as ContainerConfig__Output;

function refusedNaming(t: import('ava').ExecutionContext, mounts: unknown[], field: RegExp): void {
  const err = t.throws(() => containerConfigFromProto(withMounts(mounts)), { instanceOf: BerthError }) as BerthError;
  t.is(err.kind, 'invalid_argument');
  t.regex(err.message, field);
}

test('mount_options: restricting flags reach the bind; one that would lift a host restriction is refused naming it', (t) => {
  const [m] = containerConfigFromProto(withMounts([mount({ mount_options: ['noexec', 'nosuid', 'noexec'] })])).mounts;
  t.deepEqual(m.mountOptions, ['noexec', 'nosuid']);
  for (const bad of ['suid', 'exec', 'dev', 'rw', 'remount', 'bind', 'mode=777']) {
    refusedNaming(t, [mount({}), mount({ mount_options: ['nodev', bad] })], /^config\.mounts\[1\]\.mount_options\[1\]/);
  }
});

test('image volumes: read-only whatever was asked, sub path normalised; an absolute or ".." sub path is refused naming image_sub_path', (t) => {
  const [m] = containerConfigFromProto(withMounts([mount({ host_path: '', image: { image: 'sha256:abc' }, image_sub_path: 'usr/./share/' })])).mounts;
  t.deepEqual(m.image, { ref: 'sha256:abc', subPath: 'usr/share' });
  t.true(m.readonly);
  t.is(m.hostPath, '');
  t.deepEqual(containerConfigFromProto(withMounts([mount({ host_path: '', image: { image: 'sha256:abc' } })])).mounts[0].image, { ref: 'sha256:abc', subPath: '.' });
  for (const bad of ['../etc', 'a/../../b', '/etc', 'a/..']) {
    refusedNaming(t, [mount({ host_path: '', image: { image: 'sha256:abc' }, image_sub_path: bad })], /^config\.mounts\[0\]\.image_sub_path/);
  }
  refusedNaming(t, [mount({ image_sub_path: 'x' })], /^config\.mounts\[0\]\.image_sub_path is set but config\.mounts\[0\]\.image is empty/);
  refusedNaming(t, [mount({ image: { image: 'sha256:abc' } })], /^config\.mounts\[0\]: host_path and image are both set/);
});

// ---- paging ----

class FakeCall extends EventEmitter {
  pages: { items: number[] }[] = [];
  ended = false;
  error?: { code: number; details: string };
  cancelled = false;
  destroyed = false;
  constructor(readonly request: unknown, private readonly acceptBeforeDrain = Infinity) {
    super();
    this.on('error', (e) => (this.error = e));
  }
  write(page: { items: number[] }): boolean {
    this.pages.push(page);
    if (this.pages.length % this.acceptBeforeDrain === 0) {
      setImmediate(() => this.emit('drain'));
      return false;
    }
    return true;
  }
  end(): void {
    this.ended = true;
    this.emit('finish');
  }
}

async function runStream(items: number[] | Error, pageSize: number, acceptBeforeDrain = Infinity): Promise<FakeCall> {
  const handler = pagedStream<unknown, number, { items: number[] }>('StreamTest', logger(), () => {
    if (items instanceof Error) throw items;
    return items;
  }, (page) => ({ items: page }), undefined, pageSize);
  const call = new FakeCall({}, acceptBeforeDrain);
  handler(call as unknown as Parameters<typeof handler>[0]);
  await new Promise<void>((resolve) => {
    call.once('finish', resolve);
    call.once('error', () => resolve());
  });
  return call;
}

test('paged streams: every item once, in order, in pages of at most the page size, each non-empty; then OK', async (t) => {
  const items = Array.from({ length: 1000 }, (_, i) => i);
  const call = await runStream(items, 256, 2);
  t.deepEqual(call.pages.map((p) => p.items.length), [256, 256, 256, 232]);
  t.deepEqual(call.pages.flatMap((p) => p.items), items);
  t.true(call.ended);
  const empty = await runStream([], 256);
  t.deepEqual(empty.pages, [], 'an empty result is a stream with no message');
  t.true(empty.ended);
});

test('paged streams: the list\'s error ends the stream with its status, not a partial page', async (t) => {
  const call = await runStream(invalidArgument('filter.state.state 9 is not a container state'), 10);
  t.deepEqual(call.pages, []);
  t.false(call.ended);
  t.is(call.error?.code, grpc.status.INVALID_ARGUMENT);
  t.regex(call.error?.details ?? '', /^filter\.state\.state/);
});

// ---- image volume sub paths, resolved in the merged layers ----

test('image sub paths resolve as overlayfs shows the image: whiteouts and opaque directories hide, symlinks stay inside', async (t) => {
  const root = await mkdtemp(path.join(os.tmpdir(), 'berth-imgpath-'));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const [upper, lower] = [path.join(root, 'upper'), path.join(root, 'lower')];
  for (const d of ['data', 'etc', 'opaque']) await mkdir(path.join(lower, d), { recursive: true });
  await writeFile(path.join(lower, 'data/gone'), 'x');
  await writeFile(path.join(lower, 'data/kept'), 'x');
  await writeFile(path.join(lower, 'opaque/hidden'), 'x');
  await writeFile(path.join(lower, 'etc/marker'), 'x');
  await mkdir(path.join(upper, 'data'), { recursive: true });
  await mkdir(path.join(upper, 'opaque'), { recursive: true });
  await writeFile(path.join(upper, 'opaque/shown'), 'x');
  execFileSync('mknod', [path.join(upper, 'data/gone'), 'c', '0', '0']);
  await symlink('../../../../etc', path.join(upper, 'escape'));
  await symlink('/etc/marker', path.join(upper, 'data/abs'));
  await symlink('loop2', path.join(upper, 'loop1'));
  await symlink('loop1', path.join(upper, 'loop2'));
  const layers = [upper, lower];
  const isOpaque = async (p: string) => p === path.join(upper, 'opaque');
  const kind = (p: string) => imagePathKind(layers, p, isOpaque);
  t.is(await kind('data'), 'directory');
  t.is(await kind('data/kept'), 'other');
  t.is(await kind('data/gone'), undefined, 'a whiteout above hides the file');
  t.is(await kind('opaque/shown'), 'other');
  t.is(await kind('opaque/hidden'), undefined, 'an opaque directory above hides the lower one\'s entries');
  t.is(await kind('escape'), 'directory', 'a symlink climbing out stops at the image root: /etc');
  t.is(await kind('escape/marker'), 'other');
  t.is(await kind('data/abs'), 'other', 'an absolute target is the image\'s path');
  t.is(await kind('data/kept/more'), undefined, 'a file is no directory');
  t.is(await kind('loop1'), undefined, 'a symlink loop ends');
  t.is(await kind('nothing'), undefined);
});
