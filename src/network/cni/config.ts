import path from 'node:path';
import { bandwidthLimits, BandwidthLimits } from '../bandwidth.js';
import { PortMapping, DnsConfig } from '../../sandbox/types.js';

// CNI network configuration (spec 1.0): choosing the file, validating it, and building what each plugin gets on
// stdin. Pure.

export const CONFIG_EXTENSIONS = ['.conflist', '.conf', '.json'];
export const SUPPORTED_VERSIONS = ['0.3.0', '0.3.1', '0.4.0', '1.0.0', '1.1.0'];

export interface NetworkList {
  cniVersion: string;
  name: string;
  disableCheck: boolean;
  plugins: PluginConf[];
}

export type PluginConf = Record<string, unknown> & { type: string; capabilities?: Record<string, boolean> };

export class CniConfigError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`CNI config ${file}: ${message}`);
    this.name = 'CniConfigError';
  }
}

/** The lexically first file with a CNI config extension, or undefined. */
export function chooseConfigFile(names: string[]): string | undefined {
  return names.filter((n) => CONFIG_EXTENSIONS.includes(path.extname(n)) && !n.startsWith('.')).sort()[0];
}

const NAME = /^[a-zA-Z0-9][a-zA-Z0-9_.-]*$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function plugin(file: string, raw: unknown, where: string): PluginConf {
  if (!isObject(raw)) throw new CniConfigError(file, `${where} is not an object`);
  if (typeof raw.type !== 'string' || raw.type === '') throw new CniConfigError(file, `${where} has no "type"`);
  if (raw.type.includes('/') || raw.type.startsWith('.')) throw new CniConfigError(file, `${where}: plugin type "${raw.type}" is not a plain name`);
  if (raw.capabilities !== undefined && !isObject(raw.capabilities)) throw new CniConfigError(file, `${where}: "capabilities" must be an object`);
  return raw as PluginConf;
}

/** Parses a .conflist, or a single-plugin .conf/.json (one with a "plugins" array is read as a list). */
export function parseNetworkConfig(file: string, text: string): NetworkList {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new CniConfigError(file, `invalid JSON: ${(err as Error).message}`);
  }
  if (!isObject(raw)) throw new CniConfigError(file, 'not a JSON object');
  const isList = path.extname(file) === '.conflist' || Array.isArray(raw.plugins);
  if (typeof raw.cniVersion !== 'string' || raw.cniVersion === '') throw new CniConfigError(file, 'no "cniVersion"');
  if (!SUPPORTED_VERSIONS.includes(raw.cniVersion)) {
    throw new CniConfigError(file, `cniVersion "${raw.cniVersion}" is not supported (berth speaks ${SUPPORTED_VERSIONS.join(', ')})`);
  }
  if (typeof raw.name !== 'string' || !NAME.test(raw.name)) throw new CniConfigError(file, 'no valid network "name"');
  let plugins: PluginConf[];
  if (isList) {
    if (!Array.isArray(raw.plugins) || raw.plugins.length === 0) throw new CniConfigError(file, '"plugins" must be a non-empty list');
    plugins = raw.plugins.map((p, i) => plugin(file, p, `plugins[${i}]`));
  } else {
    plugins = [plugin(file, raw, 'the network')];
  }
  if (raw.disableCheck !== undefined && typeof raw.disableCheck !== 'boolean') throw new CniConfigError(file, '"disableCheck" must be a boolean');
  return { cniVersion: raw.cniVersion, name: raw.name, disableCheck: raw.disableCheck === true, plugins };
}

export function versionAtLeast(v: string, min: string): boolean {
  const a = v.split('.').map(Number);
  const b = min.split('.').map(Number);
  for (let i = 0; i < 3; i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  }
  return true;
}

/**
 * Limits of a pod whose annotations were checked when it started (prepare refuses bad ones); a pod recorded before
 * that check existed may still carry one, and its DEL must not fail over it.
 */
function storedBandwidth(annotations: Record<string, string>): BandwidthLimits | undefined {
  try {
    return bandwidthLimits(annotations);
  } catch {
    return undefined;
  }
}

export interface RuntimeInputs {
  portMappings: PortMapping[];
  dns?: DnsConfig;
  annotations: Record<string, string>;
}

/** Every capability arg berth can supply (the CNI conventions' names). */
export function capabilityArgs(input: RuntimeInputs): Record<string, unknown> {
  const args: Record<string, unknown> = {};
  const ports = input.portMappings
    .filter((p) => p.hostPort > 0)
    .map((p) => ({
      hostPort: p.hostPort,
      containerPort: p.containerPort,
      protocol: p.protocol.toLowerCase(),
      ...(p.hostIp && p.hostIp !== '0.0.0.0' ? { hostIP: p.hostIp } : {}),
    }));
  if (ports.length > 0) args.portMappings = ports;
  const limits = storedBandwidth(input.annotations);
  const bandwidth: Record<string, number> = {};
  // As containerd: the rate in bits per second, a burst as large as the kernel allows.
  if (limits?.ingressBitsPerSecond) Object.assign(bandwidth, { ingressRate: limits.ingressBitsPerSecond, ingressBurst: 2 ** 32 - 1 });
  if (limits?.egressBitsPerSecond) Object.assign(bandwidth, { egressRate: limits.egressBitsPerSecond, egressBurst: 2 ** 32 - 1 });
  if (Object.keys(bandwidth).length > 0) args.bandwidth = bandwidth;
  if (input.dns && (input.dns.servers.length > 0 || input.dns.searches.length > 0 || input.dns.options.length > 0)) {
    args.dns = { servers: input.dns.servers, searches: input.dns.searches, options: input.dns.options };
  }
  return args;
}

/** What one plugin reads on stdin: its config, the list's name and version, its runtimeConfig, prevResult. */
export function pluginInput(list: NetworkList, p: PluginConf, capArgs: Record<string, unknown>, prevResult?: unknown): Record<string, unknown> {
  const conf: Record<string, unknown> = { ...p, cniVersion: list.cniVersion, name: list.name };
  const runtimeConfig: Record<string, unknown> = {};
  for (const [cap, on] of Object.entries(p.capabilities ?? {})) {
    if (on === true && capArgs[cap] !== undefined) runtimeConfig[cap] = capArgs[cap];
  }
  if (Object.keys(runtimeConfig).length > 0) conf.runtimeConfig = runtimeConfig;
  else delete conf.runtimeConfig;
  if (prevResult !== undefined) conf.prevResult = prevResult;
  else delete conf.prevResult;
  return conf;
}

export function cniArgs(req: { namespace: string; name: string; podId: string; uid: string }): string {
  return `IgnoreUnknown=1;K8S_POD_NAMESPACE=${req.namespace};K8S_POD_NAME=${req.name};K8S_POD_INFRA_CONTAINER_ID=${req.podId};K8S_POD_UID=${req.uid}`;
}

/** The pod's addresses from a result (0.3+ and 1.0 share the shape): IPv4 first, without prefix lengths. */
export function resultIps(result: unknown): string[] {
  if (!isObject(result) || !Array.isArray(result.ips)) return [];
  const interfaces = Array.isArray(result.interfaces) ? result.interfaces : [];
  const ips: { ip: string; inPod: boolean; v4: boolean }[] = [];
  for (const entry of result.ips) {
    if (!isObject(entry) || typeof entry.address !== 'string') continue;
    const ip = entry.address.split('/')[0]!;
    const iface = typeof entry.interface === 'number' ? interfaces[entry.interface] : undefined;
    const inPod = iface === undefined || (isObject(iface) && typeof iface.sandbox === 'string' && iface.sandbox !== '');
    ips.push({ ip, inPod, v4: !ip.includes(':') });
  }
  const pod = ips.filter((i) => i.inPod);
  return [...pod.filter((i) => i.v4), ...pod.filter((i) => !i.v4)].map((i) => i.ip);
}
