import fs from 'node:fs/promises';
import os from 'node:os';
import koffi from 'koffi';
import { BerthError } from '../errors.js';
import { errnoError, fn } from '../kernel/libc.js';
import { IFB_PATTERN } from './bandwidth.js';

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
const IFLA_IFALIAS = 20;
const IFF_UP = 0x1;

const libc = () => ({
  socket: fn('socket', 'int socket(int domain, int type, int protocol)'),
  send: fn('send', 'long send(int fd, const uint8_t *buf, size_t len, int flags)'),
  recv: fn('recv', 'long recv(int fd, _Out_ uint8_t *buf, size_t len, int flags)'),
  close: fn('close', 'int close(int fd)'),
});

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

function linkRequest(flags: number, seq: number, attrs: Buffer[], up: boolean): Buffer {
  const ifinfo = Buffer.alloc(16);
  if (up) {
    ifinfo.writeUInt32LE(IFF_UP, 8);
    ifinfo.writeUInt32LE(IFF_UP, 12);
  }
  const body = Buffer.concat([ifinfo, ...attrs]);
  const header = Buffer.alloc(16);
  header.writeUInt32LE(16 + body.length, 0);
  header.writeUInt16LE(RTM_NEWLINK, 4);
  header.writeUInt16LE(NLM_F_REQUEST | NLM_F_ACK | flags, 6);
  header.writeUInt32LE(seq, 8);
  return Buffer.concat([header, body]);
}

/** The RTM_NEWLINK request for an ifb named `name`, created up; exported for its unit test. */
export function newIfbRequest(name: string, seq: number): Buffer {
  return linkRequest(NLM_F_CREATE | NLM_F_EXCL, seq, [attr(IFLA_IFNAME, cString(name)), attr(IFLA_LINKINFO, attr(IFLA_INFO_KIND, cString('ifb')))], true);
}

/** The request setting the alias of the existing link `name` (the kernel applies an alias on change, not on create). */
export function ifbAliasRequest(name: string, seq: number, owner: string): Buffer {
  return linkRequest(0, seq, [attr(IFLA_IFNAME, cString(name)), attr(IFLA_IFALIAS, Buffer.from(owner, 'utf8'))], false);
}

let seq = 1;

/**
 * Makes the ifb `name`, up, with `owner` as its alias: ifb devices live in the host's namespace, so the alias is
 * what tells this berth's (one bridge, one root) from another's. EEXIST (one left from a crash) is the caller's to
 * handle: err.code === 'EEXIST'.
 */
export function createIfb(name: string, owner: string): void {
  if (Buffer.byteLength(name) > 15) throw new BerthError('invalid_argument', `interface name ${name} is longer than 15 bytes`);
  const c = libc();
  const fd = c.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) throw errnoError(koffi.errno(), 'socket(AF_NETLINK)', name);
  try {
    const ask = (req: Buffer, what: string): number => {
      if (c.send(fd, req, req.length, 0) !== req.length) throw errnoError(koffi.errno(), `send(${what})`, name);
      const answer = Buffer.alloc(4096);
      // The kernel answers a request on this socket before send returns to it: the ack is already queued.
      const n = Number(c.recv(fd, answer, answer.length, 0));
      if (n < 0) throw errnoError(koffi.errno(), `recv(${what})`, name);
      if (n < 20 || answer.readUInt16LE(4) !== NLMSG_ERROR) throw new BerthError('internal', `${what} ${name}: unexpected netlink answer`);
      return -answer.readInt32LE(16);
    };
    const created = ask(newIfbRequest(name, seq++), 'RTM_NEWLINK ifb');
    if (created !== 0 && created !== os.constants.errno.EEXIST) throw errnoError(created, 'RTM_NEWLINK ifb', name);
    // One left by a crash of this berth is its own again; its alias is written anew either way.
    const aliased = ask(ifbAliasRequest(name, seq++, owner), 'RTM_NEWLINK ifalias');
    if (aliased !== 0) throw errnoError(aliased, 'RTM_NEWLINK ifalias', name);
    if (created !== 0) throw errnoError(created, 'RTM_NEWLINK ifb', name);
  } finally {
    c.close(fd);
  }
}

/** The alias berth gives the ifb devices of the embedded network on `bridge`. */
export function ifbOwnerTag(bridge: string): string {
  return `berth bridge=${bridge}`;
}

/** The host's ifb devices named like berth's whose alias says they are `owner`'s; another berth's are not listed. */
export async function ownedIfbs(owner: string): Promise<string[]> {
  const names = (await fs.readdir('/sys/class/net').catch(() => [] as string[])).filter((n) => IFB_PATTERN.test(n));
  const aliases = await Promise.all(names.map((n) => fs.readFile(`/sys/class/net/${n}/ifalias`, 'utf8').catch(() => '')));
  return names.filter((_, i) => aliases[i]!.trim() === owner);
}
