import { promises as fs } from 'node:fs';
import { BerthError } from '../errors.js';
import { run } from './exec.js';

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
}

/**
 * Two commands: the pair is made in the host with its peer created straight inside the pod's netns, attached to
 * the bridge and up; then eth0 gets its address and default route from inside. Hairpin mode goes through sysfs.
 */
export async function addPodVeth(r: VethRequest): Promise<void> {
  const mtu = String(r.mtu);
  await run('ip', ['link', 'add', r.hostName, 'mtu', mtu, 'master', r.bridge, 'up', 'type', 'veth', 'peer', 'name', 'eth0', 'mtu', mtu, 'netns', r.netnsPath], {
    what: `${r.what}: create veth ${r.hostName}`,
  });
  const inside = `addr add ${r.address} dev eth0\nlink set eth0 up\nroute add default via ${r.gateway} dev eth0\n`;
  await Promise.all([
    run('nsenter', [`--net=${r.netnsPath}`, 'ip', '-batch', '-'], { what: `${r.what}: configure eth0 in ${r.netnsPath}`, input: inside }),
    fs.writeFile(`/sys/class/net/${r.hostName}/brport/hairpin_mode`, '1').catch((err: Error) => {
      throw new BerthError('internal', `${r.what}: hairpin mode on ${r.hostName}: ${err.message}`);
    }),
  ]);
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
