import koffi, { type TypeObject } from 'koffi';
import { errnoError, fn } from './libc.js';

// Receiving a file descriptor over a unix socket (SCM_RIGHTS), which Node has no API for. Waiting happens on the
// event loop (koffi's libuv poll handle), and recvmsg only runs once the socket is readable, nonblocking: no
// threadpool thread ever sits on it.

const AF_UNIX = 1;
const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_DONTWAIT = 0x40;
const MSG_CTRUNC = 0x8;
/** The received descriptor is close-on-exec from the start, so no process berth spawns inherits it. */
const MSG_CMSG_CLOEXEC = 0x40000000;
const EAGAIN = 11;
const EINTR = 4;
/** Bytes read per recvmsg: the sender's text is one short line. */
const TEXT_BYTES = 512;
/** Room for one cmsghdr carrying a few ints; more than one descriptor is never expected, extra ones are closed. */
const CONTROL_BYTES = 64;

let types: { iovec: TypeObject; msghdr: TypeObject; cmsghdr: TypeObject } | undefined;

function structs() {
  types ??= {
    iovec: koffi.struct('berth_iovec', { iov_base: 'void *', iov_len: 'size_t' }),
    msghdr: koffi.struct('berth_msghdr', {
      msg_name: 'void *',
      msg_namelen: 'uint32_t',
      msg_iov: 'void *',
      msg_iovlen: 'size_t',
      msg_control: 'void *',
      msg_controllen: 'size_t',
      msg_flags: 'int',
    }),
    cmsghdr: koffi.struct('berth_cmsghdr', { cmsg_len: 'size_t', cmsg_level: 'int', cmsg_type: 'int' }),
  };
  return types;
}

function closeFd(fd: number): void {
  fn('close', 'int close(int fd)')(fd);
}

/** A connected pair of unix stream sockets, both close-on-exec and nonblocking: [berth's end, the child's end]. */
export function unixSocketPair(): [number, number] {
  const fds = new Int32Array(2);
  const rc = fn('socketpair', 'int socketpair(int domain, int type, int protocol, _Out_ int *sv)')(
    AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds);
  if (rc < 0) throw errnoError(koffi.errno(), 'socketpair', 'AF_UNIX');
  return [fds[0]!, fds[1]!];
}

interface Received {
  text: Buffer;
  fds: number[];
}

/** One nonblocking recvmsg; null when nothing is there yet (EAGAIN). Throws an errno error otherwise. */
function receiveOnce(sock: number): Received | null {
  const { iovec, msghdr, cmsghdr } = structs();
  const data = koffi.alloc('uint8_t', TEXT_BYTES);
  const control = koffi.alloc('uint8_t', CONTROL_BYTES);
  const iov = koffi.alloc(iovec, 1);
  const msg = koffi.alloc(msghdr, 1);
  try {
    koffi.encode(iov, iovec, { iov_base: data, iov_len: TEXT_BYTES });
    koffi.encode(msg, msghdr, {
      msg_name: null, msg_namelen: 0, msg_iov: iov, msg_iovlen: 1, msg_control: control, msg_controllen: CONTROL_BYTES, msg_flags: 0,
    });
    const recvmsg = fn('recvmsg', 'intptr_t recvmsg(int fd, void *msg, int flags)');
    const n = Number(recvmsg(sock, msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
    if (n < 0) {
      const errno = koffi.errno();
      if (errno === EAGAIN || errno === EINTR) return null;
      throw errnoError(errno, 'recvmsg', `fd ${sock}`);
    }
    const header = koffi.decode(msg, msghdr) as { msg_controllen: number | bigint; msg_flags: number };
    const text = Buffer.from(koffi.view(data, n)).subarray(0, n);
    const out: Received = { text: Buffer.from(text), fds: [] };
    // Walk the control messages the kernel filled in (CMSG_FIRSTHDR/CMSG_NXTHDR by hand: 8-byte alignment).
    const controlLen = Number(header.msg_controllen);
    const controlBytes = Buffer.from(koffi.view(control, CONTROL_BYTES));
    const headerLen = koffi.sizeof(cmsghdr);
    for (let at = 0; at + headerLen <= controlLen;) {
      const c = koffi.decode(control, at, cmsghdr) as { cmsg_len: number | bigint; cmsg_level: number; cmsg_type: number };
      const len = Number(c.cmsg_len);
      if (len < headerLen || at + len > controlLen) break;
      if (c.cmsg_level === SOL_SOCKET && c.cmsg_type === SCM_RIGHTS) {
        for (let p = at + headerLen; p + 4 <= at + len; p += 4) out.fds.push(controlBytes.readInt32LE(p));
      }
      at += (len + 7) & ~7;
    }
    if (header.msg_flags & MSG_CTRUNC) {
      for (const fd of out.fds) closeFd(fd);
      throw new Error(`recvmsg on fd ${sock}: control data truncated`);
    }
    return out;
  } finally {
    koffi.free(msg);
    koffi.free(iov);
    koffi.free(control);
    koffi.free(data);
  }
}

export interface LineWithFd {
  /** The first line the peer sent (without its newline), or everything it sent before closing. */
  line: string;
  /** The descriptor that came with it (close-on-exec, owned by the caller), or null. */
  fd: number | null;
}

/**
 * Reads one line from the unix socket `sock`, with the descriptor the sender attached to it, and closes `sock`.
 * Resolves when the line is complete, the sender closes its end, or after timeoutMs (line 'timed out'). Extra
 * descriptors are closed.
 */
export function receiveLineWithFd(sock: number, timeoutMs: number): Promise<LineWithFd> {
  return new Promise((resolve, reject) => {
    let text = Buffer.alloc(0);
    let fd: number | null = null;
    let settled = false;
    const handle = koffi.node.poll(sock, { readable: true, disconnect: true }, () => pump());
    const timer = setTimeout(() => finish(null, 'timed out'), timeoutMs);
    function finish(err: Error | null, line?: string): void {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      handle.close();
      closeFd(sock);
      if (err) {
        if (fd !== null) closeFd(fd);
        reject(err);
      } else {
        resolve({ line: line ?? text.toString().trim(), fd });
      }
    }
    function pump(): void {
      for (;;) {
        let got: Received | null;
        try {
          got = receiveOnce(sock);
        } catch (err) {
          return finish(err as Error);
        }
        if (!got) return; // wait for the next readiness
        for (const extra of got.fds) {
          if (fd === null) fd = extra;
          else closeFd(extra);
        }
        if (got.text.length === 0) return finish(null); // the sender closed its end
        text = Buffer.concat([text, got.text]);
        const nl = text.indexOf(0x0a);
        if (nl >= 0) return finish(null, text.subarray(0, nl).toString());
      }
    }
  });
}
