import { promises as fs } from 'node:fs';
import { parse } from 'smol-toml';
import { BerthConfig, ConfigError, defaultConfig, validateConfig } from './schema.js';
import { hostDeviceProbe, resolveBlockioClasses } from './blockio.js';
import { discoverCgroups } from '../kernel/cgroup-layout.js';

/** Reads the TOML config; a missing file at the default path means embedded defaults. */
export async function loadConfig(file: string, required: boolean): Promise<BerthConfig> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !required) return defaultConfig();
    throw new ConfigError(file, `cannot read: ${(err as Error).message}`);
  }
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new ConfigError(file, `invalid TOML: ${(err as Error).message}`);
  }
  const config = validateConfig(doc);
  await checkCaFiles(config);
  await checkStreamingTls(config);
  // Resolved again by the daemon, which keeps the result; here so that `berth config check` names a bad device too.
  if (Object.keys(config.blockio.classes).length > 0) await resolveBlockioClasses(config.blockio, hostDeviceProbe(discoverCgroups()));
  return config;
}

// A CA file that is missing or holds no certificate would only show at the first pull from that registry, as a
// TLS failure far from its cause: it is refused with the config instead (also by `berth config check`).
async function checkCaFiles(config: BerthConfig): Promise<void> {
  const files: [string, string][] = config.registry.caFiles.map((f) => ['registry.ca_files', f]);
  for (const [host, h] of Object.entries(config.registry.hosts)) {
    if (h.caFile) files.push([`registry.hosts."${host}".ca_file`, h.caFile]);
  }
  for (const [key, file] of files) {
    let pem: string;
    try {
      pem = await fs.readFile(file, 'utf8');
    } catch (err) {
      throw new ConfigError(key, `cannot read ${file}: ${(err as Error).message}`);
    }
    if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError(key, `${file} holds no PEM certificate`);
  }
}

// The streaming server's certificate and key are read at start; a missing or wrong file is named here, by key, so
// that `berth config check` catches it too.
async function checkStreamingTls(config: BerthConfig): Promise<void> {
  const { tlsCertFile, tlsKeyFile } = config.streaming;
  const files: [string, string, RegExp, string][] = [
    ['streaming.tls_cert_file', tlsCertFile, /-----BEGIN CERTIFICATE-----/, 'PEM certificate'],
    ['streaming.tls_key_file', tlsKeyFile, /-----BEGIN [A-Z ]*PRIVATE KEY-----/, 'PEM private key'],
  ];
  for (const [key, file, marker, what] of files) {
    if (!file) continue;
    let pem: string;
    try {
      pem = await fs.readFile(file, 'utf8');
    } catch (err) {
      throw new ConfigError(key, `cannot read ${file}: ${(err as Error).message}`);
    }
    if (!marker.test(pem)) throw new ConfigError(key, `${file} holds no ${what}`);
  }
}
