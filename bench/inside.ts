// Where berth spends its own time, read back from the JSON lines it logs: every info line with a numeric `ms`
// (and, when it has them, its `phases`), grouped by message. Pure: no I/O, no clocks.

import { summarize, type Summary } from './stats.js';

/** One timed log line. */
export interface Timing {
  msg: string;
  ms: number;
  /** Phase name → ms, as berth logged it (some messages log offsets from the start, others durations). */
  phases: Record<string, number>;
}

/** Per message, in order of first appearance: the samples of its `ms` and of each of its phases. */
export type InsideSamples = Record<string, { ms: number[]; phases: Record<string, number[]> }>;

export interface InsideRow {
  msg: string;
  /** 'total' for the line's own `ms`, else the phase name. */
  phase: string;
  summary: Summary;
}

const finite = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/**
 * The timed lines among `lines`. Only info level: the bench runs berth at info, and at debug the per-RPC 'rpc'
 * lines would drown the rest. Anything that is not a JSON object (a crash trace, a child's stray output) is skipped.
 */
export function parseTimings(lines: Iterable<string>): Timing[] {
  const out: Timing[] = [];
  for (const line of lines) {
    let entry: unknown;
    try {
      entry = JSON.parse(line);
    } catch {
      continue;
    }
    if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) continue;
    const e = entry as Record<string, unknown>;
    if (e.level !== 'info' || typeof e.msg !== 'string' || !finite(e.ms)) continue;
    const phases: [string, number][] = [];
    if (typeof e.phases === 'object' && e.phases !== null && !Array.isArray(e.phases)) {
      for (const [name, v] of Object.entries(e.phases)) if (finite(v)) phases.push([name, v]);
    }
    out.push({ msg: e.msg, ms: e.ms, phases: Object.fromEntries(phases) });
  }
  return out;
}

export function collectInside(lines: Iterable<string>): InsideSamples {
  // Maps, not object keys, while collecting: a message or phase named '__proto__' must stay an ordinary entry.
  const byMsg = new Map<string, { ms: number[]; phases: Map<string, number[]> }>();
  for (const t of parseTimings(lines)) {
    let m = byMsg.get(t.msg);
    if (!m) byMsg.set(t.msg, (m = { ms: [], phases: new Map() }));
    m.ms.push(t.ms);
    for (const [name, v] of Object.entries(t.phases)) {
      const samples = m.phases.get(name);
      if (samples) samples.push(v);
      else m.phases.set(name, [v]);
    }
  }
  return Object.fromEntries([...byMsg].map(([msg, m]) => [msg, { ms: m.ms, phases: Object.fromEntries(m.phases) }]));
}

/** One row per message and phase: the total first, then the phases in the order berth first logged them. */
export function insideRows(inside: InsideSamples): InsideRow[] {
  return Object.entries(inside).flatMap(([msg, m]) => [
    { msg, phase: 'total', summary: summarize(m.ms) },
    ...Object.entries(m.phases).map(([phase, s]) => ({ msg, phase, summary: summarize(s) })),
  ]);
}
