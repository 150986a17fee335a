// Phase timings for a hot-path log line ('container created', 'pod sandbox running'): `ms` in all and `phases`
// by name, which the bench reads back from the log (bench/inside.ts). The hot path stays visible in production.

const nowNs = () => process.hrtime.bigint();
const msBetween = (from: bigint, to: bigint) => Number(to - from) / 1e6;

export class PhaseTimer {
  readonly phases: Record<string, number> = {};
  private readonly started = nowNs();
  private last = this.started;

  /** Steps one after another: the time since the previous lap (or the start) is `name`'s. */
  lap(name: string): void {
    const now = nowNs();
    this.phases[name] = msBetween(this.last, now);
    this.last = now;
  }

  /** Steps that overlap: `name` gets the time from the start until now. */
  mark(name: string): void {
    this.phases[name] = this.ms;
  }

  /** Steps that overlap: `name` gets the time from the start until `work` settles. */
  timed<T>(name: string, work: Promise<T>): Promise<T> {
    return work.finally(() => this.mark(name));
  }

  /** Milliseconds since the timer was made. */
  get ms(): number {
    return msBetween(this.started, nowNs());
  }
}
