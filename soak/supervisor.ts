import { promises as fs } from 'node:fs';
import { startBerth, type BerthProcess, type StartOptions } from '../test/helpers/berth.js';

// The berth under soak, and its restarts. Workers reach berth only through `call`, which tells a failure that a
// restart caused (the RPC was in flight, or sent, while berth was going down or coming up) from one berth gave on
// its own: only the second kind is an error of the soak.

export class RestartInterrupted extends Error {
  constructor(readonly rpc: string, cause: unknown) {
    super(`${rpc} interrupted by a berth restart: ${(cause as Error)?.message ?? String(cause)}`);
  }
}

/** berth's own answer to an RPC was an error (not a restart's doing). */
export class RpcFailed extends Error {
  readonly code: number | undefined;

  constructor(readonly rpc: string, cause: unknown) {
    super(`${rpc}: ${(cause as Error)?.message ?? String(cause)}`);
    const code = (cause as { code?: unknown })?.code;
    this.code = typeof code === 'number' ? code : undefined;
  }
}

export interface RestartRecord {
  signal: NodeJS.Signals;
  /** berth's resident memory just before it was stopped. */
  rssKiB: number | undefined;
  /** Time from the signal until the new berth served. */
  downMs: number;
}

/** Resident memory of a pid in KiB (VmRSS), or undefined once it is gone. */
export async function rssKiB(pid: number | undefined): Promise<number | undefined> {
  if (pid === undefined) return undefined;
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  const kib = /^VmRSS:\s+(\d+) kB/m.exec(status)?.[1];
  return kib === undefined ? undefined : Number(kib);
}

export class Supervisor {
  private current: BerthProcess;
  private generation = 0;
  private restarting: Promise<void> | undefined;
  /** Why berth did not come back from a restart: every later call fails with it, as a soak error. */
  private broken: Error | undefined;
  readonly restarts: RestartRecord[] = [];

  private constructor(
    berth: BerthProcess,
    private readonly opts: StartOptions,
  ) {
    this.current = berth;
  }

  static async start(opts: StartOptions): Promise<Supervisor> {
    return new Supervisor(await startBerth(opts), opts);
  }

  get berth(): BerthProcess {
    return this.current;
  }

  /** After a failed restart: one more try, so that the soak's pods can still be torn down through berth. */
  async revive(): Promise<BerthProcess> {
    if (!this.broken) return this.ready();
    this.current = await startBerth({ ...this.opts, dir: this.current.dir });
    this.broken = undefined;
    return this.current;
  }

  /** Waits until no restart is under way. */
  async ready(): Promise<BerthProcess> {
    while (this.restarting) await this.restarting;
    return this.current;
  }

  /**
   * Runs one RPC against the current berth. A failure while a restart is under way, or after one began since the
   * call was sent, is a RestartInterrupted (the caller reconciles, as kubelet would); any other is an RpcFailed.
   */
  async call<T>(rpc: string, send: (b: BerthProcess) => Promise<T>): Promise<T> {
    const b = await this.ready();
    if (this.broken) throw this.broken;
    const generation = this.generation;
    try {
      return await send(b);
    } catch (err) {
      if (this.restarting || this.generation !== generation || b.child.exitCode !== null || b.child.signalCode !== null) {
        throw new RestartInterrupted(rpc, err);
      }
      throw new RpcFailed(rpc, err);
    }
  }

  /** Stops berth with `signal` (whatever RPCs are in flight) and starts it again on the same root, state and socket. */
  async restart(signal: NodeJS.Signals): Promise<RestartRecord> {
    if (this.restarting) throw new Error('a restart is already under way');
    let done!: () => void;
    this.restarting = new Promise<void>((resolve) => (done = resolve));
    try {
      const old = this.current;
      const rss = await rssKiB(old.child.pid);
      const began = Date.now();
      await old.stop(signal);
      this.generation++;
      try {
        this.current = await startBerth({ ...this.opts, dir: old.dir });
      } catch (err) {
        this.broken = new Error(`berth did not serve again after ${signal}: ${(err as Error).message}`);
        throw this.broken;
      }
      const record = { signal, rssKiB: rss, downMs: Date.now() - began };
      this.restarts.push(record);
      return record;
    } finally {
      this.restarting = undefined;
      done();
    }
  }
}
