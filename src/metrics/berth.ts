import { readdirSync, statSync } from 'node:fs';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { UsageSource } from '../stats/types.js';
import type { Transition } from '../events/lifecycle.js';
import type { ContainerRecord } from '../container/types.js';
import type { SandboxRecord } from '../sandbox/types.js';
import { UsageMetrics } from './usage.js';

// Every series /metrics serves: berth's own (RPCs, pod starts, pulls, object counts), prom-client's default process
// and Node.js series, and the containers' and pods' usage (./usage.ts). Nothing here runs on a timer: counters and
// histograms move when the work happens, gauges are read when scraped.

export interface StateCounts {
  pods: Record<string, number>;
  containers: Record<string, number>;
}

export interface BerthMetricsOptions {
  /** Read at each scrape; undefined while no stats source is connected (the usage families are then empty). */
  usage: () => UsageSource | undefined;
  /** Pods and containers by state, read at each scrape. */
  counts: () => StateCounts;
  onUsageError: (err: unknown) => void;
}

const RPC_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const POD_START_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const PULL_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600];

const MISNAMED_DEFAULT_METRICS = ['nodejs_active_handles_total', 'nodejs_active_requests_total', 'nodejs_active_resources_total'];

// prom-client's process_open_fds lists /proc/self/fd, which holds thousands of entries when berth keeps the stats
// files of 100 pods open (kernel-files.ts): that listing was a sixth of a scrape's CPU. Since Linux 6.2 the
// directory's size is the count, one stat; older kernels report 0 there and get the listing.
const OPEN_FDS = 'process_open_fds';

export function openFdCount(dir = '/proc/self/fd'): number | undefined {
  try {
    const { size } = statSync(dir);
    if (size > 0) return size;
    // The listing holds the descriptor it was read through.
    return readdirSync(dir).length - 1;
  } catch {
    return undefined;
  }
}

export const POD_STATES = ['READY', 'NOTREADY'] as const;
export const CONTAINER_STATES = ['CREATED', 'RUNNING', 'EXITED'] as const;

export class BerthMetrics {
  readonly registry = new Registry();
  readonly usage: UsageMetrics;
  private readonly rpcDuration: Histogram<string>;
  private readonly rpcErrors: Counter<string>;
  private readonly podStart: Histogram<string>;
  private readonly pullDuration: Histogram<string>;
  private readonly pullBytes: Counter<string>;
  /** Pods made by this berth whose first container has not run yet: pod id -> RunPodSandbox's start (ms). */
  private readonly awaitingFirstStart = new Map<string, number>();

  constructor(opts: BerthMetricsOptions) {
    const registers = [this.registry];
    // The event-loop delay histogram samples on a libuv timer: once a second rather than prom-client's 100 times,
    // so an idle berth stays idle.
    collectDefaultMetrics({ register: this.registry, eventLoopMonitoringPrecision: 1000 });
    // Gauges named like counters break Prometheus's conventions (promtool rejects them); each is the sum of a
    // per-type gauge that stays (nodejs_active_handles{type}, ...).
    for (const name of MISNAMED_DEFAULT_METRICS) this.registry.removeSingleMetric(name);
    this.registry.removeSingleMetric(OPEN_FDS);
    new Gauge({
      name: OPEN_FDS,
      help: 'Number of open file descriptors.',
      registers,
      collect() {
        const count = openFdCount();
        if (count !== undefined) this.set(count);
      },
    });
    this.rpcDuration = new Histogram({
      name: 'berth_rpc_duration_seconds',
      help: 'time CRI RPCs took to answer, by method',
      labelNames: ['method'],
      buckets: RPC_BUCKETS,
      registers,
    });
    this.rpcErrors = new Counter({
      name: 'berth_rpc_errors_total',
      help: 'CRI RPCs answered with an error, by method and gRPC status code',
      labelNames: ['method', 'code'],
      registers,
    });
    this.podStart = new Histogram({
      name: 'berth_pod_start_seconds',
      help: 'time from RunPodSandbox until the first container of the pod runs',
      buckets: POD_START_BUCKETS,
      registers,
    });
    this.pullDuration = new Histogram({ name: 'berth_image_pull_seconds', help: 'time successful image pulls took', buckets: PULL_BUCKETS, registers });
    this.pullBytes = new Counter({ name: 'berth_image_pull_bytes_total', help: 'layer bytes downloaded from registries', registers });
    const counts = { current: undefined as StateCounts | undefined };
    // One count per scrape for both families: the registry calls both collects in one synchronous pass.
    const readCounts = () => (counts.current ??= (queueMicrotask(() => (counts.current = undefined)), opts.counts()));
    new Gauge({
      name: 'berth_pods',
      help: 'pod sandboxes by state',
      labelNames: ['state'],
      registers,
      collect() {
        const byState = readCounts().pods;
        for (const state of POD_STATES) this.set({ state }, byState[state] ?? 0);
      },
    });
    new Gauge({
      name: 'berth_containers',
      help: 'containers by state',
      labelNames: ['state'],
      registers,
      collect() {
        const byState = readCounts().containers;
        for (const state of CONTAINER_STATES) this.set({ state }, byState[state] ?? 0);
      },
    });
    this.usage = new UsageMetrics(opts.usage, opts.onUsageError);
  }

  /** An RPC answered (the gRPC wrapper's observer); `code` is the gRPC status name (OK, NOT_FOUND, ...). */
  rpcFinished(method: string, seconds: number, code: string): void {
    this.rpcDuration.observe({ method }, seconds);
    if (code !== 'OK') this.rpcErrors.inc({ method, code });
  }

  pullFinished(seconds: number): void {
    this.pullDuration.observe(seconds);
  }

  bytesPulled(bytes: number): void {
    this.pullBytes.inc(bytes);
  }

  /** Hears pod and container transitions: a pod's start ends when its first container runs. */
  readonly transition = (t: Transition): void => {
    if (t.subject === 'pod') {
      if (t.kind === 'CREATED') this.awaitingFirstStart.set(t.id, (t.record as SandboxRecord).createdAt);
      else if (t.kind === 'STOPPED' || t.kind === 'DELETED') this.awaitingFirstStart.delete(t.id);
      return;
    }
    if (t.kind !== 'STARTED') return;
    const podStartedMs = this.awaitingFirstStart.get(t.podId);
    if (podStartedMs === undefined) return;
    this.awaitingFirstStart.delete(t.podId);
    const runningNs = (t.record as ContainerRecord).startedAt ?? Number(t.atNs);
    this.podStart.observe(Math.max(0, runningNs / 1e6 - podStartedMs) / 1000);
  };

  /** berth's own and the default families (prom-client), then the containers' and pods' (rendered by UsageMetrics). */
  async scrape(): Promise<string> {
    const [own, usage] = await Promise.all([this.registry.metrics(), this.usage.scrape()]);
    return own + usage;
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
