import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { BerthError, describeExhausted, ErrorKind, errorMessage, exhaustedResource, invalidArgument } from '../errors.js';
import { Logger } from '../log.js';
import type { ProtoGrpcType } from '../gen/api.js';

// Loading the CRI proto and turning domain errors into gRPC statuses: the only place that knows both.

const here = path.dirname(fileURLToPath(import.meta.url));
export const PROTO_PATH = path.resolve(here, '../../../proto/api.proto');

export const loaderOptions: protoLoader.Options = { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true };

let loaded: ProtoGrpcType | undefined;

/** The CRI services, loaded once: the server and the list handlers' item encoders share one copy of the proto. */
export function loadCri(): ProtoGrpcType {
  loaded ??= grpc.loadPackageDefinition(protoLoader.loadSync(PROTO_PATH, loaderOptions)) as unknown as ProtoGrpcType;
  return loaded;
}

const codes: Record<ErrorKind, grpc.status> = {
  invalid_argument: grpc.status.INVALID_ARGUMENT,
  not_found: grpc.status.NOT_FOUND,
  already_exists: grpc.status.ALREADY_EXISTS,
  failed_precondition: grpc.status.FAILED_PRECONDITION,
  unavailable: grpc.status.UNAVAILABLE,
  unauthenticated: grpc.status.UNAUTHENTICATED,
  permission_denied: grpc.status.PERMISSION_DENIED,
  deadline_exceeded: grpc.status.DEADLINE_EXCEEDED,
  resource_exhausted: grpc.status.RESOURCE_EXHAUSTED,
  unimplemented: grpc.status.UNIMPLEMENTED,
  internal: grpc.status.INTERNAL,
};

export function toServiceError(err: unknown): Partial<grpc.ServiceError> {
  // A full disk or file table under an error a service did not classify is still the node's limit, not a bug in
  // berth nor a registry's fault: kubelet backs off on RESOURCE_EXHAUSTED and the operator sees what ran out.
  const exhausted = exhaustedResource(err);
  const unclassified = !(err instanceof BerthError) || err.kind === 'internal' || err.kind === 'unavailable';
  if (exhausted && unclassified) {
    const message = errorMessage(err);
    const what = describeExhausted(exhausted);
    const details = message.includes(what) ? message : `${message}: ${what}`;
    return { code: grpc.status.RESOURCE_EXHAUSTED, details };
  }
  if (err instanceof BerthError) return { code: codes[err.kind], details: err.message };
  return { code: grpc.status.INTERNAL, details: errorMessage(err) };
}

export type UnaryHandler<Req, Res> = (request: Req, call: grpc.ServerUnaryCall<Req, Res>) => Promise<Res>;

export interface RpcObserver {
  (rpc: string, seconds: number, code: grpc.status): void;
}

/** Wraps a handler: logs, measures, and maps errors. */
export function unary<Req, Res>(
  rpc: string,
  log: Logger,
  handler: UnaryHandler<Req, Res>,
  observe?: RpcObserver,
): grpc.handleUnaryCall<Req, Res> {
  return (call, callback) => {
    const started = process.hrtime.bigint();
    handler(call.request, call).then(
      (response) => {
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        observe?.(rpc, seconds, grpc.status.OK);
        log.debug('rpc', { rpc, ms: seconds * 1000 });
        callback(null, response);
      },
      (err: unknown) => {
        const seconds = Number(process.hrtime.bigint() - started) / 1e9;
        const status = toServiceError(err);
        observe?.(rpc, seconds, status.code ?? grpc.status.INTERNAL);
        const level = status.code === grpc.status.INTERNAL ? 'error' : 'info';
        log[level]('rpc failed', { rpc, code: grpc.status[status.code ?? 13], error: status.details, ms: seconds * 1000 });
        callback(status as grpc.ServiceError);
      },
    );
  };
}

/** One service's handler wrapper: every RPC of it logs to `log` and reports to `observe`. */
export function handlerFactory(log: Logger, observe?: RpcObserver) {
  return <Req, Res>(rpc: string, fn: (req: Req) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    unary<Req, Res>(rpc, log, (req) => fn(req), observe);
}

const idNames = { pod_sandbox_id: 'a pod sandbox id', container_id: 'a container id' } as const;

/** An id field proto3 leaves empty when the client omitted it: refused before any lookup, naming the field. */
export function requireId(id: string, field: keyof typeof idNames, rpc: string): string {
  if (!id) throw invalidArgument(`${field} is empty: ${rpc} needs ${idNames[field]}`);
  return id;
}

/** What an RPC that berth does not implement yet answers: UNIMPLEMENTED naming the RPC. */
export function unimplemented(service: string, rpc: string, why?: string): grpc.handleUnaryCall<unknown, unknown> {
  return (_call, callback) => {
    callback({ code: grpc.status.UNIMPLEMENTED, details: why ?? `${service}/${rpc} is not implemented by berth yet` } as grpc.ServiceError);
  };
}

/** The server-streaming counterpart of unimplemented: the stream ends at once with UNIMPLEMENTED naming the RPC. */
export function unimplementedStream(service: string, rpc: string): grpc.handleServerStreamingCall<unknown, unknown> {
  return (call) => {
    call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: `${service}/${rpc} is not implemented by berth yet` });
  };
}
