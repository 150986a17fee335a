import { run } from './exec.js';
import { parseSave, SavedTables } from './rules.js';

// iptables through its batch tools: one iptables-save to read, one iptables-restore --noflush per change.

export async function iptablesSave(what: string, table?: string): Promise<SavedTables> {
  const { stdout } = await run('iptables-save', table ? ['-t', table] : [], { what: `${what}: iptables-save`, timeoutMs: 30_000 });
  return parseSave(stdout);
}

export async function iptablesRestore(text: string, what: string): Promise<void> {
  if (text === '') return;
  await run('iptables-restore', ['--noflush', '-w', '10'], { what: `${what}: iptables-restore`, input: text, timeoutMs: 30_000 });
}
