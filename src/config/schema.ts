import { isIP } from 'node:net';
import { isLevel, Level } from '../log.js';
import { parseCidr } from '../network/cidr.js';
import { parseWholeQuantity } from '../quantity.js';

// The configuration berth runs with: one TOML section per subsystem. Validation is strict because a typo in a
// node's config that silently falls back to a default is worse than refusing to start.

export interface RegistryConfig {
  /** Hosts (host or host:port) reached over plain HTTP. */
  insecure: string[];
  /** Registry host → endpoints tried in order; when listed, the original host is never contacted. */
  mirrors: Record<string, string[]>;
  /** Parallel blob downloads per pull. */
  maxConcurrentDownloads: number;
  /** Seconds before a registry request with no progress is abandoned. */
  requestTimeoutSeconds: number;
  /** Whether registries on localhost, 127.0.0.0/8 and ::1 are reached over plain HTTP unless TLS is configured for them. */
  loopbackPlainHttp: boolean;
  /** PEM files of CAs trusted for every registry, on top of the system's. */
  caFiles: string[];
  /** Per registry host (host or host:port): settings for that host alone. */
  hosts: Record<string, RegistryHostConfig>;
}

export interface RegistryHostConfig {
  /** A PEM file of CAs trusted for this host, on top of the system's and registry.ca_files. */
  caFile?: string;
}

export interface RuntimeConfig {
  /** Resource limits every container starts with, by name (`nofile` → RLIMIT_NOFILE): [soft, hard]. */
  rlimits: Record<string, [number, number]>;
  /** Size of each pod's /dev/shm. */
  shmSizeBytes: number;
  /** Longer log lines are split into partial (P) records. */
  logMaxLineBytes: number;
  /** Upper limit on each container's writable layer, bytes; 0: none. A pod annotation may lower it. */
  writableLayerMaxBytes: number;
  /** How often the writable layers' disk use (ContainerStats) is measured, off the request path. */
  writableLayerIntervalSeconds: number;
  /** The AppArmor profile RuntimeDefault (and an unset profile) means; berth does not load it. */
  apparmorProfile: string;
  /** Whether containers get lxcfs's /proc files: auto (when mounted), on (required), off. */
  lxcfs: LxcfsMode;
  /** Where lxcfs is mounted. */
  lxcfsDir: string;
  /** pids.max of every container (0: none); a pod's berth.dev/pids-limit annotation may lower it. */
  pidsLimit: number;
}

/** One device of a block I/O class, by path as configured (resolved to major:minor when the config is loaded). */
export interface BlockioDeviceConfig {
  path: string;
  readBps?: number;
  writeBps?: number;
  readIops?: number;
  writeIops?: number;
  weight?: number;
}

export interface BlockioClassConfig {
  devices: BlockioDeviceConfig[];
}

export interface BlockioConfig {
  /** Named classes pods select with the blockio.resources.beta.kubernetes.io annotations (containerd's). */
  classes: Record<string, BlockioClassConfig>;
}

export type LxcfsMode = 'auto' | 'on' | 'off';

export type NetworkMode = 'auto' | 'embedded' | 'cni';

export interface NetworkConfig {
  /** auto: a CNI config in cni.conf_dir wins, else the embedded bridge; embedded; cni: CNI only. */
  mode: NetworkMode;
  /** IPv4 subnet of the embedded bridge (a pod CIDR from kubelet takes precedence). */
  subnet: string;
  /** Name of the embedded bridge. */
  bridge: string;
}

export interface CniConfig {
  /** Where CNI network configs are looked for (the lexically first .conflist/.conf/.json is used). */
  confDir: string;
  /** Where plugin binaries are looked for, in order. */
  binDirs: string[];
}

export interface CdiConfig {
  /** Where CDI spec files (.json, .yaml) are read from; a device in a later directory wins. */
  specDirs: string[];
}

export interface StreamingConfig {
  /** ip:port the streaming server (exec, attach, port-forward URLs) listens on; port 0 picks a free one. */
  address: string;
  /** PEM certificate and key for HTTPS; both empty: plain HTTP. */
  tlsCertFile: string;
  tlsKeyFile: string;
  /** A session with no traffic either way for this long is closed. */
  streamIdleTimeoutSeconds: number;
  /** How long a client has, once upgraded, to open the streams its request implies (SPDY). */
  streamCreationTimeoutSeconds: number;
}

export interface MetricsConfig {
  /** host:port of the Prometheus endpoint (/metrics); empty disables it. */
  address: string;
}

export interface LogConfig {
  /** The log threshold; --log-level on the command line takes precedence. */
  level: Level;
}

export interface BerthConfig {
  log: LogConfig;
  registry: RegistryConfig;
  runtime: RuntimeConfig;
  blockio: BlockioConfig;
  network: NetworkConfig;
  cni: CniConfig;
  cdi: CdiConfig;
  streaming: StreamingConfig;
  metrics: MetricsConfig;
}

export const RLIMIT_NAMES = ['as', 'core', 'cpu', 'data', 'fsize', 'locks', 'memlock', 'msgqueue', 'nice', 'nofile', 'nproc', 'rss', 'rtprio', 'rttime', 'sigpending', 'stack'];

export class ConfigError extends Error {
  constructor(
    readonly key: string,
    message: string,
  ) {
    super(`config: ${key}: ${message}`);
    this.name = 'ConfigError';
  }
}

type Raw = Record<string, unknown>;

function isTable(value: unknown): value is Raw {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

function stringList(key: string, value: unknown): string[] {
  if (!Array.isArray(value) || value.some((v) => typeof v !== 'string' || v === '')) {
    throw new ConfigError(key, 'must be a list of non-empty strings');
  }
  return value as string[];
}

function writableLayerBytes(key: string, value: unknown): number {
  const n = typeof value === 'bigint' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || (n !== 0 && (n < 4 * 1024 * 1024 || n > 2 ** 50))) {
    throw new ConfigError(key, 'must be 0 (no limit) or an integer from 4194304 (4 MiB) to 2^50');
  }
  return n;
}

function positiveInt(key: string, value: unknown, max: number): number {
  const n = typeof value === 'bigint' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 1 || n > max) {
    throw new ConfigError(key, `must be an integer from 1 to ${max}`);
  }
  return n;
}

function endpoint(key: string, value: string): string {
  let url: URL;
  try {
    url = new URL(value.includes('://') ? value : `https://${value}`);
  } catch {
    throw new ConfigError(key, `"${value}" is not a valid endpoint URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new ConfigError(key, `"${value}" must use http:// or https://`);
  }
  return value;
}

const LABEL = '[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?';
const HOST_PORT = new RegExp(`^(?:${LABEL}(?:\\.${LABEL})*|\\[[0-9A-Fa-f:.]+\\])(?::(\\d{1,5}))?$`);

/**
 * A registry as image references name it: host or host:port. Registries are matched by that exact string, so an
 * entry with a scheme or a path would never match and the registry would silently be reached over HTTPS.
 */
function hostPort(key: string, value: string): string {
  const m = HOST_PORT.exec(value);
  const port = m?.[1] === undefined ? undefined : Number(m[1]);
  if (!m || (port !== undefined && (port < 1 || port > 65535))) {
    throw new ConfigError(key, `"${value}" must be a host or host:port without a scheme or path, e.g. "127.0.0.1:5000"`);
  }
  return value;
}

function rejectUnknown(section: string, table: Raw, known: string[]): void {
  for (const key of Object.keys(table)) {
    if (!known.includes(key)) throw new ConfigError(section ? `${section}.${key}` : key, 'unknown key');
  }
}

function absolutePath(key: string, value: unknown): string {
  if (typeof value !== 'string' || !value.startsWith('/')) throw new ConfigError(key, 'must be an absolute path');
  return value;
}

function absolutePaths(key: string, value: unknown): string[] {
  return stringList(key, value).map((p) => absolutePath(key, p));
}

function boolean(key: string, value: unknown): boolean {
  if (typeof value !== 'boolean') throw new ConfigError(key, 'must be true or false');
  return value;
}

function table<T>(key: string, value: unknown, what: string, entry: (name: string, value: unknown) => T): Record<string, T> {
  if (!isTable(value)) throw new ConfigError(key, `must be a table of ${what}`);
  const out: Record<string, T> = {};
  for (const [name, v] of Object.entries(value)) out[name] = entry(name, v);
  return out;
}

function rlimit(key: string, value: unknown): [number, number] {
  if (!Array.isArray(value) || value.length !== 2) throw new ConfigError(key, 'must be [soft, hard]');
  const [soft, hard] = value.map((v) => (typeof v === 'bigint' ? Number(v) : v));
  if (!Number.isInteger(soft) || !Number.isInteger(hard) || soft < 0 || hard < soft) {
    throw new ConfigError(key, 'must be two integers with 0 <= soft <= hard');
  }
  return [soft, hard];
}

function registryHost(key: string, value: unknown): RegistryHostConfig {
  if (!isTable(value)) throw new ConfigError(key, 'must be a table such as { ca_file = "/etc/berth/certs/ca.pem" }');
  rejectUnknown(key, value, ['ca_file']);
  return value.ca_file === undefined ? {} : { caFile: absolutePath(`${key}.ca_file`, value.ca_file) };
}

const NETWORK_MODES: NetworkMode[] = ['auto', 'embedded', 'cni'];
const LXCFS_MODES: LxcfsMode[] = ['auto', 'on', 'off'];

function lxcfsMode(key: string, value: unknown): LxcfsMode {
  if (typeof value !== 'string' || !LXCFS_MODES.includes(value as LxcfsMode)) throw new ConfigError(key, `must be one of ${LXCFS_MODES.join(', ')}`);
  return value as LxcfsMode;
}

function subnet(key: string, value: unknown): string {
  const cidr = typeof value === 'string' ? parseCidr(value) : undefined;
  if (!cidr) throw new ConfigError(key, 'must be an IPv4 subnet in CIDR notation with the host bits zero, e.g. "10.86.0.0/16"');
  if (cidr.prefix < 8 || cidr.prefix > 30) throw new ConfigError(key, 'prefix length must be from /8 to /30');
  return value as string;
}

/** ip:port or [ipv6]:port, port 0-65535; an IP literal, so what is bound never depends on name resolution. */
export function parseListenAddress(value: string): { host: string; port: number } | undefined {
  const m = /^(?:\[([0-9A-Fa-f:.]+)\]|(\d{1,3}(?:\.\d{1,3}){3})):(\d{1,5})$/.exec(value);
  if (!m) return undefined;
  const host = m[1] ?? m[2];
  const port = Number(m[3]);
  if (port > 65535 || isIP(host) !== (m[1] ? 6 : 4)) return undefined;
  return { host, port };
}

function listenAddress(key: string, value: unknown): string {
  if (typeof value !== 'string' || !parseListenAddress(value)) {
    throw new ConfigError(key, 'must be ip:port or [ipv6]:port, e.g. "127.0.0.1:0" (port 0: any free port) or "[::1]:10010"');
  }
  return value;
}

/** An absolute path, or "" for none. */
function optionalPath(key: string, value: unknown): string {
  return value === '' ? '' : absolutePath(key, value);
}

/**
 * One key of the configuration file. The loader validates with these, `berth config default` prints them, and
 * the defaults come from them: one table, so the documentation printed for a key cannot drift from what is read.
 */
export interface KeySchema {
  /** The TOML key within its section, snake_case; the config field is its camelCase form. */
  key: string;
  /** One line, printed above the key by `berth config default`. */
  meaning: string;
  default(): unknown;
  /** Checks a TOML value and returns the config's form of it; `name` is the full key errors must name. */
  parse(value: unknown, name: string): unknown;
  /** The TOML form of a config value, where it differs (camelCase fields inside a table). */
  toToml?(value: unknown): unknown;
}

export interface SectionSchema {
  name: keyof BerthConfig;
  meaning: string;
  keys: KeySchema[];
}

function key<T>(
  name: string,
  meaning: string,
  defaultValue: () => T,
  parse: (name: string, value: unknown) => T,
  toToml?: (value: T) => unknown,
): KeySchema {
  return { key: name, meaning, default: defaultValue, parse: (value, full) => parse(full, value), toToml } as KeySchema;
}

function logLevel(key: string, value: unknown): Level {
  if (typeof value !== 'string' || !isLevel(value)) throw new ConfigError(key, 'must be one of debug, info, warn, error');
  return value;
}

function networkMode(key: string, value: unknown): NetworkMode {
  if (typeof value !== 'string' || !NETWORK_MODES.includes(value as NetworkMode)) throw new ConfigError(key, `must be one of ${NETWORK_MODES.join(', ')}`);
  return value as NetworkMode;
}

function apparmorProfileName(key: string, value: unknown): string {
  if (typeof value !== 'string' || !/^[^\s\0]{1,255}$/.test(value) || value === 'unconfined') {
    throw new ConfigError(key, 'must be the name of an AppArmor profile: 1-255 characters, no spaces (and not "unconfined")');
  }
  return value;
}

function deviceName(key: string, value: unknown): string {
  if (typeof value !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/.test(value)) {
    throw new ConfigError(key, 'must be a network device name: 1–15 letters, digits, "_", "-" or "."');
  }
  return value;
}

/** host:port (an IPv6 host in brackets), or "" for none; port 0 lets the kernel choose (berth logs the one bound). */
function optionalHostPort(key: string, value: unknown): string {
  if (value === '') return value;
  const m = typeof value === 'string' ? /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(value) : null;
  if (!m || Number(m[3]) > 65535) throw new ConfigError(key, 'must be "host:port" (e.g. "127.0.0.1:9325", "[::1]:9325") or "" to disable');
  return value as string;
}

function someAbsolutePaths(key: string, value: unknown): string[] {
  const dirs = absolutePaths(key, value);
  if (dirs.length === 0) throw new ConfigError(key, 'must name at least one directory');
  return dirs;
}

function mirrors(key: string, value: unknown): Record<string, string[]> {
  return table(key, value, 'host = [endpoints]', (host, list) => stringList(`${key}."${host}"`, list).map((e) => endpoint(`${key}."${host}"`, e)));
}

function registryHosts(key: string, value: unknown): Record<string, RegistryHostConfig> {
  return table(key, value, '"host:port" = { ca_file = "/path" }', (host, entry) => registryHost(`${key}."${hostPort(key, host)}"`, entry));
}

function rlimits(key: string, value: unknown): Record<string, [number, number]> {
  return table(key, value, 'name = [soft, hard]', (limit, pair) => {
    if (!RLIMIT_NAMES.includes(limit)) throw new ConfigError(`${key}.${limit}`, `unknown resource limit (one of ${RLIMIT_NAMES.join(', ')})`);
    return rlimit(`${key}.${limit}`, pair);
  });
}

/** The kernel's PID_MAX_LIMIT: pids.max takes nothing larger. */
export const MAX_PIDS_LIMIT = 4194304;

function pidsLimit(key: string, value: unknown): number {
  const n = typeof value === 'bigint' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > MAX_PIDS_LIMIT) {
    throw new ConfigError(key, `must be an integer from 0 (no limit) to ${MAX_PIDS_LIMIT}`);
  }
  return n;
}

const CLASS_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const DEVICE_THROTTLES = [
  ['read_bps', 'readBps'],
  ['write_bps', 'writeBps'],
  ['read_iops', 'readIops'],
  ['write_iops', 'writeIops'],
] as const;
/** BFQ's range (1-1000); v2's io.weight takes more, but one range keeps a class meaning the same on either. */
export const MAX_BLOCKIO_WEIGHT = 1000;

/** A rate: a positive integer, or a quantity string such as "10Mi" or "500k". */
function rate(key: string, value: unknown): number {
  const n = typeof value === 'bigint' ? Number(value) : typeof value === 'string' ? parseWholeQuantity(value) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1) {
    throw new ConfigError(key, `${JSON.stringify(typeof value === 'bigint' ? String(value) : value)} must be a positive whole number, or a quantity such as "10Mi" or "500k"`);
  }
  return n;
}

function blockioDevice(key: string, value: unknown): BlockioDeviceConfig {
  if (!isTable(value)) throw new ConfigError(key, 'must be a table such as { path = "/dev/sda", write_bps = "10Mi" }');
  rejectUnknown(key, value, ['path', 'weight', ...DEVICE_THROTTLES.map(([k]) => k)]);
  const device: BlockioDeviceConfig = { path: absolutePath(`${key}.path`, value.path) };
  for (const [tomlKey, field] of DEVICE_THROTTLES) if (value[tomlKey] !== undefined) device[field] = rate(`${key}.${tomlKey}`, value[tomlKey]);
  if (value.weight !== undefined) device.weight = positiveInt(`${key}.weight`, value.weight, MAX_BLOCKIO_WEIGHT);
  if (Object.keys(device).length === 1) throw new ConfigError(key, `sets no limit: give read_bps, write_bps, read_iops, write_iops or weight`);
  return device;
}

function blockioClasses(key: string, value: unknown): Record<string, BlockioClassConfig> {
  return table(key, value, 'classes: name = { devices = [...] }', (name, cls) => {
    const at = `${key}.${name}`;
    if (!CLASS_NAME.test(name)) throw new ConfigError(at, 'a class name is 1-63 letters, digits, "_", "-" or "." (starting with a letter or digit)');
    if (!isTable(cls)) throw new ConfigError(at, 'must be a table with a devices list');
    rejectUnknown(at, cls, ['devices']);
    if (!Array.isArray(cls.devices) || cls.devices.length === 0) throw new ConfigError(`${at}.devices`, 'must be a non-empty list of devices');
    const devices = cls.devices.map((d, i) => blockioDevice(`${at}.devices[${i}]`, d));
    return { devices };
  });
}

const blockioClassesToToml = (classes: Record<string, BlockioClassConfig>) =>
  Object.fromEntries(
    Object.entries(classes).map(([name, cls]) => [
      name,
      {
        devices: cls.devices.map((d) => ({
          path: d.path,
          ...Object.fromEntries(DEVICE_THROTTLES.filter(([, f]) => d[f] !== undefined).map(([k, f]) => [k, d[f]])),
          ...(d.weight !== undefined ? { weight: d.weight } : {}),
        })),
      },
    ]),
  );

const hostsToToml = (hosts: Record<string, RegistryHostConfig>) =>
  Object.fromEntries(Object.entries(hosts).map(([host, h]) => [host, h.caFile === undefined ? {} : { ca_file: h.caFile }]));

// key(name, one-line meaning, default, parser[, TOML form])
export const CONFIG_SCHEMA: SectionSchema[] = [
  {
    name: 'log',
    meaning: 'JSON-lines logs on stderr',
    keys: [key('level', 'debug, info, warn or error; --log-level takes precedence; reloaded on SIGHUP', (): Level => 'info', logLevel)],
  },
  {
    name: 'registry',
    meaning: 'image registries; the whole section is reloaded on SIGHUP',
    keys: [
      key('insecure', 'registry hosts ("host" or "host:port") reached over plain HTTP instead of HTTPS', (): string[] => [], (name, v) =>
        stringList(name, v).map((h) => hostPort(name, h)),
      ),
      key('loopback_plain_http', 'registries on localhost, 127.0.0.0/8 and [::1] are reached over plain HTTP unless registry.hosts gives them a ca_file', () => true, boolean),
      key('mirrors', 'registry host = [endpoints tried in order]; a host with mirrors is never contacted itself; "http://" endpoints are plain HTTP', () => ({}), mirrors),
      key('ca_files', 'PEM files of CAs trusted for every registry, on top of the system CAs', (): string[] => [], absolutePaths),
      key('hosts', '"host:port" = { ca_file = "/path/ca.pem" }: a CA trusted for that registry alone (also makes a loopback host use HTTPS)', () => ({}), registryHosts, hostsToToml),
      key('max_concurrent_downloads', 'layers of one pull downloaded at once (1-64)', () => 3, (name, v) => positiveInt(name, v, 64)),
      key('request_timeout_seconds', 'a registry request that gets no answer, or a download that gets no data, for this long fails (1-3600)', () => 60, (name, v) =>
        positiveInt(name, v, 3600),
      ),
    ],
  },
  {
    name: 'runtime',
    meaning: 'containers',
    keys: [
      key('rlimits', 'resource limits every container starts with: name (nofile, nproc, core, memlock, ...) = [soft, hard]; replaces the default table', () => ({ nofile: [1024, 1024] as [number, number] }), rlimits),
      key('shm_size_bytes', "size of each pod's /dev/shm", () => 64 * 1024 * 1024, (name, v) => positiveInt(name, v, 2 ** 40)),
      key('log_max_line_bytes', 'longer container log lines are split into partial (P) records', () => 16 * 1024, (name, v) => positiveInt(name, v, 1 << 24)),
      key('writable_layer_max_bytes', 'upper limit on what each container can write into its rootfs, in bytes (0: none; else 4194304 to 2^50); a pod annotation (writable-layer.berth.io/pod or /container.<name>) can lower it; project quotas where the storage has them, else a loop-backed ext4', () => 0, writableLayerBytes),
      key('writable_layer_interval_seconds', "how often the containers' writable layers are walked for their disk use in the stats (1-3600); the walk pauses while nobody asks for stats", () => 15, (name, v) =>
        positiveInt(name, v, 3600),
      ),
      key('apparmor_profile', 'AppArmor profile for RuntimeDefault (and for containers that ask for none) on an AppArmor node; loaded by the operator, not berth', () => 'berth-default', apparmorProfileName),
      key('lxcfs', "auto: containers get lxcfs's /proc files (meminfo, cpuinfo, stat, ...) when lxcfs is mounted at lxcfs_dir; on: a container create fails without it; off: never. Never for privileged containers", (): LxcfsMode => 'auto', lxcfsMode),
      key('lxcfs_dir', 'where lxcfs is mounted (the directory given to the lxcfs command)', () => '/var/lib/lxcfs', absolutePath),
      key('pids_limit', `pids.max of every container: how many processes and threads it may hold (0: no limit; at most ${MAX_PIDS_LIMIT}); a pod's berth.dev/pids-limit annotation may lower it`, () => 4096, pidsLimit),
    ],
  },
  {
    name: 'blockio',
    meaning: 'block I/O classes, selected by the blockio.resources.beta.kubernetes.io/pod and .../container.<name> pod annotations',
    keys: [
      key(
        'classes',
        'name = { devices = [{ path = "/dev/sda", read_bps, write_bps, read_iops, write_iops, weight }] }: throttles per whole-disk device (rates as integers or quantities like "10Mi"); weight (1-1000) needs BFQ or iocost on that device',
        (): Record<string, BlockioClassConfig> => ({}),
        blockioClasses,
        blockioClassesToToml,
      ),
    ],
  },
  {
    name: 'network',
    meaning: 'pod networking',
    keys: [
      key('mode', 'auto: a CNI config in cni.conf_dir wins, else the embedded bridge; embedded: the bridge only; cni: CNI only', (): NetworkMode => 'auto', networkMode),
      key('subnet', 'IPv4 subnet of the embedded bridge, /8 to /30 (a pod CIDR from kubelet takes precedence)', () => '10.86.0.0/16', subnet),
      key('bridge', "name of the embedded bridge (1-15 characters); another name also prefixes berth's iptables chains", () => 'berth0', deviceName),
    ],
  },
  {
    name: 'cni',
    meaning: 'CNI plugins',
    keys: [
      key('conf_dir', 'where CNI network configs are read: the lexically first .conflist, .conf or .json', () => '/etc/cni/net.d', absolutePath),
      key('bin_dirs', 'where CNI plugin binaries are looked for, in order (also passed as CNI_PATH)', () => ['/opt/cni/bin', '/usr/lib/cni'], someAbsolutePaths),
    ],
  },
  {
    name: 'cdi',
    meaning: 'Container Device Interface',
    keys: [key('spec_dirs', 'where CDI spec files (.json, .yaml) are read; a device defined in a later directory wins', () => ['/etc/cdi', '/var/run/cdi'], absolutePaths)],
  },
  {
    name: 'streaming',
    meaning: 'the streaming server behind Exec, Attach and PortForward (kubectl exec/attach/port-forward/cp)',
    keys: [
      key('address', 'ip:port it listens on; port 0 picks a free port; a wildcard address (0.0.0.0, [::]) puts the default-route address in the URLs', () => '127.0.0.1:0', listenAddress),
      key('tls_cert_file', 'PEM certificate for HTTPS; set with tls_key_file, or leave both empty for plain HTTP', () => '', optionalPath),
      key('tls_key_file', 'PEM private key of tls_cert_file', () => '', optionalPath),
      key('stream_idle_timeout_seconds', 'a session with no traffic either way for this long is closed (1-86400; kubelet: 4 h)', () => 4 * 3600, (name, v) => positiveInt(name, v, 86400)),
      key('stream_creation_timeout_seconds', 'how long a client has, once connected, to open its streams (1-600; kubelet: 30 s)', () => 30, (name, v) => positiveInt(name, v, 600)),
    ],
  },
  {
    name: 'metrics',
    meaning: 'Prometheus metrics',
    keys: [
      key('address', 'host:port of the Prometheus endpoint, served at /metrics; "" disables it; a taken address stops berth at start', () => '127.0.0.1:9325', optionalHostPort),
    ],
  },
];

/** The config field a TOML key sets: `max_concurrent_downloads` → `maxConcurrentDownloads`. */
export function fieldOf(tomlKey: string): string {
  return tomlKey.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
}

type Sections = Record<string, Record<string, unknown>>;

export function defaultConfig(): BerthConfig {
  const config: Sections = {};
  for (const section of CONFIG_SCHEMA) {
    config[section.name] = Object.fromEntries(section.keys.map((k) => [fieldOf(k.key), k.default()]));
  }
  return config as unknown as BerthConfig;
}

/** Turns a parsed TOML document into a config, or throws ConfigError naming the offending key. */
export function validateConfig(raw: Raw): BerthConfig {
  const config = defaultConfig() as unknown as Sections;
  rejectUnknown('', raw, CONFIG_SCHEMA.map((s) => s.name));
  for (const section of CONFIG_SCHEMA) {
    const values = raw[section.name];
    if (values === undefined) continue;
    if (!isTable(values)) throw new ConfigError(section.name, 'must be a table');
    rejectUnknown(section.name, values, section.keys.map((k) => k.key));
    for (const k of section.keys) {
      if (values[k.key] !== undefined) config[section.name][fieldOf(k.key)] = k.parse(values[k.key], `${section.name}.${k.key}`);
    }
  }
  const streaming = config.streaming as unknown as StreamingConfig;
  // One without the other would serve plain HTTP while the operator believes it is TLS (or fail at the first exec).
  if ((streaming.tlsCertFile === '') !== (streaming.tlsKeyFile === '')) {
    throw new ConfigError(streaming.tlsCertFile ? 'streaming.tls_key_file' : 'streaming.tls_cert_file', 'streaming.tls_cert_file and streaming.tls_key_file are set together or not at all');
  }
  return config as unknown as BerthConfig;
}
