import { readFileSync } from 'node:fs';
import os from 'node:os';
import koffi from 'koffi';
import { BerthError } from '../errors.js';

// An ioctl on the host's network devices, in-process (no spawn on the pod-start path): attach a port to a bridge
// (SIOCBRADDIF). It acts in berth's own network namespace (the host's): nothing here enters another namespace.

const AF_INET = 2;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
const SIOCBRADDIF = 0x89a2;
/** struct ifreq: char ifr_name[16] + a 24-byte union. */
const IFREQ_SIZE = 40;

type Fn = (...args: unknown[]) => number;
let calls: { socket: Fn; ioctl: Fn } | undefined;
let sock = -1;

function libc(): { socket: Fn; ioctl: Fn } {
  if (!calls) {
    const lib = koffi.load('libc.so.6');
    calls = {
      socket: lib.func('int socket(int domain, int type, int protocol)') as Fn,
      ioctl: lib.func('int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)') as Fn,
    };
  }
  return calls;
}

function control(): number {
  if (sock < 0) {
    const fd = libc().socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new BerthError('internal', `socket(AF_INET) failed: errno ${koffi.errno()}`);
    sock = fd;
  }
  return sock;
}

function ifreq(name: string): Buffer {
  const buf = Buffer.alloc(IFREQ_SIZE);
  if (Buffer.byteLength(name) > 15) throw new BerthError('invalid_argument', `interface name ${name} is longer than 15 bytes`);
  buf.write(name, 0, 'utf8');
  return buf;
}

const EBUSY = 16;

/** 0, or the errno of a failed call. */
function ioctl(request: number, req: Buffer): number {
  return libc().ioctl(control(), request, req) < 0 ? koffi.errno() : 0;
}

function fail(what: string, errno: number): BerthError {
  return new BerthError('internal', `${what}: ${errnoName(errno)}`);
}

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(os.constants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}

export function ifindexOf(name: string): number {
  return parseInt(readFileSync(`/sys/class/net/${name}/ifindex`, 'utf8').trim(), 10);
}

/** Attaches `port` to `bridge`; attaching it again is not an error. */
export function bridgeAddPort(bridge: string, port: string, portIndex: number): void {
  const req = ifreq(bridge);
  req.writeInt32LE(portIndex, 16);
  const errno = ioctl(SIOCBRADDIF, req);
  // EBUSY: already a port of a bridge (this one, on a retry).
  if (errno !== 0 && errno !== EBUSY) throw fail(`attach ${port} to bridge ${bridge} (SIOCBRADDIF)`, errno);
}
