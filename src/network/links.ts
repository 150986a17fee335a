import { promises as fs, writeFileSync } from 'node:fs';
import { BerthError } from '../errors.js';
import { INPUT, run, runSpawned, which } from './exec.js';
import { bridgeAddPort, ifindexOf, linkUp } from './netdev.js';

// Links and sysctls of the embedded network: the bridge, a veth pair per pod, the pod's address and route.
// Commands run from the host; inside a pod's pinned netns through `nsenter --net=<file>` (never `ip netns`, whose
// `add` remounts /run/netns).

const exists = (p: string) => fs.access(p).then(() => true, () => false);

export async function writeSysctl(key: string, value: string): Promise<void> {
  const file = `/proc/sys/${key.replace(/\./g, '/')}`;
  try {
    const current = (await fs.readFile(file, 'utf8')).trim();
    if (current !== value) await fs.writeFile(file, value);
  } catch (err) {
    throw new BerthError('internal', `cannot set sysctl ${key}=${value}: ${(err as Error).message}`, { cause: err });
  }
}

/** The bridge exists, is up, and has `address` (gateway/prefix); route_localnet is on for it. */
export async function ensureBridge(bridge: string, address: string): Promise<void> {
  const what = `embedded network: bridge ${bridge}`;
  if (!(await exists(`/sys/class/net/${bridge}`))) {
    const r = await run('ip', ['link', 'add', bridge, 'type', 'bridge'], { what, okCodes: [2] });
    if (r.code !== 0 && !r.stderr.includes('File exists')) throw new BerthError('internal', `${what}: ip link add failed: ${r.stderr.trim()}`);
  }
  if (!(await exists(`/sys/class/net/${bridge}/bridge`))) {
    throw new BerthError('failed_precondition', `${what}: a network device named ${bridge} exists and is not a bridge`);
  }
  const { stdout } = await run('ip', ['-o', '-4', 'addr', 'show', 'dev', bridge], { what });
  if (!stdout.split('\n').some((l) => l.includes(` inet ${address} `))) {
    const r = await run('ip', ['addr', 'add', address, 'dev', bridge], { what, okCodes: [2] });
    if (r.code !== 0 && !r.stderr.includes('File exists')) throw new BerthError('internal', `${what}: ip addr add ${address} failed: ${r.stderr.trim()}`);
  }
  const flags = parseInt((await fs.readFile(`/sys/class/net/${bridge}/flags`, 'utf8')).trim(), 16);
  if ((flags & 1) === 0) await run('ip', ['link', 'set', bridge, 'up'], { what });
  await writeSysctl(`net.ipv4.conf.${bridge}.route_localnet`, '1');
}

export async function defaultMtu(dev: string | undefined): Promise<number> {
  if (!dev) return 1500;
  const text = await fs.readFile(`/sys/class/net/${dev}/mtu`, 'utf8').catch(() => '1500');
  const mtu = parseInt(text.trim(), 10);
  return Number.isInteger(mtu) && mtu >= 576 ? mtu : 1500;
}

export interface VethRequest {
  what: string;
  bridge: string;
  hostName: string;
  netnsPath: string;
  mtu: number;
  /** ip/prefix for eth0 */
  address: string;
  gateway: string;
  /** A directory on tmpfs for the command's input file. */
  scratchDir: string;
}

/**
 * One process (posix_spawned; its commands in a file on tmpfs): inside the pod's netns, `ip -batch` makes the pair (eth0 there, the host end created straight in
 * berth's netns), gives eth0 its address and default route. Then, in-process, the host end joins the bridge and
 * comes up (ioctls), and hairpin mode is set through sysfs.
 */
export async function addPodVeth(r: VethRequest, mark: (step: string) => void = () => undefined): Promise<void> {
  const mtu = String(r.mtu);
  const inside =
    `link add eth0 mtu ${mtu} type veth peer name ${r.hostName} mtu ${mtu} netns /proc/${process.pid}/ns/net\n` +
    `addr add ${r.address} dev eth0\n` +
    'link set eth0 up\n' +
    `route add default via ${r.gateway} dev eth0\n`;
  await runSpawned('nsenter', [`--net=${r.netnsPath}`, which('ip') ?? 'ip', '-batch', INPUT], {
    what: `${r.what}: veth ${r.hostName} and eth0 in ${r.netnsPath}`,
    input: inside,
    scratchDir: r.scratchDir,
  });
  mark('eth0');
  try {
    // sysfs reads and writes of a few bytes: synchronous is cheaper than a trip through the thread pool.
    bridgeAddPort(r.bridge, r.hostName, ifindexOf(r.hostName));
    linkUp(r.hostName);
    writeFileSync(`/sys/class/net/${r.hostName}/brport/hairpin_mode`, '1');
  } catch (err) {
    throw err instanceof BerthError ? new BerthError(err.kind, `${r.what}: ${err.message}`) : new BerthError('internal', `${r.what}: ${r.hostName}: ${(err as Error).message}`);
  }
  mark('hostEnd');
}

/** Deletes a link; a missing one is fine. */
export async function deleteLink(name: string, what: string): Promise<void> {
  const r = await run('ip', ['link', 'del', name], { what: `${what}: delete ${name}`, okCodes: [1, 2] });
  if (r.code !== 0 && !/Cannot find device|does not exist/.test(r.stderr)) {
    throw new BerthError('internal', `${what}: ip link del ${name} failed: ${r.stderr.trim()}`);
  }
}

export async function bridgePorts(bridge: string): Promise<string[]> {
  return fs.readdir(`/sys/class/net/${bridge}/brif`).catch(() => []);
}

export async function linkExists(name: string): Promise<boolean> {
  return exists(`/sys/class/net/${name}`);
}
