import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, rmdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { REPO_ROOT, type Container, type ShimEnv, buildBusyboxRootfs, shim, withContainer } from './rootfs.js';
import { pidAlive } from './util.js';

// The bench the native integration files share: berth-shim built, a busybox rootfs to overlay, and an after hook
// that ends the processes the file started (by pid), releases pinned pod namespaces, removes the cgroups it made
// and its temporary directory. Call shimBed() once at the top level of a test file: it registers those hooks.

export interface ShimBed {
  /** test.serial when running as root (the shim needs it), else test.serial.skip. */
  rtest: typeof test.serial | typeof test.serial.skip;
  isRoot: boolean;
  tmp: string;
  /** The busybox rootfs containers overlay. */
  lower: string;
  /** Pids the file started (containers, monitors, pod inits): killed in the after hook if still alive. */
  started: Set<number>;
  /** Cgroup directories the file made: removed (deepest last made first) in the after hook. */
  cgroupsMade: string[];
  /** Pod directories of `berth-shim sandbox`: unpinned in the after hook. */
  podDirs: string[];
  env: ShimEnv;
  withContainer(name: string, fn: (c: Container) => Promise<void>): Promise<void>;
}

export interface ShimBedOptions {
  /** More to put in the rootfs once it is built (e.g. a static fixture). */
  prepare?(lower: string): void | Promise<void>;
  /** Runs in the after hook once the processes are gone and before anything is removed (e.g. host mounts under tmp). */
  release?(): void;
}

export function shimBed(prefix: string, opts: ShimBedOptions = {}): ShimBed {
  const isRoot = process.getuid?.() === 0;
  const tmp = mkdtempSync(path.join(os.tmpdir(), prefix));
  const lower = path.join(tmp, 'rootfs');
  const started = new Set<number>();
  const cgroupsMade: string[] = [];
  const podDirs: string[] = [];
  const env: ShimEnv = { tmp, lower, started };

  test.before(async () => {
    if (!isRoot) return;
    execFileSync('make', ['-s', '-C', path.join(REPO_ROOT, 'native')], { stdio: 'inherit' });
    await buildBusyboxRootfs(lower);
    await opts.prepare?.(lower);
  });

  test.after.always(async () => {
    for (const pid of started) {
      if (!pidAlive(pid)) continue;
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone meanwhile
      }
    }
    opts.release?.();
    for (const d of podDirs) await shim(['unpin', d]).catch(() => undefined);
    for (const cg of cgroupsMade.reverse()) {
      try {
        rmdirSync(cg);
      } catch {
        // removed by its test
      }
    }
    rmSync(tmp, { recursive: true, force: true });
  });

  return {
    rtest: isRoot ? test.serial : test.serial.skip,
    isRoot,
    tmp,
    lower,
    started,
    cgroupsMade,
    podDirs,
    env,
    withContainer: (name, fn) => withContainer(env, name, fn),
  };
}
