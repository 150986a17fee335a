import * as grpc from '@grpc/grpc-js';
import protobuf from 'protobufjs';
import { PROTO_PATH } from './grpc.js';

// The stats responses are the largest and most frequent messages berth sends (kubelet's summary API asks every
// 10 s; with 100 pods a ListPodSandboxStats is ~80 KB of ~60 fields an item). proto-loader's serializer first
// turns the handler's plain object into protobufjs message instances (fromObject: a class instance per message,
// a Long per 64-bit field), then encodes those; with 100 pods that conversion was half the CPU of a stats list
// and most of its garbage. The stats handlers already build objects of the generated types, whose field names and
// value types protobufjs's encoder takes as they are (int64 as a decimal string or a number, absent fields
// undefined), so these methods encode them directly. Requests are decoded as before.

/** The RuntimeService methods whose responses are stats (the List RPCs' streaming twins send the same items). */
export const DIRECT_ENCODED_METHODS = [
  'ContainerStats', 'ListContainerStats', 'StreamContainerStats', 'PodSandboxStats', 'ListPodSandboxStats', 'StreamPodSandboxStats',
] as const;

let root: protobuf.Root | undefined;

/** The response encoder of a RuntimeService method, for plain objects of its generated type. */
export function directResponseEncoder(method: (typeof DIRECT_ENCODED_METHODS)[number]): (value: object) => Buffer {
  if (!root) {
    root = new protobuf.Root().loadSync(PROTO_PATH, { keepCase: true });
    root.resolveAll();
  }
  const type = root.lookupService('runtime.v1.RuntimeService').methods[method].resolvedResponseType!;
  return (value) => {
    const bytes = type.encode(value).finish();
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

/** The RuntimeService definition with the stats methods' responses encoded directly. */
export function withDirectStatsEncoding(service: grpc.ServiceDefinition): grpc.ServiceDefinition {
  const out: Record<string, grpc.MethodDefinition<object, object>> = { ...service };
  for (const name of DIRECT_ENCODED_METHODS) {
    if (service[name]) out[name] = { ...service[name], responseSerialize: directResponseEncoder(name) };
  }
  return out;
}
