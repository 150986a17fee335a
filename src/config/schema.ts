import { parseCidr } from '../network/cidr.js';

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
}

export interface RuntimeConfig {
  /** Resource limits every container starts with, by name (`nofile` → RLIMIT_NOFILE): [soft, hard]. */
  rlimits: Record<string, [number, number]>;
  /** Size of each pod's /dev/shm. */
  shmSizeBytes: number;
  /** Longer log lines are split into partial (P) records. */
  logMaxLineBytes: number;
}

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

export interface BerthConfig {
  registry: RegistryConfig;
  runtime: RuntimeConfig;
  network: NetworkConfig;
  cni: CniConfig;
  cdi: CdiConfig;
}

export const RLIMIT_NAMES = ['as', 'core', 'cpu', 'data', 'fsize', 'locks', 'memlock', 'msgqueue', 'nice', 'nofile', 'nproc', 'rss', 'rtprio', 'rttime', 'sigpending', 'stack'];

export function defaultConfig(): BerthConfig {
  return {
    registry: {
      insecure: [],
      mirrors: {},
      maxConcurrentDownloads: 3,
      requestTimeoutSeconds: 60,
    },
    runtime: {
      rlimits: { nofile: [1024, 1024] },
      shmSizeBytes: 64 * 1024 * 1024,
      logMaxLineBytes: 16 * 1024,
    },
    network: {
      mode: 'auto',
      subnet: '10.86.0.0/16',
      bridge: 'berth0',
    },
    cni: {
      confDir: '/etc/cni/net.d',
      binDirs: ['/opt/cni/bin', '/usr/lib/cni'],
    },
    cdi: {
      specDirs: ['/etc/cdi', '/var/run/cdi'],
    },
  };
}

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

function parseRegistry(raw: Raw, into: RegistryConfig): void {
  rejectUnknown('registry', raw, ['insecure', 'mirrors', 'max_concurrent_downloads', 'request_timeout_seconds']);
  if (raw.insecure !== undefined) into.insecure = stringList('registry.insecure', raw.insecure).map((h) => hostPort('registry.insecure', h));
  if (raw.mirrors !== undefined) {
    if (!isTable(raw.mirrors)) throw new ConfigError('registry.mirrors', 'must be a table of host = [endpoints]');
    for (const [host, list] of Object.entries(raw.mirrors)) {
      const key = `registry.mirrors."${host}"`;
      into.mirrors[host] = stringList(key, list).map((e) => endpoint(key, e));
    }
  }
  if (raw.max_concurrent_downloads !== undefined) {
    into.maxConcurrentDownloads = positiveInt('registry.max_concurrent_downloads', raw.max_concurrent_downloads, 64);
  }
  if (raw.request_timeout_seconds !== undefined) {
    into.requestTimeoutSeconds = positiveInt('registry.request_timeout_seconds', raw.request_timeout_seconds, 3600);
  }
}

function parseRuntime(raw: Raw, into: RuntimeConfig): void {
  rejectUnknown('runtime', raw, ['rlimits', 'shm_size_bytes', 'log_max_line_bytes']);
  if (raw.rlimits !== undefined) {
    if (!isTable(raw.rlimits)) throw new ConfigError('runtime.rlimits', 'must be a table of name = [soft, hard]');
    into.rlimits = {};
    for (const [name, value] of Object.entries(raw.rlimits)) {
      const key = `runtime.rlimits.${name}`;
      if (!RLIMIT_NAMES.includes(name)) throw new ConfigError(key, `unknown resource limit (one of ${RLIMIT_NAMES.join(', ')})`);
      if (!Array.isArray(value) || value.length !== 2) throw new ConfigError(key, 'must be [soft, hard]');
      const [soft, hard] = value.map((v) => (typeof v === 'bigint' ? Number(v) : v));
      if (!Number.isInteger(soft) || !Number.isInteger(hard) || soft < 0 || hard < soft) {
        throw new ConfigError(key, 'must be two integers with 0 <= soft <= hard');
      }
      into.rlimits[name] = [soft, hard];
    }
  }
  if (raw.shm_size_bytes !== undefined) into.shmSizeBytes = positiveInt('runtime.shm_size_bytes', raw.shm_size_bytes, 2 ** 40);
  if (raw.log_max_line_bytes !== undefined) {
    into.logMaxLineBytes = positiveInt('runtime.log_max_line_bytes', raw.log_max_line_bytes, 1 << 24);
  }
}

const NETWORK_MODES: NetworkMode[] = ['auto', 'embedded', 'cni'];

function absolutePath(key: string, value: unknown): string {
  if (typeof value !== 'string' || !value.startsWith('/')) throw new ConfigError(key, 'must be an absolute path');
  return value;
}

function parseNetwork(raw: Raw, into: NetworkConfig): void {
  rejectUnknown('network', raw, ['mode', 'subnet', 'bridge']);
  if (raw.mode !== undefined) {
    if (typeof raw.mode !== 'string' || !NETWORK_MODES.includes(raw.mode as NetworkMode)) {
      throw new ConfigError('network.mode', `must be one of ${NETWORK_MODES.join(', ')}`);
    }
    into.mode = raw.mode as NetworkMode;
  }
  if (raw.subnet !== undefined) {
    const cidr = typeof raw.subnet === 'string' ? parseCidr(raw.subnet) : undefined;
    if (!cidr) throw new ConfigError('network.subnet', 'must be an IPv4 subnet in CIDR notation with the host bits zero, e.g. "10.86.0.0/16"');
    if (cidr.prefix < 8 || cidr.prefix > 30) throw new ConfigError('network.subnet', 'prefix length must be from /8 to /30');
    into.subnet = raw.subnet as string;
  }
  if (raw.bridge !== undefined) {
    if (typeof raw.bridge !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$/.test(raw.bridge)) {
      throw new ConfigError('network.bridge', 'must be a network device name: 1–15 letters, digits, "_", "-" or "."');
    }
    into.bridge = raw.bridge;
  }
}

function parseCni(raw: Raw, into: CniConfig): void {
  rejectUnknown('cni', raw, ['conf_dir', 'bin_dirs']);
  if (raw.conf_dir !== undefined) into.confDir = absolutePath('cni.conf_dir', raw.conf_dir);
  if (raw.bin_dirs !== undefined) {
    const dirs = stringList('cni.bin_dirs', raw.bin_dirs);
    if (dirs.length === 0) throw new ConfigError('cni.bin_dirs', 'must name at least one directory');
    into.binDirs = dirs.map((d) => absolutePath('cni.bin_dirs', d));
  }
}

function parseCdi(raw: Raw, into: CdiConfig): void {
  rejectUnknown('cdi', raw, ['spec_dirs']);
  if (raw.spec_dirs !== undefined) into.specDirs = stringList('cdi.spec_dirs', raw.spec_dirs).map((d) => absolutePath('cdi.spec_dirs', d));
}

/** Turns a parsed TOML document into a config, or throws ConfigError naming the offending key. */
export function validateConfig(raw: Raw): BerthConfig {
  const config = defaultConfig();
  rejectUnknown('', raw, ['registry', 'runtime', 'network', 'cni', 'cdi']);
  if (raw.runtime !== undefined) {
    if (!isTable(raw.runtime)) throw new ConfigError('runtime', 'must be a table');
    parseRuntime(raw.runtime, config.runtime);
  }
  if (raw.registry !== undefined) {
    if (!isTable(raw.registry)) throw new ConfigError('registry', 'must be a table');
    parseRegistry(raw.registry, config.registry);
  }
  if (raw.network !== undefined) {
    if (!isTable(raw.network)) throw new ConfigError('network', 'must be a table');
    parseNetwork(raw.network, config.network);
  }
  if (raw.cni !== undefined) {
    if (!isTable(raw.cni)) throw new ConfigError('cni', 'must be a table');
    parseCni(raw.cni, config.cni);
  }
  if (raw.cdi !== undefined) {
    if (!isTable(raw.cdi)) throw new ConfigError('cdi', 'must be a table');
    parseCdi(raw.cdi, config.cdi);
  }
  return config;
}
