// A hand-written SVG of the latency distributions: one horizontal box plot per row and runtime, log-scaled ms.
// Pure: no I/O, no clocks, no dependency.

import { RELIST, type BenchResult, type RuntimeRun } from './model.js';
import { boxOf } from './stats.js';

export const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728'];

const W = 960;
const LABEL_W = 250;
const PLOT_X = LABEL_W + 10;
const PLOT_W = W - PLOT_X - 30;
const BOX_H = 12;
const TOP = 64;

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&apos;');
}

/** Every latency distribution of a run by name, in report order: sequential rows, pulls, pods at once (per pod), relist. */
export function distributions(run: RuntimeRun): [string, number[]][] {
  const out: [string, number[]][] = Object.entries(run.samples);
  if (run.pull) out.push(['PullImage cold', run.pull.cold], ['PullImage warm', run.pull.warm]);
  for (const c of run.concurrent) out.push([`${c.pods} pods at once: per pod`, c.perPodMs]);
  if (run.relist) out.push([`relist with ${run.relist.pods} pods`, run.relist.calls[RELIST]]);
  return out;
}

/** Decades [lo, hi] (powers of 10) that hold every positive value; [1, 10] when there is none. */
export function logDomain(values: readonly number[]): [number, number] {
  const pos = values.filter((v) => v > 0 && Number.isFinite(v));
  if (pos.length === 0) return [1, 10];
  let lo = 10 ** Math.floor(Math.log10(Math.min(...pos)));
  let hi = 10 ** Math.ceil(Math.log10(Math.max(...pos)));
  if (hi <= lo) hi = lo * 10;
  lo = Number(lo.toPrecision(1));
  hi = Number(hi.toPrecision(1));
  return [lo, hi];
}

/** x position of v on the log axis [lo, hi] spanning [x0, x0 + width]; values below lo sit at x0. */
export function logX(v: number, lo: number, hi: number, x0 = PLOT_X, width = PLOT_W): number {
  const clamped = Math.min(Math.max(v, lo), hi);
  return x0 + ((Math.log10(clamped) - Math.log10(lo)) / (Math.log10(hi) - Math.log10(lo))) * width;
}

/** 1, 2, 5 × each decade within [lo, hi]. */
export function logTicks(lo: number, hi: number): number[] {
  const ticks: number[] = [];
  for (let d = lo; d <= hi * 1.0001; d *= 10) {
    for (const m of [1, 2, 5]) {
      const t = Number((d * m).toPrecision(3));
      if (t >= lo && t <= hi * 1.0001) ticks.push(t);
    }
  }
  return ticks;
}

const fmt = (n: number) => (Math.round(n * 10) / 10).toString();
const tickLabel = (t: number) => (t >= 1000 ? `${t / 1000}s` : t >= 1 ? String(t) : String(Number(t.toPrecision(2))));

/** The chart for the runs of a result (berth first). */
export function renderSvg(result: BenchResult): string {
  const runs = result.runs;
  const names: string[] = [];
  const byRun = runs.map((r) => new Map(distributions(r)));
  for (const m of byRun) for (const [name, s] of m) if (s.length && !names.includes(name)) names.push(name);
  const all = byRun.flatMap((m) => [...m.values()].flat());
  const [lo, hi] = logDomain(all);
  const groupH = Math.max(1, runs.length) * (BOX_H + 4) + 10;
  const plotH = Math.max(1, names.length) * groupH;
  const H = TOP + plotH + 44;
  const out: string[] = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" font-family="sans-serif" font-size="12">`,
    `<title>${escapeXml(`CRI latency distributions, ${result.startedAt}`)}</title>`,
    `<rect x="0" y="0" width="${W}" height="${H}" fill="#ffffff"/>`,
    `<text x="10" y="20" font-size="15" font-weight="bold">Latency distributions (ms, log scale)</text>`,
  );
  // legend
  let lx = 10;
  runs.forEach((r, i) => {
    const color = COLORS[i % COLORS.length]!;
    out.push(`<rect x="${lx}" y="32" width="12" height="12" fill="${color}" fill-opacity="0.6" stroke="${color}"/>`);
    out.push(`<text x="${lx + 16}" y="42">${escapeXml(r.label)}</text>`);
    lx += 30 + r.label.length * 7;
  });
  out.push(`<text x="${lx + 10}" y="42" fill="#555">whiskers min–max · box q1–q3 · bar median · ◆ p95</text>`);
  if (names.length === 0) {
    out.push(`<text x="${PLOT_X}" y="${TOP + 20}">no samples</text>`, '</svg>');
    return out.join('\n') + '\n';
  }
  // grid and axis
  const axisY = TOP + plotH;
  for (const t of logTicks(lo, hi)) {
    const x = fmt(logX(t, lo, hi));
    out.push(`<line x1="${x}" y1="${TOP}" x2="${x}" y2="${axisY}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${x}" y="${axisY + 16}" text-anchor="middle" fill="#333">${escapeXml(tickLabel(t))}</text>`);
  }
  out.push(`<line x1="${PLOT_X}" y1="${axisY}" x2="${PLOT_X + PLOT_W}" y2="${axisY}" stroke="#333"/>`);
  out.push(`<text x="${PLOT_X + PLOT_W / 2}" y="${axisY + 36}" text-anchor="middle" fill="#333">milliseconds</text>`);
  names.forEach((name, row) => {
    const y0 = TOP + row * groupH;
    if (row % 2 === 1) out.push(`<rect x="0" y="${y0}" width="${W}" height="${groupH}" fill="#f7f7f7" fill-opacity="0.6"/>`);
    out.push(`<text x="${LABEL_W}" y="${fmt(y0 + groupH / 2 + 4)}" text-anchor="end">${escapeXml(name)}</text>`);
    runs.forEach((run, i) => {
      const samples = byRun[i]!.get(name);
      if (!samples || samples.length === 0) return;
      const b = boxOf(samples);
      const color = COLORS[i % COLORS.length]!;
      const y = y0 + 5 + i * (BOX_H + 4);
      const mid = fmt(y + BOX_H / 2);
      const x = (v: number) => fmt(logX(v, lo, hi));
      const tip = `${run.label} ${name}: n ${b.n}, min ${b.min.toFixed(2)}, median ${b.median.toFixed(2)}, p95 ${b.p95.toFixed(2)}, max ${b.max.toFixed(2)} ms`;
      out.push(`<g class="box" data-run="${escapeXml(run.label)}" data-row="${escapeXml(name)}"><title>${escapeXml(tip)}</title>`);
      out.push(`<line x1="${x(b.min)}" y1="${mid}" x2="${x(b.max)}" y2="${mid}" stroke="${color}"/>`);
      out.push(`<line x1="${x(b.min)}" y1="${fmt(y + 2)}" x2="${x(b.min)}" y2="${fmt(y + BOX_H - 2)}" stroke="${color}"/>`);
      out.push(`<line x1="${x(b.max)}" y1="${fmt(y + 2)}" x2="${x(b.max)}" y2="${fmt(y + BOX_H - 2)}" stroke="${color}"/>`);
      const bx = logX(b.q1, lo, hi);
      out.push(`<rect x="${fmt(bx)}" y="${y}" width="${fmt(Math.max(1, logX(b.q3, lo, hi) - bx))}" height="${BOX_H}" fill="${color}" fill-opacity="0.45" stroke="${color}"/>`);
      out.push(`<line x1="${x(b.median)}" y1="${y}" x2="${x(b.median)}" y2="${y + BOX_H}" stroke="#000" stroke-width="2"/>`);
      const px = logX(b.p95, lo, hi);
      out.push(`<path d="M${fmt(px)} ${fmt(y + 1)} L${fmt(px + 4)} ${mid} L${fmt(px)} ${fmt(y + BOX_H - 1)} L${fmt(px - 4)} ${mid} Z" fill="${color}" stroke="#000" stroke-width="0.5"/>`);
      out.push('</g>');
    });
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
