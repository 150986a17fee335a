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

export interface BerthConfig {
  registry: RegistryConfig;
  runtime: RuntimeConfig;
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

function rejectUnknown(section: string, table: Raw, known: string[]): void {
  for (const key of Object.keys(table)) {
    if (!known.includes(key)) throw new ConfigError(section ? `${section}.${key}` : key, 'unknown key');
  }
}

function parseRegistry(raw: Raw, into: RegistryConfig): void {
  rejectUnknown('registry', raw, ['insecure', 'mirrors', 'max_concurrent_downloads', 'request_timeout_seconds']);
  if (raw.insecure !== undefined) into.insecure = stringList('registry.insecure', raw.insecure);
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

/** Turns a parsed TOML document into a config, or throws ConfigError naming the offending key. */
export function validateConfig(raw: Raw): BerthConfig {
  const config = defaultConfig();
  rejectUnknown('', raw, ['registry', 'runtime']);
  if (raw.runtime !== undefined) {
    if (!isTable(raw.runtime)) throw new ConfigError('runtime', 'must be a table');
    parseRuntime(raw.runtime, config.runtime);
  }
  if (raw.registry !== undefined) {
    if (!isTable(raw.registry)) throw new ConfigError('registry', 'must be a table');
    parseRegistry(raw.registry, config.registry);
  }
  return config;
}
