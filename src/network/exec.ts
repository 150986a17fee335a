import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import path from 'node:path';
import { BerthError, errorMessage } from '../errors.js';
import { spawnCollect } from '../kernel/spawn.js';

// Runs one command of the pod network (iptables-save, iptables-restore, ip for the bridge, a CNI plugin) with a
// deadline; failures are BerthErrors that name what was being done, the command, and what it printed.

export interface RunOptions {
  /** What the command is for, e.g. "pod abc: embedded network": leads every error message. */
  what: string;
  input?: string;
  timeoutMs?: number;
  /** The command's whole environment (CNI plugins); without it, berth's own. */
  env?: NodeJS.ProcessEnv;
  /** Exit codes that are not failures (the caller reads stdout/stderr); 'any' accepts every exit code. */
  okCodes?: number[] | 'any';
}

export interface RunResult {
  code: number;
  stdout: string;
  stderr: string;
}

const DEFAULT_TIMEOUT_MS = 10_000;

/**
 * Started with posix_spawn (vfork semantics), whose cost does not grow with berth's memory as Node's fork+exec
 * does: iptables-restore runs on the pod-start path. A command with an environment of its own goes through Node's
 * spawn, as posix_spawn here always passes berth's environment.
 */
export function run(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
  return opts.env ? runForked(cmd, args, opts) : runSpawned(cmd, args, opts);
}

function notInstalled(cmd: string, opts: RunOptions, cause?: unknown): BerthError {
  return new BerthError('failed_precondition', `${opts.what}: cannot run ${cmd}: not installed (not found in PATH)`, { cause });
}

function outcome(cmd: string, args: string[], opts: RunOptions, r: { code: number | null; signal: string | null; stdout: Buffer; stderr: Buffer; timedOut: boolean }): RunResult {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const stdout = r.stdout.toString('utf8');
  const stderr = r.stderr.toString('utf8');
  const line = `${cmd} ${args.join(' ')}`;
  if (r.timedOut) throw new BerthError('deadline_exceeded', `${opts.what}: ${line} did not finish within ${timeoutMs} ms`);
  if (!r.signal && r.code !== null && (r.code === 0 || opts.okCodes === 'any' || opts.okCodes?.includes(r.code))) return { code: r.code, stdout, stderr };
  const detail = (stderr.trim() || stdout.trim()).split('\n').slice(0, 8).join('; ');
  throw new BerthError('internal', `${opts.what}: ${line} failed (${r.signal ? `signal ${r.signal}` : `exit ${r.code}`})${detail ? `: ${detail}` : ''}`);
}

async function runSpawned(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
  const file = which(cmd);
  if (!file) throw notInstalled(cmd, opts);
  const r = await spawnCollect(file, args, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS, { reportTimeout: true, input: opts.input }).catch((err) => {
    throw new BerthError('internal', `${opts.what}: cannot run ${cmd}: ${errorMessage(err)}`, { cause: err });
  });
  return outcome(cmd, args, opts, { ...r, signal: r.signal ? String(r.signal) : null });
}

function runForked(cmd: string, args: string[], opts: RunOptions): Promise<RunResult> {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'], env: opts.env });
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
      reject(e.code === 'ENOENT' ? notInstalled(cmd, opts, e) : new BerthError('internal', `${opts.what}: cannot run ${cmd}: ${e.message}`, { cause: e }));
    });
    // A command that exits without reading its input must not crash us with EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      try {
        resolve(outcome(cmd, args, opts, { code, signal, stdout: Buffer.concat(out), stderr: Buffer.concat(err), timedOut }));
      } catch (e) {
        reject(e);
      }
    });
  });
}

const resolved = new Map<string, string | undefined>();

/** The absolute path of a command found in PATH (posix_spawn does not search PATH), cached. */
function which(cmd: string): string | undefined {
  if (cmd.includes('/')) return cmd;
  if (!resolved.has(cmd)) {
    const dirs = (process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(':');
    let found: string | undefined;
    for (const dir of dirs) {
      try {
        accessSync(path.join(dir, cmd), constants.X_OK);
        found = path.join(dir, cmd);
        break;
      } catch {
        /* next */
      }
    }
    resolved.set(cmd, found);
  }
  return resolved.get(cmd);
}
