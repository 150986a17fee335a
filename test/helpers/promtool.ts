import { spawn } from 'node:child_process';

// Prometheus's own checker of the text exposition format (Debian package `prometheus`, installed by
// scripts/setup.sh): parses every line and lints names, units and types against Prometheus's conventions.

export interface PromtoolResult {
  code: number | null;
  output: string;
}

export function promtoolCheckMetrics(text: string, timeoutMs = 30_000): Promise<PromtoolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('promtool', ['check', 'metrics'], { stdio: ['pipe', 'pipe', 'pipe'] });
    let output = '';
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.stdout.on('data', (d) => (output += d));
    child.stderr.on('data', (d) => (output += d));
    child.on('error', (err: NodeJS.ErrnoException) =>
      reject(err.code === 'ENOENT' ? new Error('promtool not found: install the Debian package prometheus (scripts/setup.sh does)') : err),
    );
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, output });
    });
    child.stdin.end(text);
  });
}
