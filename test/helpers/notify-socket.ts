import { Buffer } from 'node:buffer';
import koffi from 'koffi';
import { errnoError, fn } from '../../src/kernel/libc.js';
import { unixAddress } from '../../src/kernel/sd-notify.js';

// systemd's side of sd_notify for tests: a bound unix datagram socket whose messages are read on koffi's worker
// thread (a blocking recv with SO_RCVTIMEO, so a message that never comes fails the test instead of hanging it).

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_RCVTIMEO = 20;

export interface NotifySocket {
  /** The next datagram, as text; rejects after the receive timeout. */
  receive(): Promise<string>;
  close(): void;
}

export function bindNotifySocket(socket: string, timeoutSeconds = 90): NotifySocket {
  const fd = fn('socket', 'int socket(int domain, int type, int protocol)')(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw errnoError(koffi.errno(), 'socket', socket);
  const timeval = Buffer.alloc(16);
  timeval.writeBigInt64LE(BigInt(timeoutSeconds), 0);
  const setsockopt = fn('setsockopt', 'int setsockopt(int fd, int level, int name, const void *value, uint32_t len)');
  const bind = fn('bind', 'int bind(int fd, const void *addr, uint32_t len)');
  const close = fn('close', 'int close(int fd)');
  const address = unixAddress(socket);
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, timeval, timeval.length) < 0 || bind(fd, address, address.length) < 0) {
    const err = errnoError(koffi.errno(), 'bind', socket);
    close(fd);
    throw err;
  }
  const recv = fn('recv', 'intptr_t recv(int fd, _Out_ uint8_t *buf, size_t len, int flags)');
  return {
    receive: () =>
      new Promise<string>((resolve, reject) => {
        const buf = Buffer.alloc(4096);
        recv.async(fd, buf, buf.length, 0, (err: Error | null, n: number | bigint) => {
          if (err) return reject(err);
          if (Number(n) < 0) return reject(new Error(`recv on ${socket} failed (timed out after ${timeoutSeconds}s?)`));
          resolve(buf.subarray(0, Number(n)).toString());
        });
      }),
    // shutdown first: it wakes a recv still waiting on the worker thread, which close alone would not.
    close: () => {
      fn('shutdown', 'int shutdown(int fd, int how)')(fd, 2);
      close(fd);
    },
  };
}
