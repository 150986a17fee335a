import koffi from 'koffi';
import { BerthError } from '../errors.js';
import { errnoError } from '../kernel/libc.js';

// Creates an ifb device, up, in berth's own (the host's) network namespace with one rtnetlink request, in-process:
// the pod-start path of a pod with an egress limit spawns only its `tc -batch`. Deletion goes through `ip link del`
// (links.ts) off the request thread, as a link delete waits for RCU.

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOCK_CLOEXEC = 0o2000000;
const NETLINK_ROUTE = 0;
const RTM_NEWLINK = 16;
const NLMSG_ERROR = 2;
const NLM_F_REQUEST = 0x1;
const NLM_F_ACK = 0x4;
const NLM_F_EXCL = 0x200;
const NLM_F_CREATE = 0x400;
const IFLA_IFNAME = 3;
const IFLA_LINKINFO = 18;
const IFLA_INFO_KIND = 1;
const IFF_UP = 0x1;

type Fn = (...args: unknown[]) => number;
let calls: { socket: Fn; send: Fn; recv: Fn; close: Fn } | undefined;

function libc(): NonNullable<typeof calls> {
  if (!calls) {
    const lib = koffi.load('libc.so.6');
    calls = {
      socket: lib.func('int socket(int domain, int type, int protocol)') as Fn,
      send: lib.func('long send(int fd, const uint8_t *buf, size_t len, int flags)') as Fn,
      recv: lib.func('long recv(int fd, _Out_ uint8_t *buf, size_t len, int flags)') as Fn,
      close: lib.func('int close(int fd)') as Fn,
    };
  }
  return calls;
}

const align4 = (n: number) => (n + 3) & ~3;

function attr(type: number, payload: Buffer): Buffer {
  const len = 4 + payload.length;
  const buf = Buffer.alloc(align4(len));
  buf.writeUInt16LE(len, 0);
  buf.writeUInt16LE(type, 2);
  payload.copy(buf, 4);
  return buf;
}

const cString = (s: string) => Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]);

/** The RTM_NEWLINK request for an ifb named `name`, created up; exported for its unit test. */
export function newIfbRequest(name: string, seq: number): Buffer {
  const ifinfo = Buffer.alloc(16);
  ifinfo.writeUInt32LE(IFF_UP, 8);
  ifinfo.writeUInt32LE(IFF_UP, 12);
  const body = Buffer.concat([ifinfo, attr(IFLA_IFNAME, cString(name)), attr(IFLA_LINKINFO, attr(IFLA_INFO_KIND, cString('ifb')))]);
  const header = Buffer.alloc(16);
  header.writeUInt32LE(16 + body.length, 0);
  header.writeUInt16LE(RTM_NEWLINK, 4);
  header.writeUInt16LE(NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 6);
  header.writeUInt32LE(seq, 8);
  return Buffer.concat([header, body]);
}

let seq = 1;

/** Makes the ifb `name`, up. EEXIST (one left from a crash) is the caller's to handle: err.code === 'EEXIST'. */
export function createIfb(name: string): void {
  if (Buffer.byteLength(name) > 15) throw new BerthError('invalid_argument', `interface name ${name} is longer than 15 bytes`);
  const c = libc();
  const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) throw errnoError(koffi.errno(), 'socket(AF_NETLINK)', name);
  try {
    const req = newIfbRequest(name, seq++);
    if (c.send(fd, req, req.length, 0) !== req.length) throw errnoError(koffi.errno(), 'send(RTM_NEWLINK)', name);
    const answer = Buffer.alloc(4096);
    // The kernel answers a request on this socket before send returns to it: the ack is already queued.
    const n = Number(c.recv(fd, answer, answer.length, 0));
    if (n < 0) throw errnoError(koffi.errno(), 'recv(RTM_NEWLINK)', name);
    if (n < 20 || answer.readUInt16LE(4) !== NLMSG_ERROR) throw new BerthError('internal', `create ifb ${name}: unexpected netlink answer`);
    const error = answer.readInt32LE(16);
    if (error !== 0) throw errnoError(-error, 'RTM_NEWLINK ifb', name);
  } finally {
    c.close(fd);
  }
}
