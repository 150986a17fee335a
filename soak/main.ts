// npm run soak -- [--minutes N] [--workers N] [--residents N] [--restart-every SECONDS] [--json]
//
// A bounded soak of a berth of its own (temporary root, state dir, socket and bridge; a loopback registry with a
// busybox image): workers cycle pods and containers through their whole life while resident pods run throughout,
// and berth is restarted every --restart-every seconds, by SIGTERM and SIGKILL in turn, whatever RPCs are in
// flight. At the end everything is torn down through the RPCs and nothing may be left: berth's own state, the
// kernel's objects (tests' hostLeftovers) and `berth doctor --json` of that root must all find nothing.
// Exit status: 0 clean; 1 leaks or unexpected errors (or no cycle completed); 2 a usage error.

import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { LAUNCHER } from '../test/helpers/berth.js';
import { doctorOrphans, hostLeftovers, stateLeftovers } from '../test/helpers/cri.js';
import { startRegistry, type Registry } from '../test/helpers/registry.js';
import { busyboxLayer, pushImage } from '../test/helpers/images.js';
import { chainPrefixFor } from '../src/network/index.js';
import { rssKiB, Supervisor, type RestartRecord } from './supervisor.js';
import { checkResident, runWorker, startResident, Tally, type Workload } from './workload.js';

const USAGE = 'usage: npm run soak -- [--minutes N] [--workers N] [--residents N] [--restart-every SECONDS] [--json]';

export interface SoakOptions {
  minutes: number;
  workers: number;
  residents: number;
  restartEverySeconds: number;
  json: boolean;
}

export interface SoakReport {
  minutes: number;
  workers: number;
  residents: number;
  cycles: number;
  restarts: { sigterm: number; sigkill: number; slowestMs: number };
  /** RPCs a restart cut off (expected: the worker reconciled, as kubelet would). */
  interruptedByRestart: Record<string, number>;
  unexpectedErrors: Record<string, number>;
  errorSamples: string[];
  leaks: string[];
  doctorOrphans: number | string;
  rssKiB: { start?: number; end?: number; beforeRestarts: (number | undefined)[] };
  ok: boolean;
}

class UsageError extends Error {}

function number(name: string, value: string | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  const n = Number(value);
  if (!/^\d+(\.\d+)?$/.test(value) || n < min) throw new UsageError(`--${name} must be a number >= ${min}, not ${JSON.stringify(value)}`);
  return n;
}

export function soakOptions(argv: string[]): SoakOptions {
  let v;
  try {
    v = parseArgs({
      args: argv,
      options: {
        minutes: { type: 'string' },
        workers: { type: 'string' },
        residents: { type: 'string' },
        'restart-every': { type: 'string' },
        json: { type: 'boolean', default: false },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  const minutes = number('minutes', v.minutes, 10, 0.1);
  return {
    minutes,
    workers: Math.floor(number('workers', v.workers, 4, 1)),
    residents: Math.floor(number('residents', v.residents, 2, 0)),
    // A few restarts in any soak: every 2 minutes in a long one, more often in a short one.
    restartEverySeconds: number('restart-every', v['restart-every'], Math.min(120, (minutes * 60) / 4), 5),
    json: v.json,
  };
}

const progress = (msg: string) => process.stderr.write(`soak: ${new Date().toISOString()} ${msg}\n`);

export async function soak(opts: SoakOptions): Promise<SoakReport> {
  let registry: Registry | undefined;
  let sup: Supervisor | undefined;
  try {
    registry = await startRegistry();
    const image = (await pushImage(registry, 'berth/soak', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } })).ref;
    sup = await Supervisor.start({ config: `[registry]\ninsecure = ["${registry.host}"]\n`, logLevel: 'info' });
    const first = sup.berth;
    const net = JSON.parse(await fs.readFile(path.join(first.dir, 'testnet.json'), 'utf8')) as { bridge: string };
    const logDir = path.join(first.dir, 'logs');
    await first.images.PullImage({ image: { image } });
    const rssStart = await rssKiB(first.child.pid);
    progress(`berth ${first.child.pid} serving under ${first.dir}: ${opts.minutes} min, ${opts.workers} workers, ${opts.residents} residents, a restart every ${opts.restartEverySeconds} s`);

    let end = Date.now() + opts.minutes * 60_000;
    let wakeRestarter = () => {};
    const interrupt = () => {
      progress('interrupted: finishing the cycles under way, then the teardown');
      end = Date.now();
      wakeRestarter();
    };
    process.once('SIGINT', interrupt);
    const tally = new Tally();
    const w: Workload = { sup, image, logDir, cgroupParents: [], tally, until: () => end };
    const residents = [];
    for (let i = 0; i < opts.residents; i++) residents.push(await startResident(w));

    const restarter = (async () => {
      for (let i = 0; ; i++) {
        const at = Math.min(Date.now() + opts.restartEverySeconds * 1000, end);
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, Math.max(at - Date.now(), 0));
          wakeRestarter = () => {
            clearTimeout(timer);
            resolve();
          };
        });
        if (Date.now() >= end - 5000) break;
        const signal: NodeJS.Signals = i % 2 === 0 ? 'SIGTERM' : 'SIGKILL';
        let r;
        try {
          r = await sup!.restart(signal);
        } catch (err) {
          tally.add(err, 'restart');
          progress(`restart ${i + 1} by ${signal} failed: ending the soak`);
          end = Date.now();
          break;
        }
        progress(`restart ${i + 1} by ${signal}: berth was at ${r.rssKiB} KiB, served again after ${r.downMs} ms (pid ${sup!.berth.child.pid})`);
        for (const res of residents) await checkResident(w, res);
      }
    })();
    const cycles = (await Promise.all(Array.from({ length: opts.workers }, (_, i) => runWorker(w, `w${i}`)))).reduce((a, b) => a + b, 0);
    await restarter;
    process.removeListener('SIGINT', interrupt);
    for (const res of residents) await checkResident(w, res);
    progress(`${cycles} cycles done; tearing down`);

    const b = await sup.revive();
    const rssEnd = await rssKiB(b.child.pid);
    const leaks: string[] = [];
    try {
      for (const p of (await b.runtime.ListPodSandbox({})).items) {
        await b.runtime.StopPodSandbox({ pod_sandbox_id: p.id });
        await b.runtime.RemovePodSandbox({ pod_sandbox_id: p.id });
      }
      for (const img of (await b.images.ListImages({})).images) await b.images.RemoveImage({ image: { image: img.id } });
    } catch (err) {
      tally.add(err, 'teardown');
    }
    leaks.push(...(await stateLeftovers({ root: b.root, stateDir: b.stateDir, bridge: net.bridge, chainPrefix: chainPrefixFor(net.bridge) })));
    await b.stop();
    const found = await doctorOrphans(b, LAUNCHER);
    const orphans = typeof found === 'string' ? found : found.length;
    if (typeof found === 'string') leaks.push(`berth doctor: ${found}`);
    else for (const o of found) leaks.push(`berth doctor orphan: ${JSON.stringify(o)}`);
    leaks.push(...(await hostLeftovers(b.dir, w.cgroupParents)));

    const count = (signal: NodeJS.Signals) => sup!.restarts.filter((r: RestartRecord) => r.signal === signal).length;
    const unexpected = Object.fromEntries(tally.unexpected);
    return {
      minutes: opts.minutes,
      workers: opts.workers,
      residents: opts.residents,
      cycles,
      restarts: { sigterm: count('SIGTERM'), sigkill: count('SIGKILL'), slowestMs: Math.max(0, ...sup.restarts.map((r) => r.downMs)) },
      interruptedByRestart: Object.fromEntries(tally.interrupted),
      unexpectedErrors: unexpected,
      errorSamples: tally.samples,
      leaks,
      doctorOrphans: orphans,
      rssKiB: { start: rssStart, end: rssEnd, beforeRestarts: sup.restarts.map((r) => r.rssKiB) },
      ok: leaks.length === 0 && Object.keys(unexpected).length === 0 && cycles > 0,
    };
  } finally {
    await sup?.berth.cleanup().catch((err) => progress(`cleanup: ${(err as Error).message}`));
    await registry?.stop();
  }
}

export function renderReport(r: SoakReport): string {
  const kinds = (m: Record<string, number>) => (Object.keys(m).length === 0 ? 'none' : Object.entries(m).map(([k, n]) => `${k} x${n}`).join(', '));
  return [
    `soak ${r.ok ? 'PASSED' : 'FAILED'}: ${r.minutes} min, ${r.workers} workers, ${r.residents} resident pods`,
    `cycles completed: ${r.cycles}`,
    `berth restarts: ${r.restarts.sigterm} by SIGTERM, ${r.restarts.sigkill} by SIGKILL (slowest back in ${r.restarts.slowestMs} ms)`,
    `RPCs cut off by a restart (reconciled): ${kinds(r.interruptedByRestart)}`,
    `unexpected errors: ${kinds(r.unexpectedErrors)}`,
    ...r.errorSamples.map((s) => `  ${s}`),
    `leaks: ${r.leaks.length === 0 ? 'none' : r.leaks.length} (berth doctor: ${r.doctorOrphans} orphans)`,
    ...r.leaks.map((l) => `  ${l}`),
    `berth RSS: ${r.rssKiB.start} KiB at start, ${r.rssKiB.end} KiB at end; before each restart: ${r.rssKiB.beforeRestarts.join(', ') || '-'} KiB`,
  ].join('\n');
}

async function main(): Promise<number> {
  let opts;
  try {
    opts = soakOptions(process.argv.slice(2));
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`soak: ${err.message}\n${USAGE}\n`);
    return 2;
  }
  const report = await soak(opts);
  process.stdout.write(opts.json ? JSON.stringify(report, null, 2) + '\n' : renderReport(report) + '\n');
  return report.ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`soak: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
