// npm run bench: sequential pod/container lifecycle cycles against a freshly started berth (and optionally
// another CRI runtime), timed per RPC from this process over gRPC.
//
//   node dist/bench/main.js [--quick] [--cycles N] [--endpoint unix:///path] [--image REF] [--out DIR]

import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startBerth, type BerthProcess } from '../test/helpers/berth.js';
import { startRegistry, type Registry } from '../test/helpers/registry.js';
import { busyboxLayer, pushImage, DEFAULT_PATH_ENV } from '../test/helpers/images.js';
import { criClient, type CriClient } from './cri-client.js';
import { emptySamples, Interrupted, removeLeftovers, runCycle, type Leftovers } from './lifecycle.js';
import { renderMarkdown, renderTables, toJson, type BenchResult, type HostInfo, type RuntimeRun } from './report.js';
import { nsToMs } from './stats.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const DEFAULT_OUT = path.resolve(here, '../../bench/results');
const USAGE = 'usage: node dist/bench/main.js [--quick] [--cycles N] [--endpoint unix:///path] [--image REF] [--out DIR]';

interface Options {
  cycles: number;
  endpoint?: string;
  image?: string;
  out: string;
}

class UsageError extends Error {}

function options(argv: string[]): Options | 'help' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        quick: { type: 'boolean', default: false },
        cycles: { type: 'string' },
        endpoint: { type: 'string' },
        image: { type: 'string' },
        out: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }).values;
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (parsed.help) return 'help';
  let cycles = parsed.quick ? 2 : 20;
  if (parsed.cycles !== undefined) {
    if (!/^[1-9]\d*$/.test(parsed.cycles)) throw new UsageError(`--cycles must be a positive integer, not ${JSON.stringify(parsed.cycles)}`);
    cycles = Number(parsed.cycles);
  }
  if (parsed.image !== undefined && parsed.endpoint === undefined) throw new UsageError('--image names the image for --endpoint; give --endpoint too');
  if (parsed.endpoint !== undefined && !parsed.endpoint.includes('://')) {
    throw new UsageError(`--endpoint must be a URL like unix:///run/containerd/containerd.sock, not ${JSON.stringify(parsed.endpoint)}`);
  }
  return { cycles, endpoint: parsed.endpoint, image: parsed.image, out: path.resolve(parsed.out ?? DEFAULT_OUT) };
}

function hostInfo(): HostInfo {
  const cpus = os.cpus();
  return { node: process.version, os: `${os.type()} ${os.release()}`, arch: os.arch(), cpus: cpus.length, cpuModel: cpus[0]?.model.trim() ?? 'unknown' };
}

const progress = (msg: string) => process.stderr.write(`bench: ${msg}\n`);

interface Identity {
  runtimeName?: string;
  runtimeVersion?: string;
}

/** The Version RPC: proves the endpoint answers before any work is done against it. */
async function identify(cri: CriClient): Promise<Identity> {
  try {
    const v = await cri.runtime.Version({ version: 'v1' });
    return { runtimeName: v.runtime_name || undefined, runtimeVersion: v.runtime_version || undefined };
  } catch (err) {
    throw new Error(`cannot reach the CRI runtime at ${cri.endpoint}: ${(err as Error).message}`);
  }
}

/** Pull (timed), then `cycles` lifecycles. When `ownImage`, an image this run pulled is removed again afterwards. */
async function measure(
  label: string | undefined,
  cri: CriClient,
  id: Identity,
  image: string,
  cycles: number,
  ownImage: boolean,
  signal: AbortSignal,
): Promise<RuntimeRun> {
  if (signal.aborted) throw new Interrupted();
  const { runtimeName, runtimeVersion } = id;
  const name = label ?? (runtimeName && runtimeName !== 'berth' ? runtimeName : 'other');
  const present = ownImage ? false : Boolean((await cri.images.ImageStatus({ image: { image } })).image);
  progress(`${name}: pulling ${image}`);
  const t0 = process.hrtime.bigint();
  try {
    await cri.images.PullImage({ image: { image } });
  } catch (err) {
    const hint = ownImage ? '' : ' (use --image REF for an image this runtime can pull, or configure the bench registry as insecure in it)';
    throw new Error(`${(err as Error).message}${hint}`);
  }
  const pullMs = nsToMs(process.hrtime.bigint() - t0);

  const samples = emptySamples();
  const left: Leftovers = { pods: new Set(), containers: new Set() };
  try {
    for (let i = 1; i <= cycles; i++) {
      await runCycle(cri, image, samples, left, signal);
      const full = samples['full cycle'];
      progress(`${name}: cycle ${i}/${cycles} ${full[full.length - 1]!.toFixed(1)} ms`);
    }
  } finally {
    if (left.pods.size || left.containers.size) {
      const errors = await removeLeftovers(cri, left);
      for (const e of errors) progress(`${name}: cleanup: ${e}`);
    }
    if (!ownImage && !present) {
      await cri.images.RemoveImage({ image: { image } }).catch((err: Error) => progress(`${name}: cleanup: ${err.message}`));
    }
  }
  return { label: name, endpoint: cri.endpoint, runtimeName, runtimeVersion, image, pullMs, samples };
}

/**
 * berth.cleanup() removes the pods through berth and stops it; a berth that no longer answers would hold it
 * forever, so after graceMs its process (only that pid) is killed, which fails the pending RPCs and lets cleanup finish.
 */
async function stopBerth(berth: BerthProcess, graceMs: number): Promise<void> {
  const timer = setTimeout(() => {
    progress(`berth (pid ${berth.child.pid}) did not clean up within ${graceMs} ms: killing it`);
    berth.child.kill('SIGKILL');
  }, graceMs);
  try {
    await berth.cleanup();
  } catch (err) {
    progress(`berth cleanup: ${(err as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
}

async function writeResults(out: string, result: BenchResult): Promise<string[]> {
  await fs.mkdir(out, { recursive: true });
  const stamp = result.startedAt.replace(/[:.]/g, '-');
  const md = renderMarkdown(result);
  const json = JSON.stringify(toJson(result), null, 2) + '\n';
  const files: [string, string][] = [
    [`${stamp}.md`, md],
    [`${stamp}.json`, json],
    ['latest.md', md],
    ['latest.json', json],
  ];
  for (const [name, text] of files) await fs.writeFile(path.join(out, name), text);
  return files.map(([name]) => path.join(out, name));
}

async function main(argv: string[]): Promise<number> {
  let opts;
  try {
    opts = options(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`bench: ${err.message}\n${USAGE}\n`);
    return 2;
  }
  if (opts === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }

  let registry: Registry | undefined;
  let berth: BerthProcess | undefined;
  const clients: CriClient[] = [];
  let cleaning: Promise<void> | undefined;
  let phase: 'setup' | 'berth' | 'other' | 'report' = 'setup';
  const cleanup = () =>
    (cleaning ??= (async () => {
      if (berth) await stopBerth(berth, 60_000);
      await registry?.stop().catch((err: Error) => progress(`registry cleanup: ${err.message}`));
      for (const c of clients) c.close();
    })());
  // First signal: issue no further RPC; the running cycle stops, removes what it created, and cleanup follows.
  // Second signal: clean up now and exit.
  const abort = new AbortController();
  const onSignal = (signal: NodeJS.Signals) => {
    if (!abort.signal.aborted) {
      progress(`${signal}: stopping after the current RPC, then cleaning up (again to force)`);
      abort.abort();
      return;
    }
    progress(`${signal}: cleaning up now`);
    const b = berth;
    if (b) setTimeout(() => b.child.exitCode === null && b.child.signalCode === null && b.child.kill('SIGKILL'), 5_000).unref();
    void cleanup().finally(() => process.exit(130));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    const startedAt = new Date().toISOString();
    let other: { cri: CriClient; id: Identity } | undefined;
    if (opts.endpoint) {
      const cri = criClient(opts.endpoint);
      clients.push(cri);
      other = { cri, id: await identify(cri) };
    }
    progress('starting registry');
    registry = await startRegistry();
    const pushed = await pushImage(registry, 'bench/busybox', 'v1', {
      layers: [await busyboxLayer()],
      config: { Env: [DEFAULT_PATH_ENV], Cmd: ['sh'] },
    });
    progress(`pushed ${pushed.ref}; starting berth`);
    berth = await startBerth({ config: `[registry]\ninsecure = [${JSON.stringify(registry.host)}]\n` });

    const berthClient = criClient(`unix://${berth.socket}`);
    clients.push(berthClient);
    phase = 'berth';
    const runs: RuntimeRun[] = [await measure('berth', berthClient, await identify(berthClient), pushed.ref, opts.cycles, true, abort.signal)];
    phase = 'other';
    if (other) runs.push(await measure(undefined, other.cri, other.id, opts.image ?? pushed.ref, opts.cycles, false, abort.signal));
    phase = 'report';

    const result: BenchResult = { startedAt, finishedAt: new Date().toISOString(), cycles: opts.cycles, host: hostInfo(), runs };
    process.stdout.write(renderTables(result));
    const files = await writeResults(opts.out, result);
    progress(`wrote ${files.join(', ')}`);
    return 0;
  } catch (err) {
    if (err instanceof Interrupted || abort.signal.aborted) {
      process.stderr.write('bench interrupted\n');
      return 130;
    }
    process.stderr.write(`bench failed: ${err instanceof Error ? err.message : String(err)}\n`);
    if (berth && phase !== 'other' && phase !== 'report') process.stderr.write(`last berth log lines:\n${berth.logs.slice(-30).join('\n')}\n`);
    return 1;
  } finally {
    await cleanup();
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`bench crashed: ${(err as Error)?.stack ?? String(err)}\n`);
    process.exit(1);
  },
);
