// One Prometheus scrape of berth's /metrics with many pods running: wall time and the daemon's CPU per scrape, and
// a check that the scrape really covered the running containers (a fast empty answer would prove nothing).

import http from 'node:http';
import { readCpuMs } from './procfs.js';
import type { ScrapeResult } from './model.js';
import { nsToMs } from './stats.js';

const SCRAPE_TIMEOUT_MS = 30_000;

/** GET url; the body as text. Rejects on a non-200 answer or after timeoutMs. */
export function httpGet(url: string, timeoutMs = SCRAPE_TIMEOUT_MS): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(url, { agent: false, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString();
        if (res.statusCode !== 200) reject(new Error(`GET ${url}: HTTP ${res.statusCode}: ${body.slice(0, 200)}`));
        else resolve(body);
      });
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url}: no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

/** Samples (non-comment, non-blank lines) in a Prometheus text exposition, and which of `ids` a container_id label names. */
export function scrapeCoverage(text: string, ids: ReadonlySet<string>): { samples: number; containersSeen: number } {
  let samples = 0;
  const seen = new Set<string>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    samples++;
    const m = /[{,]container_id="([^"\\]*)"/.exec(line);
    if (m && ids.has(m[1]!)) seen.add(m[1]!);
  }
  return { samples, containersSeen: seen.size };
}

export interface ScrapeOptions {
  /** Scrapes timed, after one untimed. */
  samples: number;
  daemonPid?: number;
  /** The running containers a scrape must cover. */
  containerIds: ReadonlySet<string>;
}

export async function measureScrape(url: string, opts: ScrapeOptions): Promise<ScrapeResult> {
  const result: ScrapeResult = { pods: opts.containerIds.size, wallMs: [], bytes: 0, samples: 0, containersSeen: 0, failures: [] };
  // Untimed: the first scrape after the pods started reads each cgroup for the first time.
  await httpGet(url);
  const cpu0 = opts.daemonPid ? await readCpuMs(opts.daemonPid) : NaN;
  let last = '';
  for (let i = 0; i < opts.samples; i++) {
    const t0 = process.hrtime.bigint();
    last = await httpGet(url);
    result.wallMs.push(nsToMs(process.hrtime.bigint() - t0));
  }
  if (opts.daemonPid) result.cpuPerScrapeMs = ((await readCpuMs(opts.daemonPid)) - cpu0) / opts.samples;
  const coverage = scrapeCoverage(last, opts.containerIds);
  result.bytes = Buffer.byteLength(last);
  result.samples = coverage.samples;
  result.containersSeen = coverage.containersSeen;
  if (coverage.containersSeen < opts.containerIds.size) {
    result.failures.push(`the scrape had series for ${coverage.containersSeen} of the ${opts.containerIds.size} running containers`);
  }
  return result;
}
