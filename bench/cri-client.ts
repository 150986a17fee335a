// Promise-returning CRI clients for any endpoint, so berth and another runtime are driven by the same code.

import * as grpc from '@grpc/grpc-js';
import { loadCri } from '../src/cri/grpc.js';
import type { ImageServiceClient } from '../src/gen/runtime/v1/ImageService.js';
import type { RuntimeServiceClient } from '../src/gen/runtime/v1/RuntimeService.js';

type Unary<C> = {
  [K in keyof C as K extends string ? (K extends Capitalize<K> ? K : never) : never]: C[K] extends (
    arg: infer A,
    callback: grpc.requestCallback<infer R>,
  ) => grpc.ClientUnaryCall
    ? (arg: A) => Promise<R>
    : never;
};

export type RuntimeApi = Unary<RuntimeServiceClient>;
export type ImageApi = Unary<ImageServiceClient>;

export interface CriClient {
  endpoint: string;
  runtime: RuntimeApi;
  images: ImageApi;
  close(): void;
}

/** A failed RPC, named, with its gRPC status spelled out. */
export class RpcError extends Error {
  constructor(
    readonly rpc: string,
    readonly endpoint: string,
    readonly code: number | undefined,
    readonly details: string,
  ) {
    super(`${rpc} on ${endpoint} failed: ${code !== undefined ? `${grpc.status[code] ?? 'code'} (${code})` : 'error'}: ${details}`);
    this.name = 'RpcError';
  }
}

function wrap<C extends grpc.Client>(client: C, endpoint: string, deadlineMs: number): Unary<C> {
  return new Proxy({} as Unary<C>, {
    get(_target, rpc: string) {
      return (arg: unknown) =>
        new Promise((resolve, reject) => {
          const method = (client as unknown as Record<string, Function>)[rpc];
          if (typeof method !== 'function') return reject(new Error(`no RPC ${rpc}`));
          const options: grpc.CallOptions = { deadline: Date.now() + deadlineMs };
          method.call(client, arg, new grpc.Metadata(), options, (err: grpc.ServiceError | null, res: unknown) =>
            err ? reject(new RpcError(rpc, endpoint, err.code, err.details || err.message)) : resolve(res),
          );
        });
    },
  });
}

/** endpoint: 'unix:///path/to.sock' (or any gRPC target). Every call gets a deadline of deadlineMs. */
export function criClient(endpoint: string, deadlineMs = 120_000): CriClient {
  const cri = loadCri();
  const creds = grpc.credentials.createInsecure();
  const rawRuntime = new cri.runtime.v1.RuntimeService(endpoint, creds) as unknown as RuntimeServiceClient;
  const rawImages = new cri.runtime.v1.ImageService(endpoint, creds) as unknown as ImageServiceClient;
  return {
    endpoint,
    runtime: wrap(rawRuntime, endpoint, deadlineMs),
    images: wrap(rawImages, endpoint, deadlineMs),
    close() {
      rawRuntime.close();
      rawImages.close();
    },
  };
}
