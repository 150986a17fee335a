import { promises as fs } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type { ImageServiceHandlers } from '../gen/runtime/v1/ImageService.js';
import type { RuntimeServiceHandlers } from '../gen/runtime/v1/RuntimeService.js';
import { loadCri } from './grpc.js';
import { serveConnection } from './authority.js';
import { encodedService } from './encoded.js';
import { withDirectStatsEncoding } from './stats-wire.js';

// kubelet sends up to 16 MiB (e.g. ListContainers on a busy node); match it both ways.
const MAX_MESSAGE = 16 * 1024 * 1024;
/** Leaves the socket 0660: read/write for root and its group, nothing for others. */
const SOCKET_UMASK = 0o117;

/** Whether a process accepts connections on the unix socket (a berth serving it). */
export function socketAnswers(socket: string): Promise<boolean> {
  return new Promise((resolve) => {
    const conn = net.connect(socket);
    conn.once('connect', () => {
      conn.destroy();
      resolve(true);
    });
    conn.once('error', () => resolve(false));
  });
}

export class SocketInUseError extends Error {}

/**
 * Refuses a socket another berth serves, and clears a stale one. Called before berth touches the node (bridges,
 * cgroups), so a second berth started by mistake changes nothing.
 */
export async function claimSocket(socket: string): Promise<void> {
  const dir = path.dirname(socket);
  // Only a directory berth creates is berth's to restrict (umask may have widened it): --socket /run/x.sock must
  // not make /run private.
  if (await fs.mkdir(dir, { recursive: true, mode: 0o700 })) await fs.chmod(dir, 0o700);
  const stale = await fs.lstat(socket).catch(() => undefined);
  if (stale) {
    if (!stale.isSocket()) throw new SocketInUseError(`${socket} exists and is not a socket`);
    if (await socketAnswers(socket)) throw new SocketInUseError(`another process already serves ${socket}`);
    await fs.rm(socket);
  }
}

/** Binds the CRI services on a unix socket (claimed first with claimSocket): the socket 0660 root. */
export async function serveCri(
  socket: string,
  runtime: RuntimeServiceHandlers,
  image: ImageServiceHandlers,
  onAcceptError: (err: NodeJS.ErrnoException, dropped: number) => void = () => undefined,
): Promise<CriServer> {
  const cri = loadCri();
  const server = new grpc.Server({
    'grpc.max_receive_message_length': MAX_MESSAGE,
    'grpc.max_send_message_length': MAX_MESSAGE,
    // berth serves no channelz service: its per-call and per-message bookkeeping (counters, Date.now() per
    // message) would be read by no one.
    'grpc.enable_channelz': 0,
  });
  server.addService(encodedService(withDirectStatsEncoding(cri.runtime.v1.RuntimeService.service)), runtime);
  server.addService(encodedService(cri.runtime.v1.ImageService.service), image);
  // berth accepts the connections itself and injects them, so each can pass the :authority filter first.
  const injector = server.createConnectionInjector(grpc.ServerCredentials.createInsecure());
  // A connection is grpc-js's only once its first request came (serveConnection); until then it is berth's to end
  // at shutdown, or a client that connected and never asked would hold the listener open.
  const waiting = new Set<net.Socket>();
  const listener = net.createServer((conn) => {
    waiting.add(conn);
    conn.once('close', () => waiting.delete(conn));
    serveConnection(conn, (served) => {
      waiting.delete(conn);
      injector.injectConnection(served);
    });
  });
  let reject0: (err: Error) => void = () => undefined;
  await new Promise<void>((resolve, reject) => {
    reject0 = reject;
    listener.once('error', reject);
    // The socket is born 0660 (0777 & ~0117): a chmod after listen would leave a moment in which anyone may
    // connect. Node binds a unix socket synchronously inside listen(), so the umask is changed for no other of
    // berth's JS; only a thread-pool file operation in flight at this instant could get it, and the mask clears
    // nothing but group-execute and other bits (the owner's, root's, stay).
    const previous = process.umask(SOCKET_UMASK);
    try {
      listener.listen(socket, () => resolve());
    } finally {
      process.umask(previous);
    }
  });
  listener.off('error', reject0);
  // At the open-files limit accept(2) fails with EMFILE: libuv drops that connection and Node emits 'error', which
  // without a listener would end berth and every pod's management with it. The client retries; berth serves
  // again as soon as descriptors free up. Reported at most every 5 s, with how many were dropped meanwhile.
  let dropped = 0;
  let lastReport = 0;
  listener.on('error', (err: NodeJS.ErrnoException) => {
    dropped++;
    if (Date.now() - lastReport < 5000) return;
    lastReport = Date.now();
    onAcceptError(err, dropped);
    dropped = 0;
  });
  return { server, listener, injector, waiting };
}

export interface CriServer {
  server: grpc.Server;
  listener: net.Server;
  injector: grpc.ConnectionInjector;
  /** Accepted connections not yet handed to grpc-js (no request yet). */
  waiting: Set<net.Socket>;
}

/** Stops accepting connections and resolves once every in-flight call has finished. */
export async function drain(cri: CriServer): Promise<void> {
  // listener.close() only stops accepting here: its callback waits for the connections tryShutdown ends.
  const closed = new Promise<void>((resolve) => cri.listener.close(() => resolve()));
  for (const conn of cri.waiting) conn.destroy();
  await new Promise<void>((resolve) => cri.server.tryShutdown(() => resolve()));
  await closed;
}

export function forceClose(cri: CriServer): void {
  cri.listener.close();
  for (const conn of cri.waiting) conn.destroy();
  cri.server.forceShutdown();
}
