import test from 'ava';
import { spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ROWS } from '../../bench/lifecycle.js';
import { RELIST, RELIST_CALLS } from '../../bench/model.js';
import { TARGETS } from '../../bench/targets.js';
import { processesMentioning } from '../helpers/cri.js';

// `npm run bench -- --quick` end to end, so the bench cannot rot: every measurement is in its JSON, and it leaves
// nothing behind (no berth dir, mount, process or registry).

const here = path.dirname(fileURLToPath(import.meta.url));
const BENCH = path.resolve(here, '../../bench/main.js');
const TIMEOUT_MS = 4 * 60_000;

function runBench(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BENCH, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (c: string) => (stdout += c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
    // SIGINT lets the bench clean up; a second one forces it.
    const timer = setTimeout(() => {
      child.kill('SIGINT');
      setTimeout(() => child.kill('SIGINT'), 20_000).unref();
    }, TIMEOUT_MS);
    child.on('error', reject);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

type Json = Record<string, any>;

const usage = (t: any, what: string, m: Json | null) => {
  t.truthy(m, `${what} measured`);
  t.true(m!.rssKiB > 0, `${what} RSS > 0`);
  t.true(m!.pssKiB > 0, `${what} PSS > 0`);
};

test('bench --quick measures everything and cleans up after itself', async (t) => {
  t.timeout(TIMEOUT_MS + 60_000);
  const out = await fs.mkdtemp(path.join(os.tmpdir(), 'bench-quick-'));
  t.teardown(() => fs.rm(out, { recursive: true, force: true }));
  const { code, stdout, stderr } = await runBench(['--quick', '--out', out]);
  t.is(code, 0, `bench exited ${code}:\n${stderr.slice(-4000)}`);
  if (code !== 0) return;

  const json: Json = JSON.parse(await fs.readFile(path.join(out, 'latest.json'), 'utf8'));
  t.is(json.schema, 'berth-bench/2');
  t.is(json.cycles, 2);
  t.is(json.runs.length, 1);
  const run: Json = json.runs[0];
  t.is(run.label, 'berth');
  t.deepEqual(run.errors, []);

  // sequential cycles: every RPC row and the composite rows
  t.deepEqual(Object.keys(run.rows), [...ROWS]);
  for (const name of ROWS) {
    const row = run.rows[name];
    if (name === 'ContainerStatus') t.true(row.n >= 2, name);
    else t.is(row.n, 2, name);
    t.true(row.min > 0 && row.median >= row.min && row.max >= row.p95, name);
  }
  t.true(run.rows['from scratch → RUNNING'].median > run.rows.RunPodSandbox.median);

  // berth's own timings from its log: one line per measured cycle, the warm-up and later phases excluded
  t.truthy(run.inside, 'inside berth summarized');
  const podLine = run.inside['pod sandbox running'];
  t.truthy(podLine, `a 'pod sandbox running' row among ${Object.keys(run.inside ?? {}).join(', ')}`);
  t.is(podLine.ms.n, 2);
  t.true(podLine.ms.median >= 0);
  t.is(run.inside['container created']?.ms.n, 2);

  // pulls
  t.is(run.pull.cold.n, 1);
  t.is(run.pull.warm.n, 1);
  t.true(run.pull.cold.median > 0 && run.pull.warm.median > 0);
  t.is(run.pull.coldVerified, true, `cold pulls not verified: ${run.pull.notes.join('; ')}`);
  // the 5-layer image: one cold pull, checked gone on disk first, and pod starts without and during its pulls
  t.is(run.bigPull.layers, 5);
  t.true(run.bigPull.mib > 40 && run.bigPull.mib < 80, `image of ${run.bigPull.mib} MiB`);
  t.is(run.bigPull.cold.n, 1);
  t.is(run.bigPull.coldVerified, true, `large cold pull not verified: ${run.bigPull.notes.join('; ')}`);
  t.is(run.pullLoad.idle.n, 3);
  t.is(run.pullLoad.loaded.n, 3);
  t.true(run.pullLoad.pulls >= 1 && run.pullLoad.pullMs.n >= 1);
  t.true(run.pullLoad.idleProbe.n >= 1 && run.pullLoad.loadedProbe.n >= 1);
  t.true(run.pullLoad.p95Ratio > 0);

  // pods at once
  t.is(run.concurrent.length, 1);
  const c = run.concurrent[0];
  t.is(c.pods, 5);
  t.deepEqual(c.failures, []);
  t.is(c.perPod.n, 5);
  t.true(c.wallMs >= c.perPod.max && c.teardownMs > 0);
  t.is(typeof c.daemonCpuMs, 'number');
  t.deepEqual(Object.keys(c.stages), ['RunPodSandbox', 'CreateContainer', 'StartContainer', 'until RUNNING']);
  for (const stage of Object.values(c.stages) as Json[]) t.is(stage.n, 5);

  // memory
  const m = run.memory;
  t.is(m.unit, 'KiB');
  t.is(m.pods, 3);
  t.is(m.running, 3);
  t.true(m.daemonPid > 0);
  usage(t, 'daemon at start', m.atStart);
  usage(t, 'daemon idle', m.idle);
  usage(t, 'daemon with pods', m.withPods);
  t.true(m.withPods.anonKiB > 0 && m.withPods.anonKiB <= m.withPods.rssKiB);
  t.is(m.perPod.pods.length, 3);
  for (const pod of m.perPod.pods) {
    t.true(pod.pids.length >= 1, `runtime processes of pod ${pod.podId}`);
    t.true(pod.rssKiB > 0 && pod.pssKiB > 0);
  }
  t.regex(m.perPod.processes, /berth-shim/);
  t.true(m.perPod.mean.rssKiB > 0 && m.perPod.mean.pssKiB > 0);
  t.true(m.memAvailable.beforeKiB > 0 && m.memAvailable.afterKiB > 0);
  t.is(typeof m.memAvailable.dropPerPodKiB, 'number');

  // relist: 3 relists with 5 pods, every list held every pod, the daemon's CPU read
  const r = run.relist;
  t.truthy(r, 'relist measured');
  t.like(r, { pods: 5, running: 5, relists: 3, countsMatched: true, mismatches: [], failures: [] });
  t.deepEqual(Object.keys(r.calls), [...RELIST_CALLS]);
  for (const name of RELIST_CALLS) {
    t.is(r.calls[name].n, 3, name);
    t.true(r.calls[name].min > 0, name);
  }
  t.true(r.calls[RELIST].max >= r.calls['ListContainers {} (in the relist)'].max);
  t.true(r.listed.sandboxes >= 5 && r.listed.containers >= 5);
  t.true(r.daemonCpuMs >= 0 && r.cpuPerRelistMs >= 0);

  // streaming: 3 execs of echo over SPDY timed to their first byte, 8 MiB each way through one forwarded connection
  const st = run.streaming;
  t.truthy(st, 'streaming measured');
  t.deepEqual(st.failures, []);
  for (const row of ['execRpc', 'firstByte', 'execDone']) t.is(st[row].n, 3, row);
  t.true(st.firstByte.min > st.execRpc.min && st.execDone.min >= st.firstByte.min, 'the first byte comes after the RPC, the status after it');
  t.is(st.forwardMiB, 8);
  t.is(st.uploadMiBps.n, 1);
  t.is(st.downloadMiBps.n, 1);
  t.true(st.uploadMiBps.median > 0 && st.downloadMiBps.median > 0);

  // /metrics with the relist's 5 pods: every container has series, the daemon's CPU read
  const sc = run.scrape;
  t.truthy(sc, 'scrape measured');
  t.like(sc, { pods: 5, containersSeen: 5, failures: [] });
  t.is(sc.wallMs.n, 3);
  t.true(sc.bytes > 0 && sc.samples > 0 && sc.cpuPerScrapeMs >= 0);

  // targets: all of them, each measured except the 20-pod one a quick run does not do; the relist one is measured
  // with 5 pods, so not evaluated against its 100
  t.deepEqual(json.targets.map((x: Json) => x.id), TARGETS.map((d) => d.id));
  for (const target of json.targets) {
    if (target.id === 'concurrent20') {
      t.is(target.value, null);
      continue;
    }
    if (target.id === 'daemonRss') {
      // measured with the quick run's 3 pods: shown, but not evaluated against the 30 the target names
      t.like(target, { met: null, basis: 'measured with 3 pods, not 30' });
      t.is(typeof target.value, 'number', target.id);
      continue;
    }
    if (target.id === 'metricsScrapeCpu') {
      t.like(target, { met: null, basis: 'measured with 5 pods, not 100' });
      continue;
    }
    if (target.id === 'relist100') {
      t.like(target, { met: null, basis: 'measured with 5 pods, not 100' });
      t.is(target.value, r.calls[RELIST].median);
      continue;
    }
    t.is(typeof target.value, 'number', target.id);
    t.is(typeof target.met, 'boolean', target.id);
  }

  // the human outputs
  const md = await fs.readFile(path.join(out, 'latest.md'), 'utf8');
  t.true(md.includes('### targets'));
  t.true(md.includes('![latency distributions](latest.svg)'));
  t.true(stdout.includes('| RunPodSandbox |'));
  t.true(stdout.includes('Inside berth during the sequential cycles'));
  t.true(stdout.includes('| pod sandbox running | total |'));
  t.true(stdout.includes('| Exec → first stdout byte |'));
  t.true(stdout.includes('/metrics scrape with 5 pods running'));
  t.true(stdout.includes("Relist with 5 pods (kubelet's PLEG: ListPodSandbox + ListContainers every second)"));
  const svg = await fs.readFile(path.join(out, 'latest.svg'), 'utf8');
  t.true(svg.startsWith('<svg') && svg.trimEnd().endsWith('</svg>'));
  t.true(svg.includes('data-row="PullImage cold"'));
  const files = await fs.readdir(out);
  t.is(files.filter((f) => f.endsWith('.json')).length, 2);
  t.is(files.filter((f) => f.endsWith('.log')).length, 2);
  const berthLog = (await fs.readFile(path.join(out, 'latest-berth.log'), 'utf8')).trimEnd().split('\n');
  t.true(berthLog.some((l) => l.includes('"msg":"berth serving"')));
  t.true(berthLog.some((l) => l.includes('"msg":"pod sandbox running"')));

  // nothing left behind
  const { berthDir, registryDir } = run.scratch;
  t.truthy(berthDir);
  t.truthy(registryDir);
  for (const dir of [berthDir, registryDir]) {
    t.false(await fs.access(dir).then(() => true, () => false), `${dir} removed`);
    t.deepEqual(await processesMentioning(dir), [], `no process mentions ${dir}`);
  }
  const mountinfo = await fs.readFile('/proc/self/mountinfo', 'utf8');
  t.deepEqual(mountinfo.split('\n').filter((l) => l.includes(berthDir)), []);
});
