import { existsSync } from 'node:fs';
import { loadConfig } from '../config/load.js';
import { ConfigError } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import { log } from '../log.js';
import { servingBerth } from './serving.js';
import { chainPrefixFor } from '../network/index.js';
import { discoverCgroups } from '../kernel/cgroup-layout.js';
import { findOrphans, type Orphan } from './orphans.js';
import type { DoctorCommandOptions } from '../cli/args.js';
import { probe } from './probe.js';
import { removeOrphan } from './fix.js';

// `berth doctor [--json] [--fix [--force]]`: lists what the kernel and the disk hold that no berth record owns.
// Exit status: 0 nothing found; 1 orphans found (also when --fix removed them all: the node had a leak, and a
// script should hear of it); 2 a usage error, an unreadable state, --fix refused because a berth serves the root,
// or an orphan --fix could not remove.

/** What the command line gave: the daemon's own location flags and what to do. */
export type DoctorOptions = DoctorCommandOptions;

export interface DoctorOutput {
  stdout(text: string): void;
  stderr(text: string): void;
}

interface Report {
  root: string;
  stateDir: string;
  /** A berth serves this root (why, or null): what it is creating right now can show up as an orphan. */
  berthServing: string | null;
  orphans: Orphan[];
  skipped: string[];
  fix?: { removed: Orphan[]; failed: (Orphan & { error: string })[] } | { refused: string };
}

export async function runDoctor(opts: DoctorOptions, out: DoctorOutput): Promise<number> {
  let config;
  try {
    config = await loadConfig(opts.configFile, opts.configRequired);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    out.stderr(`berth: ${err.message}\n`);
    return 2;
  }
  if (!existsSync(opts.root)) {
    out.stderr(`berth: doctor: ${opts.root} does not exist: no berth state to check (see --root)\n`);
    return 2;
  }
  const berthServing = (await servingBerth(opts.socket, opts.root)) ?? null;
  let probed;
  try {
    probed = await probe({ root: opts.root, stateDir: opts.stateDir, bridge: config.network.bridge, chainPrefix: chainPrefixFor(config.network.bridge) });
  } catch (err) {
    out.stderr(`berth: doctor: cannot read berth's state: ${errorMessage(err)}\n`);
    return 2;
  }
  const orphans = findOrphans(probed.inventory, probed.owners);
  const report: Report = { root: opts.root, stateDir: opts.stateDir, berthServing, orphans, skipped: probed.skipped };
  if (opts.fix && orphans.length > 0) {
    if (berthServing && !opts.force) {
      report.fix = { refused: `a berth serves this root (${berthServing}): it may be creating what looks orphaned; stop it, or add --force` };
    } else {
      const layout = discoverCgroups();
      const removed: Orphan[] = [];
      const failed: (Orphan & { error: string })[] = [];
      for (const o of orphans) {
        try {
          await removeOrphan(o, { root: opts.root, layout, log });
          removed.push(o);
        } catch (err) {
          failed.push({ ...o, error: errorMessage(err) });
        }
      }
      report.fix = { removed, failed };
    }
  }
  if (opts.json) out.stdout(JSON.stringify(report, null, 2) + '\n');
  else out.stdout(renderTable(report));
  for (const s of probed.skipped) out.stderr(`berth: doctor: not checked: ${s}\n`);
  if (report.fix && 'refused' in report.fix) {
    out.stderr(`berth: doctor: --fix refused: ${report.fix.refused}\n`);
    return 2;
  }
  if (report.fix && report.fix.failed.length > 0) return 2;
  return orphans.length > 0 ? 1 : 0;
}

function renderTable(report: Report): string {
  const lines: string[] = [];
  if (report.berthServing) lines.push(`note: a berth serves this root (${report.berthServing}); a pod or container it is creating right now can be listed.`);
  if (report.orphans.length === 0) {
    lines.push(`nothing orphaned under ${report.root} and ${report.stateDir}`);
    return lines.join('\n') + '\n';
  }
  const fixed = new Set(report.fix && 'removed' in report.fix ? report.fix.removed : []);
  const failures = new Map(report.fix && 'failed' in report.fix ? report.fix.failed.map((f) => [f.object, f.error]) : []);
  const rows = report.orphans.map((o) => [
    o.kind,
    o.object,
    o.pod ? `pod ${o.pod.slice(0, 12)}` : o.container ? `container ${o.container.slice(0, 12)}` : '-',
    fixed.has(o) ? 'removed' : failures.has(o.object) ? `NOT removed: ${failures.get(o.object)}` : o.reason,
  ]);
  const header = ['KIND', 'OBJECT', 'OWNER', report.fix && !('refused' in report.fix) ? 'RESULT' : 'WHY'];
  const widths = header.slice(0, 3).map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  for (const row of [header, ...rows]) lines.push(row.map((cell, i) => (i < 3 ? cell.padEnd(widths[i]!) : cell)).join('  '));
  lines.push(`${report.orphans.length} orphan${report.orphans.length === 1 ? '' : 's'} found`);
  return lines.join('\n') + '\n';
}
