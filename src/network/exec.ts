import { spawn } from 'node:child_process';
import { BerthError } from '../errors.js';

// Runs one command (ip, iptables-restore, nsenter, a CNI plugin) with a deadline; failures are BerthErrors that
// name what was being done, the command, and what it printed.

export interface RunOptions {
  /** What the command is for, e.g. "pod abc: create veth": leads every error message. */
  what: string;
  input?: string;
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
  /** Exit codes that are not failures (the caller reads stdout/stderr); 'any' accepts every exit code. */
  okCodes?: number[] | 'any';
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

export const DEFAULT_TIMEOUT_MS = 10_000;

export function run(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env ?? process.env });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, timeoutMs);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const kind = e.code === 'ENOENT' ? 'failed_precondition' : 'internal';
      reject(new BerthError(kind, `${opts.what}: cannot run ${cmd}: ${e.code === 'ENOENT' ? 'not installed (not found in PATH)' : e.message}`, { cause: e }));
    });
    // A command that exits without reading its input must not crash us with EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      const line = `${cmd} ${args.join(' ')}`;
      if (timedOut) {
        reject(new BerthError('deadline_exceeded', `${opts.what}: ${line} did not finish within ${timeoutMs} ms`));
      } else if (code === 0 || (code !== null && (opts.okCodes === 'any' || opts.okCodes?.includes(code)))) {
        resolve({ code: code ?? 0, stdout, stderr });
      } else {
        const detail = (stderr.trim() || stdout.trim()).split('\n').slice(0, 8).join('; ');
        reject(new BerthError('internal', `${opts.what}: ${line} failed (${signal ? `signal ${signal}` : `exit ${code}`})${detail ? `: ${detail}` : ''}`));
      }
    });
  });
}
