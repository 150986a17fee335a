import { promises as fs } from 'node:fs';
import { parse } from 'smol-toml';
import { BerthConfig, ConfigError, defaultConfig, validateConfig } from './schema.js';

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
  return validateConfig(doc);
}
