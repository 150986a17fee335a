import { isDeepStrictEqual } from 'node:util';
import { BerthConfig, CONFIG_SCHEMA, fieldOf } from './schema.js';

// What a SIGHUP may change in a running berth. The registry section is read at every pull and the log level at
// every line; everything else shaped state that exists now (the bridge, cgroups, the socket) and needs a restart.

export function reloadable(key: string): boolean {
  return key.startsWith('registry.') || key === 'log.level';
}

export interface ConfigChange {
  key: string;
  from: unknown;
  to: unknown;
}

/** Every key whose value differs between two configs, in schema order. */
export function changedKeys(running: BerthConfig, next: BerthConfig): ConfigChange[] {
  const a = running as unknown as Record<string, Record<string, unknown>>;
  const b = next as unknown as Record<string, Record<string, unknown>>;
  const changes: ConfigChange[] = [];
  for (const section of CONFIG_SCHEMA) {
    for (const k of section.keys) {
      const field = fieldOf(k.key);
      const from = a[section.name][field];
      const to = b[section.name][field];
      if (!isDeepStrictEqual(from, to)) changes.push({ key: `${section.name}.${k.key}`, from, to });
    }
  }
  return changes;
}

/** The config berth runs with after a reload: the reloadable sections from the file, the rest as it was. */
export function afterReload(running: BerthConfig, next: BerthConfig): BerthConfig {
  return { ...running, registry: next.registry, log: next.log };
}
