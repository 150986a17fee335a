import test from 'ava';
import protobuf from 'protobufjs';
import * as protoLoader from '@grpc/proto-loader';
import { BerthError } from '../../src/errors.js';
import { logger } from '../../src/log.js';
import { loaderOptions, PROTO_PATH } from '../../src/cri/grpc.js';
import { runtimeHandlers, RuntimeInfo } from '../../src/cri/runtime.js';
import { imageHandlers } from '../../src/cri/image.js';
import { containerConfigFromProto } from '../../src/cri/translate.js';
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
