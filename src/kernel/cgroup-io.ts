// How berth reads and writes cgroupfs, and the executor that carries out a cgroup-plan.ts plan.
import { closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import fs from 'node:fs/promises';
import { BerthError, errorMessage, internal, invalidArgument } from '../errors.js';
import type { CgroupStep, CgroupWrite } from './cgroup-plan.js';

export const codeOf = (err: unknown) => (err as NodeJS.ErrnoException)?.code;

function writeError(file: string, value: string | number, err: unknown): BerthError {
  // The kernel answers EINVAL for values it refuses (out of range, above the parent's, ...).
  const kind = codeOf(err) === 'EINVAL' ? 'invalid_argument' : 'internal';
  return new BerthError(kind, `cgroup: writing "${value}" to ${file}: ${errorMessage(err)}`, { cause: err });
}

/** One write(2) of the whole value; cgroup files reject partial or appended writes. */
export async function writeCgroupFile(file: string, value: string | number): Promise<void> {
  try {
    await fs.writeFile(file, String(value), { flag: constants.O_WRONLY });
  } catch (err) {
    throw writeError(file, value, err);
  }
}

/** File content, or undefined when the file (or the controller) does not exist. */
export async function readOptional(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if (codeOf(err) === 'ENOENT') return undefined;
    throw internal(`cgroup: reading ${file}: ${errorMessage(err)}`, err);
  }
}

export async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(() => true, () => false);
}

/**
 * How a call reaches cgroupfs. cgroupfs lives in memory: on a cgroup without processes a read, write or mkdir
 * costs microseconds, far less than a trip through the thread pool (several per pod start, each waiting behind
 * whatever else the pool does). Writes to a live cgroup stay asynchronous: lowering a memory limit makes the
 * kernel reclaim before write(2) returns.
 */
export interface CgroupIo {
  write(file: string, value: string | number): Promise<void>;
  read(file: string): Promise<string | undefined>;
  exists(file: string): Promise<boolean>;
  mkdir(dir: string): Promise<void>;
}

export const asyncIo: CgroupIo = {
  write: writeCgroupFile,
  read: readOptional,
  exists,
  mkdir: (dir) => fs.mkdir(dir, { mode: 0o755 }).then(() => undefined),
};

export const syncIo: CgroupIo = {
  async write(file, value) {
    try {
      const fd = openSync(file, constants.O_WRONLY);
      try {
        writeSync(fd, String(value));
      } finally {
        closeSync(fd);
      }
    } catch (err) {
      throw writeError(file, value, err);
    }
  },
  async read(file) {
    try {
      return readFileSync(file, 'utf8');
    } catch (err) {
      if (codeOf(err) === 'ENOENT') return undefined;
      throw internal(`cgroup: reading ${file}: ${errorMessage(err)}`, err);
    }
  },
  async exists(file) {
    return existsSync(file);
  },
  async mkdir(dir) {
    mkdirSync(dir, { mode: 0o755 });
  },
};

/**
 * Performs the plan's writes in order, through `io`: syncIo for a cgroup without processes, asyncIo for a live
 * one. Kernel refusals come back as errors naming the file and value (invalid_argument for EINVAL, internal
 * otherwise); a write already done stays done.
 */
export async function executePlan(io: CgroupIo, steps: readonly CgroupStep[]): Promise<void> {
  for (const step of steps) {
    switch (step.kind) {
      case 'write':
        if (await present(io, step)) await io.write(step.file, step.value);
        break;
      case 'either-order': {
        const todo: CgroupWrite[] = [];
        for (const w of step.writes) if (await present(io, w)) todo.push(w);
        await writeEitherOrder(io, todo);
        break;
      }
      case 'cpu-max-period': {
        const quota = (await io.read(step.file))?.trim().split(' ')[0] ?? 'max';
        await io.write(step.file, `${quota} ${step.period}`);
        break;
      }
    }
  }
}

/** Whether to write `w`: false when its file is absent and may be skipped; throws when it must not be absent. */
async function present(io: CgroupIo, w: CgroupWrite): Promise<boolean> {
  if (w.ifAbsent === undefined || (await io.exists(w.file))) return true;
  if (w.ifAbsent === 'skip') return false;
  throw invalidArgument(w.ifAbsent.refuse);
}

/** Writes in the given order and, when the kernel refuses a value, in the reverse order (see CgroupStep). */
async function writeEitherOrder(io: CgroupIo, todo: CgroupWrite[]): Promise<void> {
  const run = async (list: CgroupWrite[]) => {
    for (const { file, value } of list) await io.write(file, value);
  };
  try {
    await run(todo);
  } catch (err) {
    if (todo.length < 2 || !(err instanceof BerthError) || err.kind !== 'invalid_argument') throw err;
    await run([...todo].reverse()).catch(() => Promise.reject(err));
  }
}
