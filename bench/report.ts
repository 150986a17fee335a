// Rendering benchmark results: markdown tables for people, a JSON object for tools. Pure: no I/O, no clocks.

import { insideRows, type InsideSamples } from './inside.js';
import {
  headlineMetrics,
  memorySummary,
  relistSummary,
  streamingSummary,
  type BenchResult,
  type MemUsage,
  type PullLoadResult,
  type Metric,
  type RelistCall,
  type RelistResult,
  type RuntimeRun,
  type ScrapeResult,
  type StreamingResult,
} from './model.js';
import { summarize, type Summary } from './stats.js';
import { evaluateRelativeTargets, evaluateTargets, type TargetResult, type Unit } from './targets.js';

export type {
  BenchResult,
  ConcurrentResult,
  HostInfo,
  MemoryResult,
  PodMemory,
  PullResult,
  PullLoadResult,
  RelistResult,
  RuntimeRun,
  ScrapeResult,
  StreamingResult,
} from './model.js';

export interface Row {
  name: string;
  summary: Summary;
}

/** Milliseconds with 2 decimals; '–' for a missing value. */
export function formatMs(ms: number): string {
  return Number.isFinite(ms) ? ms.toFixed(2) : '–';
}

/** MiB: 3 decimals below 10, else 1; '–' for a missing value. */
export function formatMiB(mib: number): string {
  if (!Number.isFinite(mib)) return '–';
  return Math.abs(mib) < 10 ? mib.toFixed(3) : mib.toFixed(1);
}

/** MiB/s with 1 decimal; '–' for a missing value. */
export function formatRate(mibps: number): string {
  return Number.isFinite(mibps) ? mibps.toFixed(1) : '–';
}

export function formatValue(value: number | null, unit: Unit): string {
  if (value === null) return '–';
  return unit === 'ms' ? formatMs(value) : unit === 'MiB/s' ? formatRate(value) : formatMiB(value);
}

const kibToMiB = (kib: number | undefined) => (kib === undefined ? NaN : kib / 1024);

/** other/base as '1.23×'; '–' when either side is missing, the base is not positive or other is negative. */
export function formatRatio(other: number, base: number): string {
  if (!(other >= 0 && base > 0) || !Number.isFinite(other) || !Number.isFinite(base)) return '–';
  return `${(other / base).toFixed(2)}×`;
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

function table(header: string[], align: ('l' | 'r')[], body: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  const rule = `|${align.map((a) => (a === 'r' ? '---:' : ':---')).join('|')}|`;
  return [line(header), rule, ...body.map(line)].join('\n') + '\n';
}

export function rowsOf(samples: Record<string, number[]>): Row[] {
  return Object.entries(samples).map(([name, s]) => ({ name, summary: summarize(s) }));
}

/** Rows = RPCs; columns = n, min, median, p95, max (ms, 2 decimals). */
export function markdownTable(rows: Row[], first = 'RPC'): string {
  return table(
    [first, 'n', 'min ms', 'median ms', 'p95 ms', 'max ms'],
    ['l', 'r', 'r', 'r', 'r', 'r'],
    rows.map(({ name, summary: s }) => [cell(name), String(s.n), formatMs(s.min), formatMs(s.median), formatMs(s.p95), formatMs(s.max)]),
  );
}

function unionNames(a: Record<string, unknown>, b: Record<string, unknown>): string[] {
  const names = [...Object.keys(a)];
  for (const n of Object.keys(b)) if (!names.includes(n)) names.push(n);
  return names;
}

/** base and other side by side: medians and p95s with other/base ratios. Rows in base's order, then other's extras. */
export function comparisonTable(base: RuntimeRun, other: RuntimeRun): string {
  const b = cell(base.label);
  const o = cell(other.label);
  return table(
    ['RPC', `${b} median ms`, `${o} median ms`, `median ${o}/${b}`, `${b} p95 ms`, `${o} p95 ms`, `p95 ${o}/${b}`],
    ['l', 'r', 'r', 'r', 'r', 'r', 'r'],
    unionNames(base.samples, other.samples).map((name) => {
      const x = summarize(base.samples[name] ?? []);
      const y = summarize(other.samples[name] ?? []);
      return [cell(name), formatMs(x.median), formatMs(y.median), formatRatio(y.median, x.median), formatMs(x.p95), formatMs(y.p95), formatRatio(y.p95, x.p95)];
    }),
  );
}

interface MetricPair {
  name: string;
  unit: Unit;
  base: number;
  other: number;
  /** Why a side has no value (e.g. a runtime without /metrics). */
  baseNote?: string;
  otherNote?: string;
}

function metricPairs(base: RuntimeRun, other: RuntimeRun): MetricPair[] {
  const a = new Map(headlineMetrics(base).map((m) => [m.name, m]));
  const b = new Map(headlineMetrics(other).map((m) => [m.name, m]));
  const names = [...a.keys()];
  for (const n of b.keys()) if (!a.has(n)) names.push(n);
  return names.map((name) => {
    const m = (a.get(name) ?? b.get(name)) as Metric;
    const x = a.get(name);
    const y = b.get(name);
    return {
      name,
      unit: m.unit,
      base: x?.value ?? NaN,
      other: y?.value ?? NaN,
      ...(x?.note ? { baseNote: x.note } : {}),
      ...(y?.note ? { otherNote: y.note } : {}),
    };
  });
}

const valueOrNote = (v: number, unit: Unit, note?: string) => (!Number.isFinite(v) && note ? cell(note) : formatValue(v, unit));

/** Pulls, concurrent pods, memory, streaming and scrapes side by side with other/base ratios (MiB/s: more is better). */
export function headlineComparisonTable(base: RuntimeRun, other: RuntimeRun): string {
  const b = cell(base.label);
  const o = cell(other.label);
  return table(
    ['measure', 'unit', b, o, `${o}/${b}`],
    ['l', 'l', 'r', 'r', 'r'],
    metricPairs(base, other).map((p) => [
      cell(p.name),
      p.unit,
      valueOrNote(p.base, p.unit, p.baseNote),
      valueOrNote(p.other, p.unit, p.otherNote),
      formatRatio(p.other, p.base),
    ]),
  );
}

const metMark = (t: TargetResult) => (t.met !== null ? (t.met ? 'met' : 'NOT MET') : t.value === null ? 'not measured' : 'not evaluated');

/** The issue's targets for base (berth), with the other runtime's value for reference when given. */
export function targetsTable(base: RuntimeRun, other?: RuntimeRun): string {
  const mine = evaluateTargets(base);
  const theirs = other ? evaluateTargets(other) : undefined;
  const header = ['target', 'limit', `${cell(base.label)}`, 'status', 'basis'];
  const align: ('l' | 'r')[] = ['l', 'r', 'r', 'l', 'l'];
  if (other) {
    header.push(cell(other.label));
    align.push('r');
  }
  return table(
    header,
    align,
    [
      ...mine.map((t, i) => {
        const row = [cell(t.name), `≤ ${t.limit} ${t.unit}`, formatValue(t.value, t.unit), metMark(t), cell(t.basis)];
        if (theirs) row.push(formatValue(theirs[i]!.value, t.unit));
        return row;
      }),
      // Goals stated against the other runtime: its value is the limit.
      ...(other
        ? evaluateRelativeTargets(base, other).map((t) => [
            cell(t.name),
            `${t.atLeast ? '≥' : '≤'} ${cell(other.label)}'s`,
            formatValue(t.value, t.unit),
            metMark(t),
            cell(t.basis),
            Number.isFinite(t.limit) ? formatValue(t.limit, t.unit) : '–',
          ])
        : []),
    ],
  );
}

function runTitle(run: RuntimeRun): string {
  const version = run.runtimeName ? ` (${run.runtimeName}${run.runtimeVersion ? ' ' + run.runtimeVersion : ''})` : '';
  return `${run.label}${version} — ${run.endpoint}`;
}

function pullSection(run: RuntimeRun): string {
  const p = run.pull;
  if (!p) return '';
  const check = p.coldVerified === null ? 'layers on disk not checked' : p.coldVerified ? 'layer files checked gone before each cold pull' : 'layer files were NOT all gone before cold pulls';
  return (
    `PullImage (cold: after RemoveImage; ${check}):\n\n` +
    markdownTable(rowsOf({ 'PullImage cold': p.cold, 'PullImage warm': p.warm }), 'pull') +
    p.notes.map((n) => `\n- ${n}`).join('') +
    (p.notes.length ? '\n' : '')
  );
}

function bigPullSection(run: RuntimeRun): string {
  const b = run.bigPull;
  if (!b) return '';
  const check = b.coldVerified === null ? 'layers on disk not checked' : b.coldVerified ? 'layer files checked gone before each cold pull' : 'layer files were NOT all gone before cold pulls';
  return (
    `PullImage of \`${b.image}\`, ${b.layers} gzip layers, ${b.mib.toFixed(1)} MiB (cold; ${check}):\n\n` +
    markdownTable(rowsOf({ 'PullImage cold': b.cold }), 'pull') +
    b.notes.map((n) => `\n- ${n}`).join('') +
    (b.notes.length ? '\n' : '')
  );
}

/** during/without p95 of pod starts: the pull-under-load target is ≤ 1.2. */
export function pullLoadRatio(l: PullLoadResult): number {
  return summarize(l.loaded).p95 / summarize(l.idle).p95;
}

function pullLoadSection(run: RuntimeRun): string {
  const l = run.pullLoad;
  if (!l) return '';
  const rows = rowsOf({
    'pod start → RUNNING, no pull': l.idle,
    'pod start → RUNNING, during a pull': l.loaded,
    'Version RPC, no pull': l.idleProbe,
    'Version RPC, during a pull': l.loadedProbe,
    'the cold pulls themselves': l.pullMs,
  });
  return (
    `Pod starts while the large image is pulled cold (${l.pulls} pulls; a start counts only if wholly inside one; ` +
    `a Version RPC every 25 ms alongside):\n\n` +
    markdownTable(rows, 'measure') +
    `\np95 during a pull / without: ${formatRatio(summarize(l.loaded).p95, summarize(l.idle).p95)} (target ≤ 1.2)\n`
  );
}

function concurrentSection(run: RuntimeRun): string {
  if (run.concurrent.length === 0) return '';
  return (
    'Pods started at once (RunPodSandbox + CreateContainer + StartContainer until RUNNING, all issued together):\n\n' +
    table(
      ['pods', 'all running ms', 'per-pod p50 ms', 'per-pod p95 ms', 'per-pod max ms', 'daemon CPU ms', 'teardown ms', 'failures'],
      ['r', 'r', 'r', 'r', 'r', 'r', 'r', 'r'],
      run.concurrent.map((c) => {
        const s = summarize(c.perPodMs);
        return [String(c.pods), formatMs(c.wallMs), formatMs(s.median), formatMs(s.p95), formatMs(s.max), formatMs(c.daemonCpuMs ?? NaN), formatMs(c.teardownMs), String(c.failures.length)];
      }),
    ) +
    run.concurrent
      .flatMap((c) => c.failures.slice(0, 3).map((f) => `\n- ${c.pods} pods: ${cell(f)}`))
      .join('') +
    (run.concurrent.some((c) => c.failures.length) ? '\n' : '') +
    stagesTable(run)
  );
}

/** Where a pod's time went when many start together: per step, median / p95 over the pods. */
function stagesTable(run: RuntimeRun): string {
  const withStages = run.concurrent.filter((c) => c.stages && Object.keys(c.stages).length);
  if (withStages.length === 0) return '';
  const names: string[] = [];
  for (const c of withStages) for (const n of Object.keys(c.stages!)) if (!names.includes(n)) names.push(n);
  return (
    '\nPer pod, time in each step (median / p95 ms):\n\n' +
    table(
      ['pods', ...names.map(cell)],
      ['r', ...names.map((): 'r' => 'r')],
      withStages.map((c) => [
        String(c.pods),
        ...names.map((n) => {
          const s = summarize(c.stages![n] ?? []);
          return `${formatMs(s.median)} / ${formatMs(s.p95)}`;
        }),
      ]),
    )
  );
}

/** berth's own account of the sequential cycles: per logged message its total and phases, as it logged them. */
export function insideTable(inside: InsideSamples): string {
  const title = 'Inside berth during the sequential cycles (from its log; median / p95 ms):\n\n';
  const rows = insideRows(inside);
  if (rows.length === 0) return title + 'no timed log lines.\n';
  return (
    title +
    table(
      ['message', 'phase', 'n', 'median ms', 'p95 ms'],
      ['l', 'l', 'r', 'r', 'r'],
      rows.map((r) => [cell(r.msg), cell(r.phase), String(r.summary.n), formatMs(r.summary.median), formatMs(r.summary.p95)]),
    )
  );
}

/** The lists kubelet sends every second with the pods running: per call n, median, p95; the daemon's CPU per relist. */
export function relistTable(r: RelistResult): string {
  const s = relistSummary(r);
  const rows = Object.entries(r.calls).map(([name, samples]) => {
    const x = summarize(samples);
    return [cell(name), String(x.n), formatMs(x.median), formatMs(x.p95)];
  });
  rows.push(['daemon CPU per relist', String(r.relists), formatMs(s.cpuPerRelistMs), '']);
  if (r.cold) rows.push([`daemon CPU per relist, the first ${r.cold.relists} of the phase`, String(r.cold.relists), formatMs(r.cold.daemonCpuMs / r.cold.relists), '']);
  for (const [call, ms] of Object.entries(r.statsCpuPerCallMs ?? {})) rows.push([cell(`daemon CPU per ${call}`), String(r.calls[call as RelistCall]?.length ?? 0), formatMs(ms), '']);
  const lines = [
    r.daemonCpuMs === undefined
      ? 'daemon CPU not measured (daemon unknown)'
      : `daemon CPU ${formatMs(r.daemonCpuMs)} ms over ${r.relists} relists (utime + stime, clock-tick resolution), timed after ${(r.warmup ?? 0) + 1} untimed ones (kubelet relists every second)`,
    `unfiltered lists returned up to ${r.listed.sandboxes} sandboxes and ${r.listed.containers} containers; ` +
      (s.countsMatched ? `every list held all ${r.running} pods` : `${r.mismatches.length} wrong list results`),
    ...r.mismatches.slice(0, 3),
    ...r.failures.slice(0, 3),
  ];
  return (
    `Relist with ${r.running} pods (kubelet's PLEG: ListPodSandbox + ListContainers every second):\n\n` +
    table(['call', 'n', 'median ms', 'p95 ms'], ['l', 'r', 'r', 'r'], rows) +
    lines.map((l) => `\n- ${cell(l)}`).join('') +
    '\n'
  );
}

/** kubectl exec and port-forward through the streaming server: exec latencies (ms), then throughput (MiB/s). */
export function streamingTable(s: StreamingResult): string {
  const sum = streamingSummary(s);
  const ms = (name: string, x: Summary) => [cell(name), String(x.n), formatMs(x.median), formatMs(x.p95)];
  const rate = (name: string, samples: number[], cpuMsPerMiB: number | undefined) => {
    const x = summarize(samples);
    return [cell(name), String(x.n), formatRate(x.median), formatRate(x.min), formatRate(x.max), cpuMsPerMiB === undefined ? '–' : cpuMsPerMiB.toFixed(2)];
  };
  return (
    'Streaming over SPDY/3.1 (a client-go-shaped client dialing the URL the RPC returned; one pod):\n\n' +
    table(
      ['exec of echo', 'n', 'median ms', 'p95 ms'],
      ['l', 'r', 'r', 'r'],
      [ms('Exec RPC (URL returned)', sum.execRpc), ms('Exec → first stdout byte', sum.firstByte), ms('Exec → exit status read', sum.execDone)],
    ) +
    '\n' +
    table(
      [`port-forward, one connection, ${s.forwardMiB} MiB`, 'n', 'median MiB/s', 'min MiB/s', 'max MiB/s', 'daemon CPU ms/MiB'],
      ['l', 'r', 'r', 'r', 'r', 'r'],
      [rate('upload (until the pod counted every byte)', s.uploadMiBps, s.uploadCpuMsPerMiB), rate('download (until EOF)', s.downloadMiBps, s.downloadCpuMsPerMiB)],
    ) +
    s.failures.slice(0, 3).map((f) => `\n- ${cell(f)}`).join('') +
    (s.failures.length ? '\n' : '')
  );
}

/** One Prometheus scrape of the daemon's /metrics with the relist pods running; or why there is none. */
export function scrapeTable(x: ScrapeResult): string {
  const title = `/metrics scrape with ${x.pods} pods running:\n\n`;
  if (x.unavailable) return title + `not measured: ${cell(x.unavailable)}.\n`;
  const w = summarize(x.wallMs);
  return (
    title +
    table(
      ['measure', 'n', 'median ms', 'p95 ms'],
      ['l', 'r', 'r', 'r'],
      [
        ['scrape wall time', String(w.n), formatMs(w.median), formatMs(w.p95)],
        ['daemon CPU per scrape', String(w.n), formatMs(x.cpuPerScrapeMs ?? NaN), ''],
      ],
    ) +
    `\n- ${x.bytes} bytes, ${x.samples} samples; series for ${x.containersSeen} of the ${x.pods} running containers` +
    x.failures.slice(0, 3).map((f) => `\n- ${cell(f)}`).join('') +
    '\n'
  );
}

function memorySection(run: RuntimeRun): string {
  const m = run.memory;
  if (!m) return '';
  const s = memorySummary(m);
  const mem = (kib: number | undefined) => formatMiB(kibToMiB(kib));
  const rows: string[][] = [
    ['daemon at start', m.atStart],
    ['daemon idle (no pods)', m.idle],
    [`daemon with ${m.running ?? m.pods} pods`, m.withPods],
  ].map(([name, u]) => {
    const usage = u as MemUsage | undefined;
    return [name as string, mem(usage?.rssKiB), mem(usage?.pssKiB), mem(usage?.anonKiB)];
  });
  rows.push(
    [`runtime-owned per pod (mean of ${m.perPod.length})`, mem(s.perPodRssKiB), mem(s.perPodPssKiB), ''],
    ['runtime-owned per pod (max)', mem(s.perPodRssMaxKiB), mem(s.perPodPssMaxKiB), ''],
    ['host MemAvailable drop per pod', mem(s.memAvailableDropPerPodKiB), '', ''],
  );
  const lines = [
    `daemon pid ${m.daemonPid ?? 'unknown'}${m.daemonNote ? ` (${m.daemonNote})` : ''}`,
    `runtime processes per pod: ${s.processes || 'none found'}`,
    ...m.notes,
  ];
  return (
    'Memory (RSS, PSS and anonymous from /proc/<pid>/smaps_rollup; MemAvailable is host-wide, so other activity on the host adds noise):\n\n' +
    table(['memory', 'RSS MiB', 'PSS MiB', 'anon MiB'], ['l', 'r', 'r', 'r'], rows) +
    lines.map((l) => `\n- ${cell(l)}`).join('') +
    '\n'
  );
}

/** The tables: per runtime, then the comparison when there are two, then the targets. What main prints to stdout. */
export function renderTables(result: BenchResult): string {
  const parts: string[] = [];
  for (const run of result.runs) {
    parts.push(`### ${cell(runTitle(run))}\n`);
    parts.push(`image \`${run.image}\`\n`);
    parts.push(`Sequential cycles:\n\n` + markdownTable(rowsOf(run.samples)));
    if (run.inside) parts.push(insideTable(run.inside));
    const sections = [
      pullSection(run),
      bigPullSection(run),
      pullLoadSection(run),
      concurrentSection(run),
      memorySection(run),
      run.streaming ? streamingTable(run.streaming) : '',
      run.relist ? relistTable(run.relist) : '',
      run.scrape ? scrapeTable(run.scrape) : '',
    ];
    for (const section of sections) if (section) parts.push(section);
    if (run.errors.length) parts.push(`Errors:\n${run.errors.map((e) => `\n- ${cell(e)}`).join('')}\n`);
  }
  const [base, other] = result.runs;
  if (base && other) {
    parts.push(`### ${cell(other.label)} vs ${cell(base.label)}\n`);
    parts.push(comparisonTable(base, other));
    const headline = metricPairs(base, other);
    if (headline.length) parts.push(headlineComparisonTable(base, other));
  }
  if (base) {
    parts.push(`### targets (${cell(base.label)}; reported, not asserted)\n`);
    parts.push(targetsTable(base, other));
  }
  return parts.join('\n');
}

/** The whole markdown file: what was run, where, then the tables. */
export function renderMarkdown(result: BenchResult, svgName?: string): string {
  const h = result.host;
  return (
    `# berth CRI benchmark\n\n` +
    `- started ${result.startedAt}, finished ${result.finishedAt}\n` +
    `- ${result.cycles} sequential cycles per runtime\n` +
    `- host: ${h.os} ${h.arch}, ${h.cpus} × ${h.cpuModel}${h.memTotalMiB ? `, ${h.memTotalMiB} MiB` : ''}, node ${h.node}\n\n` +
    (svgName ? `![latency distributions](${svgName})\n\n` : '') +
    renderTables(result)
  );
}

const round3 = (v: number) => (Number.isFinite(v) ? Math.round(v * 1000) / 1000 : null);

function distJson(samples: number[]) {
  const s = summarize(samples);
  return { n: s.n, min: round3(s.min), median: round3(s.median), p95: round3(s.p95), max: round3(s.max), samples: samples.map(round3) };
}

function targetJson(t: TargetResult) {
  return { id: t.id, name: t.name, limit: t.limit, unit: t.unit, value: t.value === null ? null : round3(t.value), met: t.met, basis: t.basis };
}

function relistJson(r: RelistResult): Record<string, unknown> {
  const s = relistSummary(r);
  return {
    pods: r.pods,
    running: r.running,
    relists: r.relists,
    calls: Object.fromEntries(Object.entries(r.calls).map(([name, v]) => [name, distJson(v)])),
    daemonCpuMs: round3(r.daemonCpuMs ?? NaN),
    cpuPerRelistMs: round3(s.cpuPerRelistMs),
    statsCpuPerCallMs: Object.fromEntries(Object.entries(r.statsCpuPerCallMs ?? {}).map(([k, v]) => [k, round3(v)])),
    listed: r.listed,
    countsMatched: s.countsMatched,
    mismatches: r.mismatches,
    failures: r.failures,
  };
}

function runJson(run: RuntimeRun): Record<string, unknown> {
  const m = run.memory;
  const ms = m && memorySummary(m);
  return {
    label: run.label,
    endpoint: run.endpoint,
    ...(run.runtimeName !== undefined ? { runtimeName: run.runtimeName } : {}),
    ...(run.runtimeVersion !== undefined ? { runtimeVersion: run.runtimeVersion } : {}),
    image: run.image,
    rows: Object.fromEntries(Object.entries(run.samples).map(([name, s]) => [name, distJson(s)])),
    pull: run.pull ? { cold: distJson(run.pull.cold), warm: distJson(run.pull.warm), coldVerified: run.pull.coldVerified, notes: run.pull.notes } : null,
    bigPull: run.bigPull
      ? { image: run.bigPull.image, layers: run.bigPull.layers, mib: round3(run.bigPull.mib), cold: distJson(run.bigPull.cold), coldVerified: run.bigPull.coldVerified, notes: run.bigPull.notes }
      : null,
    pullLoad: run.pullLoad
      ? {
          idle: distJson(run.pullLoad.idle),
          loaded: distJson(run.pullLoad.loaded),
          idleProbe: distJson(run.pullLoad.idleProbe),
          loadedProbe: distJson(run.pullLoad.loadedProbe),
          pulls: run.pullLoad.pulls,
          pullMs: distJson(run.pullLoad.pullMs),
          p95Ratio: round3(pullLoadRatio(run.pullLoad)),
        }
      : null,
    concurrent: run.concurrent.map((c) => ({
      pods: c.pods,
      wallMs: round3(c.wallMs),
      perPod: distJson(c.perPodMs),
      daemonCpuMs: round3(c.daemonCpuMs ?? NaN),
      stages: Object.fromEntries(Object.entries(c.stages ?? {}).map(([n, v]) => [n, distJson(v)])),
      teardownMs: round3(c.teardownMs),
      failures: c.failures,
    })),
    memory:
      m && ms
        ? {
            unit: 'KiB',
            pods: m.pods,
            running: m.running ?? null,
            daemonPid: m.daemonPid ?? null,
            ...(m.daemonNote ? { daemonNote: m.daemonNote } : {}),
            atStart: m.atStart ?? null,
            idle: m.idle ?? null,
            withPods: m.withPods ?? null,
            perPod: {
              mean: { rssKiB: round3(ms.perPodRssKiB), pssKiB: round3(ms.perPodPssKiB) },
              max: { rssKiB: round3(ms.perPodRssMaxKiB), pssKiB: round3(ms.perPodPssMaxKiB) },
              processes: ms.processes,
              pods: m.perPod,
            },
            memAvailable: {
              beforeKiB: m.memAvailableBeforeKiB ?? null,
              afterKiB: m.memAvailableAfterKiB ?? null,
              dropPerPodKiB: round3(ms.memAvailableDropPerPodKiB),
            },
            notes: m.notes,
          }
        : null,
    relist: run.relist ? relistJson(run.relist) : null,
    streaming: run.streaming
      ? {
          execRpc: distJson(run.streaming.execRpc),
          firstByte: distJson(run.streaming.firstByte),
          execDone: distJson(run.streaming.execDone),
          forwardMiB: run.streaming.forwardMiB,
          uploadMiBps: distJson(run.streaming.uploadMiBps),
          downloadMiBps: distJson(run.streaming.downloadMiBps),
          uploadCpuMsPerMiB: run.streaming.uploadCpuMsPerMiB ?? null,
          downloadCpuMsPerMiB: run.streaming.downloadCpuMsPerMiB ?? null,
          failures: run.streaming.failures,
        }
      : null,
    scrape: run.scrape
      ? run.scrape.unavailable
        ? { pods: run.scrape.pods, unavailable: run.scrape.unavailable }
        : {
            pods: run.scrape.pods,
            wallMs: distJson(run.scrape.wallMs),
            cpuPerScrapeMs: round3(run.scrape.cpuPerScrapeMs ?? NaN),
            bytes: run.scrape.bytes,
            samples: run.scrape.samples,
            containersSeen: run.scrape.containersSeen,
            failures: run.scrape.failures,
          }
      : null,
    ...(run.inside
      ? {
          inside: Object.fromEntries(
            Object.entries(run.inside).map(([msg, m]) => [
              msg,
              { ms: distJson(m.ms), phases: Object.fromEntries(Object.entries(m.phases).map(([n, v]) => [n, distJson(v)])) },
            ]),
          ),
        }
      : {}),
    targets: evaluateTargets(run).map(targetJson),
    errors: run.errors,
    ...(run.scratch ? { scratch: run.scratch } : {}),
  };
}

/** A JSON-ready object: per runtime every measurement with summaries and raw samples (ms, µs precision). */
export function toJson(result: BenchResult): Record<string, unknown> {
  const out: Record<string, unknown> = {
    schema: 'berth-bench/2',
    unit: 'ms',
    startedAt: result.startedAt,
    finishedAt: result.finishedAt,
    cycles: result.cycles,
    host: { ...result.host },
    runs: result.runs.map(runJson),
    targets: result.runs[0] ? evaluateTargets(result.runs[0]).map(targetJson) : [],
  };
  const [base, other] = result.runs;
  if (base && other) {
    const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && a >= 0 && b > 0 ? Math.round((a / b) * 1000) / 1000 : null);
    out.comparison = {
      base: base.label,
      other: other.label,
      targets: evaluateRelativeTargets(base, other).map((t) => ({ ...targetJson(t), limit: round3(t.limit), atLeast: t.atLeast })),
      rows: Object.fromEntries(
        unionNames(base.samples, other.samples).map((name) => {
          const x = summarize(base.samples[name] ?? []);
          const y = summarize(other.samples[name] ?? []);
          return [name, { medianRatio: ratio(y.median, x.median), p95Ratio: ratio(y.p95, x.p95) }];
        }),
      ),
      metrics: Object.fromEntries(
        metricPairs(base, other).map((p) => [p.name, { unit: p.unit, base: round3(p.base), other: round3(p.other), ratio: ratio(p.other, p.base) }]),
      ),
    };
  }
  return out;
}
