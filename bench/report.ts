// Rendering benchmark results: markdown tables for people, a JSON object for tools. Pure: no I/O, no clocks.

import { summarize, type Summary } from './stats.js';

/** One runtime's measurements. */
export interface RuntimeRun {
  /** Short name used in column headers ('berth', 'containerd', …). */
  label: string;
  /** CRI endpoint measured, e.g. 'unix:///run/containerd/containerd.sock'. */
  endpoint: string;
  /** From the Version RPC, when it answered. */
  runtimeName?: string;
  runtimeVersion?: string;
  /** Image reference the cycles ran. */
  image: string;
  /** Wall time of the initial PullImage, ms. */
  pullMs?: number;
  /** Row (RPC or composite step) → samples in ms. Rows appear in the report in insertion order. */
  samples: Record<string, number[]>;
}

export interface HostInfo {
  node: string;
  os: string;
  arch: string;
  cpus: number;
  cpuModel: string;
}

export interface BenchResult {
  startedAt: string;
  finishedAt: string;
  /** Lifecycle cycles run against each runtime. */
  cycles: number;
  host: HostInfo;
  /** runs[0] is berth; a second run is the runtime it is compared with. */
  runs: RuntimeRun[];
}

export interface Row {
  name: string;
  summary: Summary;
}

/** Milliseconds with 2 decimals; '–' for a missing value. */
export function formatMs(ms: number): string {
  return Number.isFinite(ms) ? ms.toFixed(2) : '–';
}

/** other/base as '1.23×'; '–' when either side is missing or the base is 0. */
export function formatRatio(other: number, base: number): string {
  if (!Number.isFinite(other) || !Number.isFinite(base) || base === 0) return '–';
  return `${(other / base).toFixed(2)}×`;
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|');
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
export function markdownTable(rows: Row[]): string {
  return table(
    ['RPC', 'n', 'min ms', 'median ms', 'p95 ms', 'max ms'],
    ['l', 'r', 'r', 'r', 'r', 'r'],
    rows.map(({ name, summary: s }) => [cell(name), String(s.n), formatMs(s.min), formatMs(s.median), formatMs(s.p95), formatMs(s.max)]),
  );
}

/** base and other side by side: medians and p95s with other/base ratios. Rows in base's order, then other's extras. */
export function comparisonTable(base: RuntimeRun, other: RuntimeRun): string {
  const names = [...Object.keys(base.samples)];
  for (const n of Object.keys(other.samples)) if (!names.includes(n)) names.push(n);
  const b = cell(base.label);
  const o = cell(other.label);
  return table(
    ['RPC', `${b} median ms`, `${o} median ms`, `median ${o}/${b}`, `${b} p95 ms`, `${o} p95 ms`, `p95 ${o}/${b}`],
    ['l', 'r', 'r', 'r', 'r', 'r', 'r'],
    names.map((name) => {
      const x = summarize(base.samples[name] ?? []);
      const y = summarize(other.samples[name] ?? []);
      return [cell(name), formatMs(x.median), formatMs(y.median), formatRatio(y.median, x.median), formatMs(x.p95), formatMs(y.p95), formatRatio(y.p95, x.p95)];
    }),
  );
}

function runTitle(run: RuntimeRun): string {
  const version = run.runtimeName ? ` (${run.runtimeName}${run.runtimeVersion ? ' ' + run.runtimeVersion : ''})` : '';
  return `${run.label}${version} — ${run.endpoint}`;
}

/** The tables: one per runtime, then the comparison when there are two. What main prints to stdout. */
export function renderTables(result: BenchResult): string {
  const parts: string[] = [];
  for (const run of result.runs) {
    parts.push(`### ${cell(runTitle(run))}\n`);
    parts.push(`image \`${run.image}\`${run.pullMs !== undefined ? `, initial pull ${formatMs(run.pullMs)} ms` : ''}\n`);
    parts.push(markdownTable(rowsOf(run.samples)));
  }
  if (result.runs.length >= 2) {
    const [base, other] = result.runs as [RuntimeRun, RuntimeRun];
    parts.push(`### ${cell(other.label)} vs ${cell(base.label)}\n`);
    parts.push(comparisonTable(base, other));
  }
  return parts.join('\n');
}

/** The whole markdown file: what was run, where, then the tables. */
export function renderMarkdown(result: BenchResult): string {
  const h = result.host;
  return (
    `# berth CRI lifecycle benchmark\n\n` +
    `- started ${result.startedAt}, finished ${result.finishedAt}\n` +
    `- ${result.cycles} sequential cycles per runtime\n` +
    `- host: ${h.os} ${h.arch}, ${h.cpus} × ${h.cpuModel}, node ${h.node}\n\n` +
    renderTables(result)
  );
}

const round3 = (ms: number) => (Number.isFinite(ms) ? Math.round(ms * 1000) / 1000 : null);

/** A JSON-ready object: per runtime, per row, the summary and the raw samples (ms, µs precision). */
export function toJson(result: BenchResult): Record<string, unknown> {
  const summaryJson = (s: Summary) => ({ n: s.n, min: round3(s.min), median: round3(s.median), p95: round3(s.p95), max: round3(s.max) });
  const out: Record<string, unknown> = {
    schema: 'berth-bench/1',
    unit: 'ms',
    startedAt: result.startedAt,
    finishedAt: result.finishedAt,
    cycles: result.cycles,
    host: { ...result.host },
    runs: result.runs.map((run) => ({
      label: run.label,
      endpoint: run.endpoint,
      ...(run.runtimeName !== undefined ? { runtimeName: run.runtimeName } : {}),
      ...(run.runtimeVersion !== undefined ? { runtimeVersion: run.runtimeVersion } : {}),
      image: run.image,
      ...(run.pullMs !== undefined ? { pullMs: round3(run.pullMs) } : {}),
      rows: Object.fromEntries(
        Object.entries(run.samples).map(([name, s]) => [name, { ...summaryJson(summarize(s)), samples: s.map(round3) }]),
      ),
    })),
  };
  if (result.runs.length >= 2) {
    const [base, other] = result.runs as [RuntimeRun, RuntimeRun];
    const ratio = (a: number, b: number) => (Number.isFinite(a) && Number.isFinite(b) && b !== 0 ? Math.round((a / b) * 1000) / 1000 : null);
    const names = [...Object.keys(base.samples)];
    for (const n of Object.keys(other.samples)) if (!names.includes(n)) names.push(n);
    out.comparison = {
      base: base.label,
      other: other.label,
      rows: Object.fromEntries(
        names.map((name) => {
          const x = summarize(base.samples[name] ?? []);
          const y = summarize(other.samples[name] ?? []);
          return [name, { medianRatio: ratio(y.median, x.median), p95Ratio: ratio(y.p95, x.p95) }];
        }),
      ),
    };
  }
  return out;
}
