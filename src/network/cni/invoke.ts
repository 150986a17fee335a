import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { BerthError } from '../../errors.js';
import { run } from '../exec.js';
import { capabilityArgs, cniArgs, NetworkList, pluginInput, RuntimeInputs, versionAtLeast } from './config.js';

// Runs a network list's plugins per the CNI spec: ADD in order with prevResult chaining, CHECK in order with the
// cached result, DEL in reverse order with the cached result.

export const PLUGIN_TIMEOUT_MS = 60_000;

export function findPlugin(type: string, binDirs: string[]): string | undefined {
  for (const dir of binDirs) {
    const file = path.join(dir, type);
    try {
      accessSync(file, constants.X_OK);
      return file;
    } catch {
      /* next dir */
    }
  }
  return undefined;
}

/** The first plugin of the list not found in the bin dirs. */
export function missingPlugin(list: NetworkList, binDirs: string[]): string | undefined {
  return list.plugins.find((p) => findPlugin(p.type, binDirs) === undefined)?.type;
}

export interface Invocation {
  list: NetworkList;
  /** The config file it came from, for messages. */
  file: string;
  binDirs: string[];
  podId: string;
  name: string;
  namespace: string;
  uid: string;
  netnsPath: string;
  ifName: string;
  inputs: RuntimeInputs;
}

type Command = 'ADD' | 'DEL' | 'CHECK';

async function exec(inv: Invocation, command: Command, index: number, prevResult: unknown): Promise<unknown> {
  const p = inv.list.plugins[index]!;
  const where = `pod ${inv.podId}: CNI ${command} of plugin "${p.type}" (network "${inv.list.name}" from ${inv.file})`;
  const binary = findPlugin(p.type, inv.binDirs);
  if (!binary) throw new BerthError('failed_precondition', `${where}: plugin not found in ${inv.binDirs.join(', ')}`);
  const input = JSON.stringify(pluginInput(inv.list, p, capabilityArgs(inv.inputs), prevResult));
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin',
    CNI_COMMAND: command,
    CNI_CONTAINERID: inv.podId,
    CNI_NETNS: inv.netnsPath,
    CNI_IFNAME: inv.ifName,
    CNI_PATH: inv.binDirs.join(':'),
    CNI_ARGS: cniArgs(inv),
  };
  const result = await run(binary, [], { what: where, input, env, timeoutMs: PLUGIN_TIMEOUT_MS, okCodes: 'any' });
  if (result.code !== 0) {
    // Plugins report failures as JSON on stdout: {code, msg, details}.
    let detail = (result.stdout.trim() || result.stderr.trim()).slice(0, 500);
    try {
      const e = JSON.parse(result.stdout) as { code?: number; msg?: string; details?: string };
      detail = `code ${e.code}: ${e.msg ?? ''}${e.details ? ` (${e.details})` : ''}`;
    } catch {
      /* not JSON: keep the raw text */
    }
    throw new BerthError('internal', `${where} failed (exit ${result.code}): ${detail}`);
  }
  if (command !== 'ADD') return undefined;
  try {
    return JSON.parse(result.stdout);
  } catch {
    throw new BerthError('internal', `${where}: the plugin printed no valid JSON result: ${result.stdout.slice(0, 200)}`);
  }
}

/** ADD through the chain. A failure leaves what earlier plugins made: the caller DELs the whole list. */
export async function cniAdd(inv: Invocation): Promise<unknown> {
  let prev: unknown;
  for (let i = 0; i < inv.list.plugins.length; i++) prev = await exec(inv, 'ADD', i, prev);
  return prev;
}

export async function cniCheck(inv: Invocation, cached: unknown): Promise<void> {
  if (inv.list.disableCheck || !versionAtLeast(inv.list.cniVersion, '0.4.0')) return;
  for (let i = 0; i < inv.list.plugins.length; i++) await exec(inv, 'CHECK', i, cached);
}

/** DEL in reverse order; every plugin runs even if one fails, and the first failure is thrown. */
export async function cniDel(inv: Invocation, cached: unknown): Promise<void> {
  let first: unknown;
  const prev = versionAtLeast(inv.list.cniVersion, '0.4.0') ? cached : undefined;
  for (let i = inv.list.plugins.length - 1; i >= 0; i--) {
    try {
      await exec(inv, 'DEL', i, prev);
    } catch (err) {
      first ??= err;
    }
  }
  if (first) throw first;
}
