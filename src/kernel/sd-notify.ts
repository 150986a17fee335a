import { Buffer } from 'node:buffer';
import koffi from 'koffi';
import { unavailable } from '../errors.js';
import { errnoError, fn } from './libc.js';

// systemd's readiness protocol (sd_notify(3)): one datagram of "KEY=VALUE" lines to the unix socket named by
// NOTIFY_SOCKET. Node cannot send on a unix datagram socket, so this calls socket(2)/sendto(2) through koffi, from
// berth's own pid: with NotifyAccess=main systemd ignores a message from any other process (systemd-notify).

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const MSG_NOSIGNAL = 0x4000;
const SUN_PATH_MAX = 108;

/** Where systemd listens, or undefined when berth does not run under a Type=notify unit. */
export interface Notifier {
  /** Sends one message (e.g. "READY=1"); throws an unavailable BerthError naming the socket when it cannot. */
  notify(message: string): void;
  readonly socket: string;
}

/**
 * Reads NOTIFY_SOCKET and removes it from berth's environment, as sd_notify's unset_environment does, so that no
 * process berth starts (CNI plugins, iptables, containers' helpers) can speak for berth to systemd.
 */
export function notifierFromEnv(env: NodeJS.ProcessEnv = process.env): Notifier | undefined {
  const socket = env.NOTIFY_SOCKET;
  delete env.NOTIFY_SOCKET;
  if (!socket) return undefined;
  return { socket, notify: (message) => sdNotify(socket, message) };
}

/** The sockaddr_un for a path, or for an abstract name written "@name". */
export function unixAddress(socket: string): Buffer {
  if (!socket.startsWith('@') && !socket.startsWith('/')) throw unavailable(`NOTIFY_SOCKET "${socket}": neither an absolute path nor an abstract name (@name)`);
  const name = Buffer.from(socket.startsWith('@') ? `\0${socket.slice(1)}` : socket);
  if (name.length >= SUN_PATH_MAX) throw unavailable(`NOTIFY_SOCKET "${socket}": longer than a unix socket address (${SUN_PATH_MAX - 1} bytes)`);
  const address = Buffer.alloc(2 + name.length);
  address.writeUInt16LE(AF_UNIX, 0);
  name.copy(address, 2);
  return address;
}

/**
 * One non-blocking datagram: a systemd that does not read (its queue full) gets EAGAIN at once instead of holding
 * berth, so a notification never waits. Throws an unavailable BerthError naming the socket and the errno.
 */
export function sdNotify(socket: string, message: string): void {
  const address = unixAddress(socket);
  const socketFn = fn('socket', 'int socket(int domain, int type, int protocol)');
  const sendto = fn('sendto', 'intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)');
  const close = fn('close', 'int close(int fd)');
  const fd = socketFn(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw unavailable(`sd_notify to ${socket}: ${errnoError(koffi.errno(), 'socket', socket).message}`);
  try {
    const payload = Buffer.from(message);
    const sent = Number(sendto(fd, payload, payload.length, MSG_NOSIGNAL, address, address.length));
    if (sent < 0) throw unavailable(`sd_notify ${JSON.stringify(message)} to ${socket}: ${errnoError(koffi.errno(), 'sendto', socket).message}`);
  } finally {
    close(fd);
  }
}

/** MONOTONIC_USEC for RELOADING=1: libuv's hrtime is CLOCK_MONOTONIC, the clock systemd compares with. */
export function monotonicUsec(): string {
  return String(process.hrtime.bigint() / 1000n);
}
