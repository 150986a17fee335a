import { BerthConfig, CONFIG_SCHEMA, fieldOf } from './schema.js';

// Prints a configuration as TOML from the schema the loader validates with, so `berth config default` lists every
// key the loader accepts, with the meaning the schema gives it, and reads back to the same configuration.

function tomlString(s: string): string {
  // JSON's escapes are TOML's, except that TOML also wants DEL escaped.
  return JSON.stringify(s).replace(/\x7f/g, '\\u007f');
}

function tomlKey(k: string): string {
  return /^[A-Za-z0-9_-]+$/.test(k) ? k : tomlString(k);
}

export function tomlValue(value: unknown): string {
  if (typeof value === 'string') return tomlString(value);
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`;
  if (typeof value === 'object' && value !== null) {
    const entries = Object.entries(value).filter(([, v]) => v !== undefined);
    return entries.length === 0 ? '{}' : `{ ${entries.map(([k, v]) => `${tomlKey(k)} = ${tomlValue(v)}`).join(', ')} }`;
  }
  throw new TypeError(`no TOML form for ${typeof value}`);
}

/** Every section and key of `config`, each key under a comment saying what it means. */
export function renderConfig(config: BerthConfig, preamble: string[] = []): string {
  const lines = preamble.map((l) => `# ${l}`.trimEnd());
  const values = config as unknown as Record<string, Record<string, unknown>>;
  for (const section of CONFIG_SCHEMA) {
    if (lines.length > 0) lines.push('');
    lines.push(`# ${section.meaning}`, `[${section.name}]`);
    for (const k of section.keys) {
      const value = values[section.name][fieldOf(k.key)];
      lines.push(`# ${k.meaning}`, `${k.key} = ${tomlValue(k.toToml ? k.toToml(value) : value)}`);
    }
  }
  return lines.join('\n') + '\n';
}
