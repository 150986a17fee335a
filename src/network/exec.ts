import { spawn } from 'node:child_process';
import { accessSync, constants, promises as fs } from 'node:fs';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { BerthError, errorMessage } from '../errors.js';
import { spawnCollect } from '../kernel/spawn.js';

// Runs one command (ip, iptables-restore, a CNI plugin) with a deadline; failures are BerthErrors that
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

const resolved = new Map<string, string | undefined>();

/** The absolute path of a command found in PATH (posix_spawn does not search PATH), cached. */
export function which(cmd: string): string | undefined {
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

/**
 * Like run(), on the pod-start path: the process is started with posix_spawn (vfork semantics), whose cost does not
 * grow with berth's memory as Node's fork+exec does. Input goes through a file in `scratchDir` (stdin is /dev/null),
 * named in `args` where `INPUT` stands.
 */
export async function runSpawned(cmd: string, args: string[], opts: RunOptions & { scratchDir?: string }): Promise<RunResult> {
  const file = which(cmd);
  if (!file) throw new BerthError('failed_precondition', `${opts.what}: cannot run ${cmd}: not installed (not found in PATH)`);
  let inputFile: string | undefined;
  if (opts.input !== undefined) {
    if (!opts.scratchDir) throw new BerthError('internal', `${opts.what}: no scratch directory for the input of ${cmd}`);
    inputFile = path.join(opts.scratchDir, `${cmd.replace(/\W/g, '')}-${randomBytes(6).toString('hex')}.in`);
    await fs.writeFile(inputFile, opts.input, { mode: 0o600 });
    args = args.map((a) => (a === INPUT ? inputFile! : a));
  }
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const line = `${cmd} ${args.join(' ')}`;
  try {
    const r = await spawnCollect(file, args, timeoutMs, { reportTimeout: true }).catch((err) => {
      throw new BerthError('internal', `${opts.what}: cannot run ${cmd}: ${errorMessage(err)}`, { cause: err });
    });
    const stdout = r.stdout.toString('utf8');
    const stderr = r.stderr.toString('utf8');
    if (r.timedOut) {
      throw new BerthError('deadline_exceeded', `${opts.what}: ${line} did not finish within ${timeoutMs} ms`);
    }
    if (r.code === 0 || opts.okCodes === 'any' || opts.okCodes?.includes(r.code)) return { code: r.code, stdout, stderr };
    const detail = (stderr.trim() || stdout.trim()).split('\n').slice(0, 8).join('; ');
    const how = r.signal ? `signal ${r.signal}` : `exit ${r.code}`;
    throw new BerthError('internal', `${opts.what}: ${line} failed (${how})${detail ? `: ${detail}` : ''}`);
  } finally {
    if (inputFile) await fs.rm(inputFile, { force: true });
  }
}

/** Placeholder in runSpawned's args for the file holding `input`. */
export const INPUT = '\0input';
