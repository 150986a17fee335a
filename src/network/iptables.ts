import { INPUT, run, runSpawned } from './exec.js';
import { parseSave, SavedTables } from './rules.js';

// iptables through its batch tools: one iptables-save to read, one iptables-restore --noflush per change.

export async function iptablesSave(what: string, table?: string): Promise<SavedTables> {
  const { stdout } = await run('iptables-save', table ? ['-t', table] : [], { what: `${what}: iptables-save`, timeoutMs: 30_000 });
  return parseSave(stdout);
}

/** With `scratchDir` (the pod-start path), the rules go through a file there and the process is posix_spawned. */
export async function iptablesRestore(text: string, what: string, scratchDir?: string): Promise<void> {
  if (text === '') return;
  const opts = { what: `${what}: iptables-restore`, input: text, timeoutMs: 30_000 };
  if (scratchDir) await runSpawned('iptables-restore', ['--noflush', '-w', '10', INPUT], { ...opts, scratchDir });
  else await run('iptables-restore', ['--noflush', '-w', '10'], opts);
}
