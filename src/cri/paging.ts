import * as grpc from '@grpc/grpc-js';
import { Logger } from '../log.js';
import { RpcObserver, toServiceError } from './grpc.js';

// The server-streaming list RPCs of CRI 1.37 (StreamPodSandboxes, StreamContainers, StreamImages and the three stats
// ones): the same items as the List RPC, cut into pages so that a node with thousands of pods never meets the
// gRPC message size limit. What CRI asks of them, and what this helper guarantees:
// - every page holds at least one item (an empty result is a stream that ends at once, with no message);
// - each item is in exactly one page, in the List RPC's order;
// - the stream ends with OK after the last page, or with the error status the List RPC would have answered;
// - a client that goes away stops the paging (no further pages are built or written).
// Pages respect the transport's flow control: the next is written only once the previous one was taken.

/** Items per page: a ContainerStats is < 2 KiB and a PodSandbox < 4 KiB with kubelet's labels, so 256 stay far below 16 MiB. */
export const DEFAULT_PAGE_SIZE = 256;

/**
 * A server-streaming handler that answers with `list(request)` in pages of at most `pageSize` items, each page
 * wrapped by `page` into the RPC's response message. The stats helper (StreamContainerStats, StreamPodSandboxStats,
 * StreamPodSandboxMetrics) uses it with its own list function, exactly as the three list RPCs here do.
 */
export function pagedStream<Req, Item, Res>(
  rpc: string,
  log: Logger,
  list: (request: Req) => Promise<readonly Item[]> | readonly Item[],
  page: (items: Item[]) => Res,
  observe?: RpcObserver,
  pageSize = DEFAULT_PAGE_SIZE,
): grpc.handleServerStreamingCall<Req, Res> {
  return (call) => {
    const started = process.hrtime.bigint();
    const finish = (code: grpc.status, details?: string) => {
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      observe?.(rpc, seconds, code);
      if (code === grpc.status.OK) log.debug('rpc', { rpc, ms: seconds * 1000 });
      else log[code === grpc.status.INTERNAL ? 'error' : 'info']('rpc failed', { rpc, code: grpc.status[code], error: details, ms: seconds * 1000 });
    };
    const run = async () => {
      const items = await list(call.request);
      for (let from = 0; from < items.length; from += pageSize) {
        if (call.cancelled || call.destroyed) return grpc.status.CANCELLED;
        const more = call.write(page(items.slice(from, from + pageSize)));
        if (!more) await new Promise<void>((resolve) => {
          const done = () => {
            call.off('drain', done);
            call.off('close', done);
            resolve();
          };
          call.on('drain', done);
          call.on('close', done);
        });
      }
      return grpc.status.OK;
    };
    run().then(
      (code) => {
        finish(code);
        if (code === grpc.status.OK) call.end();
      },
      (err: unknown) => {
        const status = toServiceError(err);
        finish(status.code ?? grpc.status.INTERNAL, status.details);
        call.emit('error', status);
      },
    );
  };
}
