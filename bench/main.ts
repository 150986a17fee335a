// npm run bench: latency, density and memory of a freshly started berth (and optionally another CRI runtime in the
// same run), measured over gRPC from this process.
//
//   node dist/bench/main.js [--quick] [--cycles N] [--pulls N] [--concurrent 20,50] [--memory-pods N]
//                           [--relist-pods N] [--relists N] [--relist-warmup N] [--execs N] [--forwards N] [--forward-mib N]
//                           [--big-pulls N] [--load-starts N]
//                           [--endpoint unix:///path] [--registry HOST:PORT] [--image REF] [--out DIR]

import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { startBerth, type BerthProcess } from '../test/helpers/berth.js';
import { startRegistry, type Registry } from '../test/helpers/registry.js';
import { busyboxLayer, layer, pushImage, DEFAULT_PATH_ENV, type PushedImage } from '../test/helpers/images.js';
import { criClient, type CriClient } from './cri-client.js';
import { collectInside } from './inside.js';
import { BLKIO_ANNOTATIONS, BLKIO_CLASS, CONTROL_VARIANTS, emptySamples, Interrupted, removeLeftovers, runCycle, type Leftovers } from './lifecycle.js';
import { wholeDiskOf } from './block-device.js';
import { relistProblems, relistSummary, streamingSummary, type BenchResult, type HostInfo, type MemUsage, type RuntimeRun } from './model.js';
import { BIG_IMAGE_LAYERS, pushBigImage } from './big-image.js';
import { measureConcurrent, measureDaemon, measureMemory, measurePull, measurePullUnderLoad, measureRelist, type StartedPod } from './phases.js';
import { pidsListeningOn, processTable } from './procfs.js';
import { renderMarkdown, renderTables, toJson } from './report.js';
import { summarize } from './stats.js';
import { measureScrape } from './scrape.js';
import { buildThroughputServer, measureStreaming, THROUGHPUT_SERVER } from './streaming.js';
import { renderSvg } from './svg.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const DEFAULT_OUT = path.resolve(here, '../../bench/results');
const THROUGHPUT_SOURCE = path.resolve(here, '../../bench/fixtures/throughput-server.c');
/** berth's root and state directory in the bench: beside its defaults (/var/lib/berth, /run/berth). */
const BENCH_ROOT_PARENT = '/var/lib';
const BENCH_STATE_PARENT = '/run';
const USAGE =
  'usage: node dist/bench/main.js [--quick] [--cycles N] [--pulls N] [--concurrent 20,50] [--memory-pods N]\n' +
  '                               [--relist-pods N] [--relists N] [--execs N] [--forwards N] [--forward-mib N]\n' +
  '                               [--big-pulls N] [--load-starts N]\n' +
  '                               [--endpoint unix:///path] [--registry HOST:PORT] [--image REF] [--out DIR]\n' +
  '  --quick        2 cycles, 1 cold + 1 warm pull, 5 pods at once, 3 pods for memory, 3 relists with 5 pods\n' +
  '  --big-pulls    cold pulls of the 5-layer ~60 MiB image (default 3; 0 skips it and the pull-under-load phase)\n' +
  '  --load-starts  pod starts timed without, then during, cold pulls of that image (default 20; 0 skips the phase)\n' +
  '  --relist-pods  pods running while the lists are timed (default 100; 0 skips the phase)\n' +
  '  --relists      relists timed (default 20), and as many /metrics scrapes (berth)\n' +
  '  --relist-warmup  untimed relists before them (default 1000: kubelet relists every second); the first 20 are reported apart\n' +
  '  --execs        execs of echo timed to their first output byte (default 20; 0 skips exec and port-forward)\n' +
  '  --forwards     port-forward throughput measurements per direction (default 3; 0 skips them)\n' +
  '  --forward-mib  MiB moved per port-forward measurement (default 64)\n' +
  '  --endpoint     also measure the CRI runtime there, same run, and compare\n' +
  '  --registry     push the bench image to this plain-HTTP registry (e.g. 127.0.0.1:5000) instead of a private one;\n' +
  '                 both runtimes pull it from there\n' +
  '  --image        image for the --endpoint runtime (default: the bench image)';

export interface Options {
  cycles: number;
  pulls: number;
  bigPulls: number;
  loadStarts: number;
  concurrent: number[];
  memoryPods: number;
  relistPods: number;
  relists: number;
  relistWarmup: number;
  execs: number;
  forwards: number;
  forwardMiB: number;
  endpoint?: string;
  registry?: string;
  image?: string;
  out: string;
}

class UsageError extends Error {}

function positive(name: string, value: string, allowZero = false): number {
  if (!(allowZero ? /^\d+$/ : /^[1-9]\d*$/).test(value)) throw new UsageError(`--${name} must be a ${allowZero ? 'non-negative' : 'positive'} integer, not ${JSON.stringify(value)}`);
  return Number(value);
}

function options(argv: string[]): Options | 'help' {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: {
        quick: { type: 'boolean', default: false },
        cycles: { type: 'string' },
        pulls: { type: 'string' },
        'big-pulls': { type: 'string' },
        'load-starts': { type: 'string' },
        concurrent: { type: 'string' },
        'memory-pods': { type: 'string' },
        'relist-pods': { type: 'string' },
        relists: { type: 'string' },
        'relist-warmup': { type: 'string' },
        execs: { type: 'string' },
        forwards: { type: 'string' },
        'forward-mib': { type: 'string' },
        endpoint: { type: 'string' },
        registry: { type: 'string' },
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
  const quick = parsed.quick;
  const cycles = parsed.cycles !== undefined ? positive('cycles', parsed.cycles) : quick ? 2 : 20;
  const pulls = parsed.pulls !== undefined ? positive('pulls', parsed.pulls) : quick ? 1 : 3;
  const bigPulls = parsed['big-pulls'] !== undefined ? positive('big-pulls', parsed['big-pulls'], true) : quick ? 1 : 3;
  const loadStarts = parsed['load-starts'] !== undefined ? positive('load-starts', parsed['load-starts'], true) : quick ? 3 : 20;
  const memoryPods = parsed['memory-pods'] !== undefined ? positive('memory-pods', parsed['memory-pods'], true) : quick ? 3 : 30;
  const relistPods = parsed['relist-pods'] !== undefined ? positive('relist-pods', parsed['relist-pods'], true) : quick ? 5 : 100;
  const relists = parsed.relists !== undefined ? positive('relists', parsed.relists) : quick ? 3 : 20;
  const relistWarmup = parsed['relist-warmup'] !== undefined ? positive('relist-warmup', parsed['relist-warmup'], true) : quick ? 20 : 1000;
  const execs = parsed.execs !== undefined ? positive('execs', parsed.execs, true) : quick ? 3 : 20;
  const forwards = parsed.forwards !== undefined ? positive('forwards', parsed.forwards, true) : quick ? 1 : 3;
  const forwardMiB = parsed['forward-mib'] !== undefined ? positive('forward-mib', parsed['forward-mib']) : quick ? 8 : 64;
  let concurrent = quick ? [5] : [20, 50];
  if (parsed.concurrent !== undefined) {
    concurrent = parsed.concurrent === '' || parsed.concurrent === '0' ? [] : parsed.concurrent.split(',').map((v) => positive('concurrent', v.trim()));
  }
  if (parsed.image !== undefined && parsed.endpoint === undefined) throw new UsageError('--image names the image for --endpoint; give --endpoint too');
  if (parsed.endpoint !== undefined && !parsed.endpoint.includes('://')) {
    throw new UsageError(`--endpoint must be a URL like unix:///run/containerd/containerd.sock, not ${JSON.stringify(parsed.endpoint)}`);
  }
  if (parsed.registry !== undefined && !/^[A-Za-z0-9.-]+(:\d+)?$/.test(parsed.registry)) {
    throw new UsageError(`--registry must be HOST or HOST:PORT, not ${JSON.stringify(parsed.registry)}`);
  }
  return {
    cycles,
    pulls,
    bigPulls,
    loadStarts,
    concurrent,
    memoryPods,
    relistPods,
    relists,
    relistWarmup,
    execs,
    forwards,
    forwardMiB,
    endpoint: parsed.endpoint,
    registry: parsed.registry,
    image: parsed.image,
    out: path.resolve(parsed.out ?? DEFAULT_OUT),
  };
}

function hostInfo(): HostInfo {
  const cpus = os.cpus();
  return {
    node: process.version,
    os: `${os.type()} ${os.release()}`,
    arch: os.arch(),
    cpus: cpus.length,
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    memTotalMiB: Math.round(os.totalmem() / 2 ** 20),
  };
}

const progress = (msg: string) => process.stderr.write(`bench: ${msg}\n`);
const message = (err: unknown) => (err instanceof Error ? err.message : String(err));

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

interface Target {
  label: string;
  cri: CriClient;
  id: Identity;
  image: string;
  daemonPid?: number;
  daemonNote?: string;
  /** Hex digests of the image's blobs and layers, to check them gone before cold pulls. */
  layerHexes?: string[];
  /** Remove the image at the end unless it was present before (another runtime's store is left as found). */
  restoreImage: boolean;
  scratch?: Record<string, string>;
  /** The runtime's log lines as they arrive (berth's), to summarize the ones logged during the sequential cycles. */
  log?: readonly string[];
  /** The 5-layer image of the pull phases, or why there is none. */
  bigImage: { ref: string; layers: number; mib: number; layerHexes: string[] } | Error;
  /** The image with the throughput server, or why there is none. */
  streamingImage: string | Error;
  /** berth's /metrics URL; for a runtime without one, why it is not scraped. */
  metrics: { url: string } | { unavailable: string };
  /** Whether the runtime has the bench's block I/O class: then every cycle is followed by one in a pod of that class. */
  blkioClass?: boolean;
}

/** The daemon behind a unix:// endpoint: the process holding its listening socket. */
async function daemonOf(endpoint: string): Promise<{ pid?: number; note: string }> {
  if (!endpoint.startsWith('unix://')) return { note: 'not a unix socket endpoint: daemon memory not measured' };
  const sock = endpoint.slice('unix://'.length);
  const pids = (await pidsListeningOn(sock).catch(() => [] as number[])).filter((p) => p !== 1);
  if (pids.length === 0) return { note: `no process found holding ${sock} (/proc/net/unix + /proc/*/fd)` };
  const procs = new Map((await processTable()).map((p) => [p.pid, p]));
  // The daemon is the holder whose parent does not hold the socket too.
  const pid = pids.find((p) => !pids.includes(procs.get(p)?.ppid ?? -1)) ?? pids[0]!;
  return { pid, note: `${procs.get(pid)?.comm ?? 'process'} found holding ${sock}${pids.length > 1 ? ` (of ${pids.length} holders)` : ''}` };
}

/** Every measurement against one runtime. A failed phase is recorded in run.errors and the next one runs. */
async function measureRuntime(t: Target, opts: Options, signal: AbortSignal, atStart?: MemUsage): Promise<RuntimeRun> {
  const { cri, image } = t;
  const samples = emptySamples();
  const run: RuntimeRun = {
    label: t.label,
    endpoint: cri.endpoint,
    runtimeName: t.id.runtimeName,
    runtimeVersion: t.id.runtimeVersion,
    image,
    samples,
    concurrent: [],
    errors: [],
    ...(t.scratch ? { scratch: t.scratch } : {}),
  };
  const name = t.label;
  atStart ??= await measureDaemon(t.daemonPid);
  const phase = async (what: string, fn: () => Promise<void>) => {
    if (signal.aborted) throw new Interrupted();
    progress(`${name}: ${what}`);
    try {
      await fn();
    } catch (err) {
      if (err instanceof Interrupted || signal.aborted) throw err instanceof Interrupted ? err : new Interrupted();
      run.errors.push(`${what}: ${message(err)}`);
      progress(`${name}: ${what} failed: ${message(err)}`);
    }
  };
  const presentBefore = Boolean((await cri.images.ImageStatus({ image: { image } })).image);
  try {
    await phase(`PullImage ${image} (${opts.pulls} cold, ${opts.pulls} warm)`, async () => {
      run.pull = await measurePull(cri, image, { cold: opts.pulls, warm: opts.pulls, layerHexes: t.layerHexes, signal });
    });
    if (!(await cri.images.ImageStatus({ image: { image } })).image) {
      try {
        await cri.images.PullImage({ image: { image } });
      } catch (err) {
        const hint = t.label === 'berth' ? '' : ' (use --registry 127.0.0.1:5000 or --image REF for an image this runtime can pull)';
        throw new Error(`${message(err)}${hint}`);
      }
    }

    const big = t.bigImage;
    if (opts.bigPulls > 0 || opts.loadStarts > 0) {
      const bigBefore = !(big instanceof Error) && Boolean((await cri.images.ImageStatus({ image: { image: big.ref } })).image);
      try {
        if (opts.bigPulls > 0) {
          await phase(`PullImage of the ${BIG_IMAGE_LAYERS}-layer image (${opts.bigPulls} cold)`, async () => {
            if (big instanceof Error) throw big;
            const p = await measurePull(cri, big.ref, { cold: opts.bigPulls, warm: 0, layerHexes: big.layerHexes, signal });
            run.bigPull = { ...p, image: big.ref, layers: big.layers, mib: big.mib };
          });
        }
        if (opts.loadStarts > 0) {
          await phase(`${opts.loadStarts} pod starts without, then during, cold pulls of the ${BIG_IMAGE_LAYERS}-layer image`, async () => {
            if (big instanceof Error) throw big;
            run.pullLoad = await measurePullUnderLoad(cri, image, big.ref, { starts: opts.loadStarts, signal });
          });
        }
      } finally {
        if (!(big instanceof Error) && !bigBefore) {
          await cri.images.RemoveImage({ image: { image: big.ref } }).catch((err: Error) => progress(`${name}: cleanup: ${err.message}`));
        }
      }
    }

    await phase(`${opts.cycles} sequential cycles (after 1 warm-up)`, async () => {
      const left: Leftovers = { pods: new Set(), containers: new Set() };
      let logFrom: number | undefined;
      // The cycles with a resource control alternate with the plain ones, so all rows see the same load on the node;
      // their pods' log lines are left out of "inside berth", which summarizes the plain cycles.
      const controlPods = new Set<string>();
      try {
        await runCycle(cri, image, emptySamples(), left, signal);
        // The warm-up's timed lines were logged before its replies, a whole cycle of RPCs ago: all in by now.
        logFrom = t.log?.length;
        for (let i = 1; i <= opts.cycles; i++) {
          await runCycle(cri, image, samples, left, signal);
          // Interleaved with the plain cycles, so that all three rows see the same machine.
          for (const v of CONTROL_VARIANTS) {
            const variant = emptySamples();
            controlPods.add(await runCycle(cri, image, variant, left, signal, v.annotations));
            samples[v.row].push(...variant['from scratch → RUNNING']);
          }
          const full = samples['full cycle'];
          if (i === opts.cycles || i % 5 === 0) progress(`${name}: cycle ${i}/${opts.cycles} ${full[full.length - 1]!.toFixed(1)} ms`);
          if (t.blkioClass) {
            const blkio = emptySamples();
            controlPods.add(await runCycle(cri, image, blkio, left, signal, BLKIO_ANNOTATIONS));
            samples['from scratch → RUNNING, blkio class'].push(...blkio['from scratch → RUNNING']);
          }
        }
      } finally {
        const plain = (line: string) => ![...controlPods].some((pod) => line.includes(pod));
        if (t.log && logFrom !== undefined) run.inside = collectInside(t.log.slice(logFrom).filter(plain));
        if (left.pods.size || left.containers.size) for (const e of await removeLeftovers(cri, left)) progress(`${name}: cleanup: ${e}`);
      }
    });

    await phase(`memory: idle, then ${opts.memoryPods} pods running`, async () => {
      const m = await measureMemory(cri, image, { daemonPid: t.daemonPid, pods: opts.memoryPods, signal });
      m.atStart = atStart;
      if (t.daemonNote) m.daemonNote = t.daemonNote;
      run.memory = m;
      if ((m.running ?? 0) < m.pods) throw new Error(`${m.pods - (m.running ?? 0)} of ${m.pods} pods did not start: ${m.notes[0] ?? ''}`);
    });

    for (const n of opts.concurrent) {
      await phase(`${n} pods at once`, async () => {
        const c = await measureConcurrent(cri, image, n, signal, t.daemonPid);
        run.concurrent.push(c);
        progress(`${name}: ${n} pods running after ${c.wallMs.toFixed(0)} ms`);
        if (c.failures.length) throw new Error(`${c.failures.length} failures, first: ${c.failures[0]}`);
      });
    }

    if (opts.execs > 0) {
      await phase(`streaming: ${opts.execs} execs, ${opts.forwards} × ${opts.forwardMiB} MiB port-forward each way`, async () => {
        const streamingImage = t.streamingImage;
        if (streamingImage instanceof Error) throw streamingImage;
        const present = Boolean((await cri.images.ImageStatus({ image: { image: streamingImage } })).image);
        try {
          if (!present) await cri.images.PullImage({ image: { image: streamingImage } });
          const s = await measureStreaming(cri, streamingImage, { execs: opts.execs, forwards: opts.forwards, forwardMiB: opts.forwardMiB, daemonPid: t.daemonPid, signal });
          run.streaming = s;
          const sum = streamingSummary(s);
          progress(`${name}: exec first byte median ${sum.firstByte.median.toFixed(2)} ms; port-forward ${sum.uploadMiBps.toFixed(1)} MiB/s up, ${sum.downloadMiBps.toFixed(1)} MiB/s down`);
          if (s.failures.length) throw new Error(s.failures.join('; '));
        } finally {
          if (t.restoreImage && !present) await cri.images.RemoveImage({ image: { image: streamingImage } }).catch((err: Error) => progress(`${name}: cleanup: ${err.message}`));
        }
      });
    }

    // Last: what its 100 pods leave in the daemon's heap would skew the memory phase's idle reading.
    if (opts.relistPods > 0) {
      await phase(`relist: ${opts.relists} relists with ${opts.relistPods} pods running`, async () => {
        const metrics = t.metrics;
        const whileRunning = async (started: StartedPod[]) => {
          if (!('url' in metrics)) {
            run.scrape = { pods: started.length, wallMs: [], bytes: 0, samples: 0, containersSeen: 0, failures: [], unavailable: metrics.unavailable };
            return;
          }
          // A failed scrape is this row's failure, not the lists'.
          try {
            const containerIds = new Set(started.map((p) => p.containerId!));
            run.scrape = await measureScrape(metrics.url, { samples: opts.relists, daemonPid: t.daemonPid, containerIds });
            progress(`${name}: /metrics with ${started.length} pods: median ${summarize(run.scrape.wallMs).median.toFixed(2)} ms, daemon CPU ${run.scrape.cpuPerScrapeMs?.toFixed(2) ?? '?'} ms per scrape`);
            if (run.scrape.failures.length) run.errors.push(`/metrics scrape: ${run.scrape.failures.join('; ')}`);
          } catch (err) {
            if (err instanceof Interrupted) throw err;
            run.errors.push(`/metrics scrape: ${message(err)}`);
          }
        };
        const r = await measureRelist(cri, image, { pods: opts.relistPods, samples: opts.relists, warmup: opts.relistWarmup, daemonPid: t.daemonPid, signal, whileRunning });
        run.relist = r;
        const s = relistSummary(r);
        progress(`${name}: relist with ${r.running} pods: median ${s.relist.median.toFixed(2)} ms, daemon CPU ${s.cpuPerRelistMs.toFixed(2)} ms per relist`);
        const problems = relistProblems(r);
        if (problems.length) throw new Error(problems.join('; '));
      });
    }
    // Every phase removes its pods; one that did not is a bench (or runtime) bug worth failing on.
    const { items } = await cri.runtime.ListPodSandbox({ filter: { label_selector: { app: 'berth-bench' } } });
    if (items.length) {
      run.errors.push(`${items.length} bench pods left behind: ${items.map((p) => p.id.slice(0, 12)).join(', ')}`);
      const left: Leftovers = { pods: new Set(items.map((p) => p.id)), containers: new Set() };
      for (const e of await removeLeftovers(cri, left)) progress(`${name}: cleanup: ${e}`);
    }
  } finally {
    if (t.restoreImage && !presentBefore) {
      await cri.images.RemoveImage({ image: { image } }).catch((err: Error) => progress(`${name}: cleanup: ${err.message}`));
    }
  }
  return run;
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

/** Once berth has exited: its stdout and stderr closed too, so that its last lines are in berth.logs (bounded wait). */
async function logsComplete(berth: BerthProcess, timeoutMs: number): Promise<void> {
  const streams = [berth.child.stdout, berth.child.stderr].filter((s) => s && !s.closed);
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    Promise.all(streams.map((s) => new Promise((resolve) => s!.once('close', resolve)))),
    new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs))),
  ]);
  clearTimeout(timer);
}

async function writeResults(out: string, result: BenchResult, berthLog?: readonly string[]): Promise<string[]> {
  await fs.mkdir(out, { recursive: true });
  const stamp = result.startedAt.replace(/[:.]/g, '-');
  const json = JSON.stringify(toJson(result), null, 2) + '\n';
  const svg = renderSvg(result);
  const files: [string, string][] = [];
  for (const base of [stamp, 'latest']) {
    files.push([`${base}.md`, renderMarkdown(result, `${base}.svg`)], [`${base}.json`, json], [`${base}.svg`, svg]);
    if (berthLog) files.push([`${base}-berth.log`, berthLog.map((l) => `${l}\n`).join('')]);
  }
  for (const [name, text] of files) await fs.writeFile(path.join(out, name), text);
  return files.map(([name]) => path.join(out, name));
}

async function pushBenchImage(registryUrl: string): Promise<PushedImage> {
  return pushImage({ url: registryUrl }, 'bench/busybox', 'v1', {
    layers: [await busyboxLayer()],
    config: { Env: [DEFAULT_PATH_ENV], Cmd: ['sh'] },
  });
}

/** The image of the pull phases; an Error fails those phases only. */
async function pushBig(registryUrl: string): Promise<Target['bigImage']> {
  try {
    progress(`building and pushing the ${BIG_IMAGE_LAYERS}-layer image`);
    const pushed = await pushBigImage(registryUrl);
    const layerHexes = [pushed.configDigest, ...pushed.layers.flatMap((l) => [l.digest, l.diffId])].map((d) => d.replace(/^sha256:/, ''));
    return { ref: pushed.ref, layers: pushed.layers.length, mib: pushed.layersSize / (1024 * 1024), layerHexes };
  } catch (err) {
    return new Error(`no image for the pull phases: ${message(err)}`);
  }
}

/**
 * The bench image plus the throughput server for the streaming phase, as an image of its own so that the pull rows
 * keep measuring the plain bench image. An Error (no gcc, say) fails that phase only.
 */
async function pushStreamingImage(registryUrl: string): Promise<string | Error> {
  try {
    const server = await buildThroughputServer(THROUGHPUT_SOURCE);
    const bin = await layer([{ type: 'file', path: THROUGHPUT_SERVER.slice(1), content: server, mode: 0o755, uid: 0, gid: 0 }]);
    const pushed = await pushImage({ url: registryUrl }, 'bench/busybox-tcp', 'v1', {
      layers: [await busyboxLayer(), bin],
      config: { Env: [DEFAULT_PATH_ENV], Cmd: ['sh'] },
    });
    return pushed.ref;
  } catch (err) {
    return new Error(`no image for the streaming phase: ${message(err)}`);
  }
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
  /** berth's directories in the bench (outside /tmp): cleanup removes them even when berth did not start. */
  const berthDirs: string[] = [];
  const clients: CriClient[] = [];
  let cleaning: Promise<void> | undefined;
  let phase: 'setup' | 'berth' | 'other' | 'report' = 'setup';
  const cleanup = () =>
    (cleaning ??= (async () => {
      if (berth) await stopBerth(berth, 60_000);
      for (const dir of berthDirs) await fs.rm(dir, { recursive: true, force: true }).catch((err: Error) => progress(`cleanup of ${dir}: ${err.message}`));
      await registry?.stop().catch((err: Error) => progress(`registry cleanup: ${err.message}`));
      for (const c of clients) c.close();
    })());
  // First signal: issue no further RPC; the running phase stops, removes what it created, and cleanup follows.
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
    let registryHost: string;
    let pushed: PushedImage;
    if (opts.registry) {
      registryHost = opts.registry;
      progress(`pushing the bench image to ${registryHost}`);
      pushed = await pushBenchImage(`http://${registryHost}`).catch((err) => {
        throw new Error(`cannot push to the registry at ${registryHost}: ${message(err)}`);
      });
    } else {
      progress('starting registry');
      registry = await startRegistry();
      registryHost = registry.host;
      pushed = await pushBenchImage(registry.url);
    }
    const layerHexes = [
      pushed.configDigest,
      ...pushed.layers.flatMap((l) => [l.digest, l.diffId]),
    ].map((d) => d.replace(/^sha256:/, ''));
    const bigImage = opts.bigPulls > 0 || opts.loadStarts > 0 ? await pushBig(registry ? registry.url : `http://${registryHost}`) : new Error('not measured');
    const streamingImage = opts.execs > 0 ? await pushStreamingImage(registry ? registry.url : `http://${registryHost}`) : new Error('not measured');
    progress(`pushed ${pushed.ref}${typeof streamingImage === 'string' ? ` and ${streamingImage}` : ''}; starting berth`);
    // A block I/O class on the disk berth's root is on (a rate no container of the bench reaches): the cost measured
    // is resolving the class and writing its throttle at container create.
    const disk = await wholeDiskOf(BENCH_ROOT_PARENT);
    const blkioToml = disk ? `[blockio.classes.${BLKIO_CLASS}]\ndevices = [{ path = ${JSON.stringify(disk)}, write_bps = "1Gi" }]\n` : '';
    if (!disk) progress(`no block device under ${BENCH_ROOT_PARENT}: the blkio class row is not measured`);
    // Where a node keeps them, as containerd beside it does (/var/lib/… and /run/…): berth's root on the disk, its
    // state directory on tmpfs. Not under /tmp: on this VM kind, creating a file or directory anywhere under /tmp
    // costs ~0.5-1 ms (ext4 inode allocation there) against ~0.01 ms under /var/lib, which made every inode berth
    // creates per pod and container (~25) a millisecond that containerd, on /var/lib, did not pay.
    const benchDir = await fs.mkdtemp(path.join(BENCH_ROOT_PARENT, 'berth-bench-'));
    berthDirs.push(benchDir);
    const benchState = await fs.mkdtemp(path.join(BENCH_STATE_PARENT, 'berth-bench-'));
    berthDirs.push(benchState);
    berth = await startBerth({
      config: `[registry]\ninsecure = [${JSON.stringify(registryHost)}]\n${blkioToml}`,
      extraArgs: ['--log-level', 'info'],
      dir: benchDir,
      stateDir: benchState,
    });
    const berthAtStart = await measureDaemon(berth.child.pid);
    const serving = await berth.waitForLog((e) => e.msg === 'berth serving');
    const metricsAddress = typeof serving.metrics === 'string' && serving.metrics !== 'disabled' ? serving.metrics : undefined;

    const berthClient = criClient(`unix://${berth.socket}`);
    clients.push(berthClient);
    phase = 'berth';
    const runs: RuntimeRun[] = [];
    runs.push(
      await measureRuntime(
        {
          label: 'berth',
          cri: berthClient,
          id: await identify(berthClient),
          image: pushed.ref,
          daemonPid: berth.child.pid,
          daemonNote: 'the berth process this bench started',
          layerHexes,
          restoreImage: false,
          scratch: { berthDir: berth.dir, berthStateDir: benchState, ...(registry ? { registryDir: registry.dir } : {}) },
          log: berth.logs,
          streamingImage,
          bigImage,
          metrics: metricsAddress ? { url: `http://${metricsAddress}/metrics` } : { unavailable: 'berth serves no /metrics ([metrics] address is empty)' },
          blkioClass: disk !== undefined,
        },
        opts,
        abort.signal,
        berthAtStart,
      ),
    );
    phase = 'other';
    if (other) {
      const image = opts.image ?? pushed.ref;
      const daemon = await daemonOf(other.cri.endpoint);
      progress(`other runtime: ${other.id.runtimeName ?? '?'} ${other.id.runtimeVersion ?? ''}; daemon: ${daemon.note}`);
      const label = other.id.runtimeName && other.id.runtimeName !== 'berth' ? other.id.runtimeName : 'other';
      runs.push(
        await measureRuntime(
          {
            label,
            cri: other.cri,
            id: other.id,
            image,
            daemonPid: daemon.pid,
            daemonNote: daemon.note,
            layerHexes: image === pushed.ref ? layerHexes : undefined,
            restoreImage: true,
            streamingImage,
          bigImage,
            metrics: { unavailable: `no /metrics endpoint in ${label}` },
          },
          opts,
          abort.signal,
        ),
      );
    }
    phase = 'report';

    const result: BenchResult = { startedAt, finishedAt: new Date().toISOString(), cycles: opts.cycles, host: hostInfo(), runs };
    process.stdout.write(renderTables(result));
    // Stopped first, so that the log written is berth's whole log, shutdown included.
    await cleanup();
    await logsComplete(berth, 5_000);
    const files = await writeResults(opts.out, result, berth.logs);
    progress(`wrote ${files.join(', ')}`);
    const errors = runs.flatMap((r) => r.errors.map((e) => `${r.label}: ${e}`));
    if (errors.length) {
      process.stderr.write(`bench: ${errors.length} phase(s) failed:\n${errors.map((e) => `  ${e}`).join('\n')}\n`);
      if (berth) process.stderr.write(`last berth log lines:\n${berth.logs.slice(-30).join('\n')}\n`);
      return 1;
    }
    return 0;
  } catch (err) {
    if (err instanceof Interrupted || abort.signal.aborted) {
      process.stderr.write('bench interrupted\n');
      return 130;
    }
    process.stderr.write(`bench failed: ${message(err)}\n`);
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
