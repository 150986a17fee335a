import { ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, promises as fs, readFileSync, rmSync, writeFileSync } from 'node:fs';
import dgram from 'node:dgram';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { layer, Layer } from '../helpers/images.js';
import { onTimeout, waitFor } from '../helpers/util.js';
import { chainsFor, parseSave, removeAll } from '../../src/network/rules.js';
import { chainPrefixFor } from '../../src/network/index.js';
import { parseCidr, overlaps } from '../../src/network/cidr.js';
import { parseProcRoutes } from '../../src/network/routes.js';

// What the network end-to-end tests share: a bridge, subnet and chain prefix of their own, an "outside host"
// (a network namespace held by a process of the test's, linked to the node by a veth pair), clients for TCP and UDP
// from the node and from that outside host, and checks that nothing is left behind.

const run = promisify(execFile);

const RESERVATIONS = path.join(os.tmpdir(), 'berth-test-subnets');

/**
 * A /24 in `first.second.x.0` that no host route overlaps and no other test process holds: a reservation file made
 * with O_EXCL settles races between berths that pick before either has made its bridge. Released by
 * releaseSubnet (removeTestNet does it).
 */
export function freeSubnet(first: number, second: number): string {
  const routes = parseProcRoutes(readFileSync('/proc/net/route', 'utf8'));
  mkdirSync(RESERVATIONS, { recursive: true });
  for (let tries = 0; tries < 500; tries++) {
    const candidate = `${first}.${second}.${1 + Math.floor(Math.random() * 250)}.0/24`;
    const c = parseCidr(candidate)!;
    if (routes.some((r) => r.dest.prefix > 0 && overlaps(r.dest, c))) continue;
    try {
      writeFileSync(path.join(RESERVATIONS, candidate.replace('/', '_')), String(process.pid), { flag: 'wx' });
      return candidate;
    } catch {
      // held by another test process
    }
  }
  throw new Error(`no free /24 in ${first}.${second}.0.0/16`);
}

export function releaseSubnet(subnet: string): void {
  rmSync(path.join(RESERVATIONS, subnet.replace('/', '_')), { force: true });
}

export interface TestNet {
  bridge: string;
  subnet: string;
  /** x.y.z.1 */
  gateway: string;
  chainPrefix: string;
  /** [network] section selecting this bridge and subnet. */
  toml(mode?: string): string;
}

export function testNet(): TestNet {
  return testNetFrom(`bt${randomBytes(3).toString('hex')}`, freeSubnet(10, 213));
}

export function testNetFrom(bridge: string, subnet: string): TestNet {
  const gateway = subnet.replace(/\.0\/24$/, '.1');
  return {
    bridge,
    subnet,
    gateway,
    chainPrefix: chainPrefixFor(bridge),
    toml: (mode = 'embedded') => `[network]\nmode = "${mode}"\nbridge = "${bridge}"\nsubnet = "${subnet}"\n`,
  };
}

export async function iptablesSaveText(): Promise<string> {
  return (await run('iptables-save', [])).stdout;
}

/** Removes the test's bridge and chains (berth keeps both across restarts by design: they are node state). */
/** Applies iptables-save text without flushing the rest (the host's own rules stay). */
export function iptablesRestore(text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('iptables-restore', ['--noflush'], { stdio: ['pipe', 'inherit', 'inherit'] });
    child.on('exit', (code) => (code === 0 ? resolve() : reject(new Error(`iptables-restore exited ${code}`))));
    child.stdin.end(text);
  });
}

export async function removeTestNet(net: TestNet): Promise<void> {
  const saved = parseSave(await iptablesSaveText());
  const text = removeAll(chainsFor(net.chainPrefix), saved);
  await iptablesRestore(text);
  await run('ip', ['link', 'del', net.bridge]).catch(() => undefined);
  releaseSubnet(net.subnet);
}

export async function linkExists(name: string): Promise<boolean> {
  return fs.access(`/sys/class/net/${name}`).then(() => true, () => false);
}

export function vethOf(podId: string): string {
  return `berth${podId.slice(0, 10)}`;
}

/** Host objects a network test may leave: veths of its pods, rules and chains of its prefix, its bridge. */
export async function networkLeftovers(net: TestNet, podIds: string[], opts: { bridgeToo?: boolean } = {}): Promise<string[]> {
  const problems: string[] = [];
  // A pod's veth goes with its netns, which the kernel destroys asynchronously once unpinned.
  for (const id of podIds) if (!(await waitGone(vethOf(id)))) problems.push(`veth ${vethOf(id)}`);
  const saveText = await iptablesSaveText();
  for (const line of saveText.split('\n')) {
    if (podIds.some((id) => line.includes(id))) problems.push(`rule: ${line}`);
    if (opts.bridgeToo && line.includes(net.chainPrefix + '-')) problems.push(`rule/chain: ${line}`);
  }
  if (opts.bridgeToo && (await linkExists(net.bridge))) problems.push(`bridge ${net.bridge}`);
  return problems;
}

/** The kernel removes a pod's veth once its netns is gone, asynchronously: wait a little for it. */
export function waitGone(name: string, timeoutMs = 5000): Promise<boolean> {
  return waitFor(`link ${name} to go`, async () => !(await linkExists(name)), { timeoutMs, intervalMs: 20 }).catch(onTimeout(false));
}

// ---------------------------------------------------------------------------------------------------------------
// Clients

export function httpGet(url: string, timeoutMs = 3000): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve(body));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: timed out`)));
    req.on('error', reject);
  });
}

export function udpAsk(host: string, port: number, message: string, timeoutMs = 2000): Promise<string> {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      sock.close();
      reject(new Error(`UDP ${host}:${port}: no answer in ${timeoutMs} ms`));
    }, timeoutMs);
    sock.on('message', (msg) => {
      clearTimeout(timer);
      sock.close();
      resolve(msg.toString('utf8'));
    });
    sock.on('error', (e) => {
      clearTimeout(timer);
      sock.close();
      reject(e);
    });
    sock.send(message, port, host);
  });
}

/** Retries `fn` until it succeeds (servers in pods take a moment to listen). */
export async function eventually<T>(fn: () => Promise<T>, timeoutMs = 10000, what = 'request'): Promise<T> {
  let last: unknown;
  const succeeded = async () => {
    try {
      return { value: await fn() };
    } catch (err) {
      last = err;
      return undefined;
    }
  };
  const success = await waitFor(what, succeeded, { timeoutMs, intervalMs: 100 }).catch(onTimeout(undefined));
  if (!success) throw new Error(`${what} kept failing: ${(last as Error)?.message ?? last}`);
  return success.value;
}

// ---------------------------------------------------------------------------------------------------------------
// The outside host

export interface OutsideHost {
  pid: number;
  /** The node's address on the link to the outside host. */
  nodeIp: string;
  /** The outside host's address. */
  ip: string;
  nodeLink: string;
  /** Runs a command inside the outside host's network namespace. */
  exec(cmd: string, args: string[], timeoutMs?: number): Promise<string>;
  /** Starts an HTTP server there that answers every request with the client's address. */
  serveClientAddress(port: number): Promise<ChildProcess>;
  /** GET from the outside host. */
  httpGet(url: string): Promise<string>;
  udpAsk(host: string, port: number, message: string): Promise<string>;
  remove(): Promise<void>;
}

export async function outsideHost(): Promise<OutsideHost> {
  const holder = spawn('unshare', ['--net', 'sleep', '1000'], { stdio: 'ignore' });
  const pid = holder.pid!;
  // unshare execs sleep in the new netns: wait until the pid's netns differs from ours.
  const ours = await fs.readlink('/proc/self/ns/net');
  await waitFor(`unshare ${pid} to enter its netns`, async () => (await fs.readlink(`/proc/${pid}/ns/net`).catch(() => ours)) !== ours, { timeoutMs: 1000, intervalMs: 10 });
  const subnet = freeSubnet(10, 215);
  const nodeIp = subnet.replace(/\.0\/24$/, '.1');
  const ip = subnet.replace(/\.0\/24$/, '.2');
  const tag = randomBytes(3).toString('hex');
  const nodeLink = `bo${tag}`;
  const nsArg = `--net=/proc/${pid}/ns/net`;
  await run('ip', ['link', 'add', nodeLink, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', String(pid)]);
  await run('ip', ['addr', 'add', `${nodeIp}/24`, 'dev', nodeLink]);
  await run('ip', ['link', 'set', nodeLink, 'up']);
  await run('nsenter', [nsArg, 'ip', 'addr', 'add', `${ip}/24`, 'dev', 'eth0']);
  await run('nsenter', [nsArg, 'ip', 'link', 'set', 'eth0', 'up']);
  await run('nsenter', [nsArg, 'ip', 'link', 'set', 'lo', 'up']);
  const exec = async (cmd: string, args: string[], timeoutMs = 10000) => (await run('nsenter', [nsArg, cmd, ...args], { timeout: timeoutMs })).stdout;
  const node = (script: string, ...args: string[]) => exec(process.execPath, ['-e', script, ...args]);
  return {
    pid,
    nodeIp,
    ip,
    nodeLink,
    exec,
    async serveClientAddress(port) {
      const script = `require('http').createServer((q, s) => s.end(q.socket.remoteAddress)).listen(${port}, '${ip}', () => console.log('listening'))`;
      const child = spawn('nsenter', [nsArg, process.execPath, '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
      await new Promise<void>((resolve, reject) => {
        child.stdout!.once('data', () => resolve());
        child.once('exit', (code) => reject(new Error(`outside server exited ${code}`)));
      });
      return child;
    },
    httpGet: (url) =>
      node(
        `require('http').get(process.argv[1], {timeout: 3000}, (r) => { let b=''; r.on('data', (c) => b += c); r.on('end', () => process.stdout.write(b)); }).on('error', (e) => { console.error(e.message); process.exit(1); }).on('timeout', function () { this.destroy(new Error('timeout')); })`,
        url,
      ),
    udpAsk: (host, port, message) =>
      node(
        `const s = require('dgram').createSocket('udp4'); const t = setTimeout(() => { console.error('no answer'); process.exit(1); }, 2000); s.on('message', (m) => { clearTimeout(t); process.stdout.write(m.toString()); s.close(); }); s.send(process.argv[3], Number(process.argv[2]), process.argv[1]);`,
        host,
        String(port),
        message,
      ),
    async remove() {
      holder.kill('SIGKILL');
      await new Promise((r) => (holder.exitCode !== null || holder.signalCode !== null ? r(undefined) : holder.once('exit', r)));
      if (!(await waitGone(nodeLink))) await run('ip', ['link', 'del', nodeLink]).catch(() => undefined);
      releaseSubnet(subnet);
    },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// A UDP echo server for pods (busybox has none): a static C program built at test time.

const UDP_ECHO_C = `
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
  int port = argc > 1 ? atoi(argv[1]) : 5353;
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_ANY);
  if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); return 1; }
  char buf[1500], out[1700];
  for (;;) {
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    ssize_t n = recvfrom(s, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &fl);
    if (n < 0) continue;
    buf[n] = 0;
    int m = snprintf(out, sizeof out, "echo %s from %s", buf, inet_ntoa(from.sin_addr));
    sendto(s, out, m, 0, (struct sockaddr *)&from, fl);
  }
}
`;

export async function udpEchoLayer(): Promise<Layer> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-udpecho-'));
  try {
    writeFileSync(path.join(dir, 'udpecho.c'), UDP_ECHO_C);
    execFileSync('gcc', ['-static', '-O2', '-o', path.join(dir, 'udpecho'), path.join(dir, 'udpecho.c')]);
    return await layer([
      { type: 'dir', path: 'usr', mode: 0o755 },
      { type: 'dir', path: 'usr/bin', mode: 0o755 },
      { type: 'file', path: 'usr/bin/udpecho', content: readFileSync(path.join(dir, 'udpecho')), mode: 0o755 },
    ]);
  } finally {
    await fs.rm(dir, { recursive: true, force: true });
  }
}

/** portmap's node-wide chains, once no pod uses them. */
export async function removePortmapChains(): Promise<void> {
  const save = await iptablesSaveText();
  const lines = save.split('\n');
  if (lines.some((l) => l.startsWith('-A CNI-HOSTPORT-DNAT ') && l.includes('CNI-DN-'))) return;
  const text = ['*nat'];
  for (const l of lines) if (/^-A (PREROUTING|OUTPUT|POSTROUTING) .*-j CNI-HOSTPORT-/.test(l)) text.push('-D' + l.slice(2));
  for (const chain of ['CNI-HOSTPORT-DNAT', 'CNI-HOSTPORT-SETMARK', 'CNI-HOSTPORT-MASQ']) {
    if (lines.includes(`:${chain} - [0:0]`)) text.push(`-F ${chain}`, `-X ${chain}`);
  }
  text.push('COMMIT', '');
  await iptablesRestore(text.join('\n'));
}
