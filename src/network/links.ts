import { promises as fs, writeFileSync } from 'node:fs';
import { BerthError } from '../errors.js';
import { run } from './exec.js';
import { bridgeAddPort, ifindexOf } from './netdev.js';

// Links and sysctls of the embedded network on the host side: the bridge and the host ends of the pods' veth
// pairs. The pod side (eth0, its address and route) is made by `berth-shim sandbox` inside the new netns.

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

/**
 * The host end of a pod's veth pair (made up, by the namespace helper, along with the pod's netns) joins the bridge
 * in-process (an ioctl), and hairpin mode is set through sysfs: a pod reaches itself through a hostPort.
 */
export async function attachHostEnd(bridge: string, hostName: string, what: string): Promise<void> {
  try {
    // sysfs reads and writes of a few bytes: synchronous is cheaper than a trip through the thread pool.
    bridgeAddPort(bridge, hostName, ifindexOf(hostName));
    writeFileSync(`/sys/class/net/${hostName}/brport/hairpin_mode`, '1');
  } catch (err) {
    throw err instanceof BerthError ? new BerthError(err.kind, `${what}: ${err.message}`) : new BerthError('internal', `${what}: ${hostName}: ${(err as Error).message}`);
  }
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
