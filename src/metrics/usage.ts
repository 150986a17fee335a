import { Counter, Gauge, Registry } from 'prom-client';
import type { ContainerUsage, CpuUsage, MemoryUsage, PidsUsage, PodUsage, UsageParts, UsageSource } from '../stats/types.js';

// The per-container and per-pod series of /metrics, read from the UsageSource when Prometheus scrapes (a collect
// callback), never on a timer: a node nobody scrapes pays nothing. One scrape reads the source once; every family
// of the scrape waits for that one read, which fills them all.
//
// Names follow cAdvisor's where one exists (container_cpu_usage_seconds_total, container_memory_working_set_bytes,
// container_oom_events_total, ...), the pod's the same with `pod_`; a limit's series and its usage-to-limit ratio
// exist only when there is a limit.

export const CONTAINER_LABELS = ['namespace', 'pod', 'container', 'container_id'] as const;
/** A pod's two sandboxes (a recreated pod) may briefly coexist: the sandbox id keeps their series apart. */
export const POD_LABELS = ['namespace', 'pod', 'pod_id'] as const;

interface Usage {
  cpu?: CpuUsage;
  memory?: MemoryUsage;
  pids?: PidsUsage;
}

interface FamilySpec {
  /** Without the `container_`/`pod_` prefix. */
  name: string;
  help: string;
  type: 'gauge' | 'counter';
  value(usage: Usage): number | undefined;
}

const seconds = (ns: bigint | undefined) => (ns === undefined ? undefined : Number(ns) / 1e9);

const USAGE_FAMILIES: FamilySpec[] = [
  { name: 'cpu_usage_seconds_total', type: 'counter', help: 'CPU time consumed, in seconds', value: (u) => seconds(u.cpu?.usageCoreNanoSeconds) },
  {
    name: 'cpu_cfs_throttled_seconds_total',
    type: 'counter',
    help: 'time the CFS quota held runnable tasks back, in seconds',
    value: (u) => seconds(u.cpu?.throttledNanoSeconds),
  },
  { name: 'cpu_limit_cores', type: 'gauge', help: 'CPU limit (CFS quota / period), in cores; absent without a quota', value: (u) => u.cpu?.limitCores },
  {
    name: 'cpu_usage_to_limit_ratio',
    type: 'gauge',
    help: 'CPU use since the previous sample over the CPU limit (1 = the whole quota); absent without a quota',
    value: (u) => (u.cpu?.usageNanoCores !== undefined && u.cpu.limitCores ? u.cpu.usageNanoCores / 1e9 / u.cpu.limitCores : undefined),
  },
  { name: 'memory_usage_bytes', type: 'gauge', help: 'memory charged to the cgroup, page cache included, in bytes', value: (u) => u.memory?.usageBytes },
  {
    name: 'memory_working_set_bytes',
    type: 'gauge',
    help: 'memory usage minus inactive file cache (what the OOM killer and kubelet eviction weigh), in bytes',
    value: (u) => u.memory?.workingSetBytes,
  },
  { name: 'memory_limit_bytes', type: 'gauge', help: 'memory limit, in bytes; absent without a limit', value: (u) => u.memory?.limitBytes },
  {
    name: 'memory_usage_to_limit_ratio',
    type: 'gauge',
    help: 'working set over the memory limit (1 = at the limit); absent without a limit',
    value: (u) => (u.memory?.limitBytes ? u.memory.workingSetBytes / u.memory.limitBytes : undefined),
  },
  { name: 'pids', type: 'gauge', help: 'tasks (processes and threads) in the cgroup', value: (u) => u.pids?.current },
  { name: 'pids_limit', type: 'gauge', help: 'the cgroup pids limit; absent without a limit', value: (u) => u.pids?.limit },
  { name: 'oom_events_total', type: 'counter', help: 'processes the kernel OOM killer killed in the cgroup', value: (u) => u.memory?.oomKills },
];

const CONTAINER_ONLY: FamilySpec[] = [
  {
    name: 'restarts_total',
    type: 'counter',
    help: 'restarts kubelet has made of this container (its CRI attempt number)',
    value: (u) => (u as ContainerUsage).attempt,
  },
];

const POD_ONLY: FamilySpec[] = [
  {
    name: 'restarts_total',
    type: 'counter',
    help: "restarts kubelet has made of the pod's current containers (the sum of their CRI attempt numbers)",
    value: (u) => (u as PodUsage).containers.reduce((sum, c) => sum + c.attempt, 0),
  },
];

const NETWORK_FAMILIES: { name: string; help: string; field: 'rxBytes' | 'txBytes' | 'rxErrors' | 'txErrors' }[] = [
  { name: 'pod_network_receive_bytes_total', help: 'bytes received on the interface of the pod network namespace', field: 'rxBytes' },
  { name: 'pod_network_transmit_bytes_total', help: 'bytes sent on the interface of the pod network namespace', field: 'txBytes' },
  { name: 'pod_network_receive_errors_total', help: 'receive errors on the interface of the pod network namespace', field: 'rxErrors' },
  { name: 'pod_network_transmit_errors_total', help: 'transmit errors on the interface of the pod network namespace', field: 'txErrors' },
];

/** What the families above render: no block I/O and no PSI, which cost four files per cgroup on a v1 host. */
export const METRICS_PARTS: UsageParts = {
  cpuThrottling: true, cpuLimit: true, memoryLimit: true, oomKills: true, pids: true, pidsLimit: true,
};

type Series = Gauge<string> | Counter<string>;

/** Registers the container and pod families on `registry`; they read `source` at each scrape. */
export class UsageMetrics {
  private readonly containerSeries: [FamilySpec, Series][] = [];
  private readonly podSeries: [FamilySpec, Series][] = [];
  private readonly networkSeries: [(typeof NETWORK_FAMILIES)[number], Counter<string>][] = [];
  private reading?: Promise<void>;

  constructor(
    registry: Registry,
    private readonly source: () => UsageSource | undefined,
    private readonly onError: (err: unknown) => void,
  ) {
    const collect = () => this.refresh();
    const make = (name: string, spec: Pick<FamilySpec, 'help' | 'type'>, labelNames: readonly string[]): Series => {
      const config = { name, help: spec.help, labelNames: [...labelNames], registers: [registry], collect };
      return spec.type === 'counter' ? new Counter(config) : new Gauge(config);
    };
    for (const spec of [...USAGE_FAMILIES, ...CONTAINER_ONLY]) this.containerSeries.push([spec, make(`container_${spec.name}`, spec, CONTAINER_LABELS)]);
    for (const spec of [...USAGE_FAMILIES, ...POD_ONLY]) this.podSeries.push([spec, make(`pod_${spec.name}`, spec, POD_LABELS)]);
    for (const spec of NETWORK_FAMILIES) {
      this.networkSeries.push([spec, make(spec.name, { help: spec.help, type: 'counter' }, [...POD_LABELS, 'interface']) as Counter<string>]);
    }
  }

  /**
   * The read every family of one scrape shares: the registry calls every collect in one synchronous pass, so they
   * all hold this promise before it settles; the next scrape reads again.
   */
  refresh(): Promise<void> {
    if (!this.reading) {
      this.reading = this.read().finally(() => (this.reading = undefined));
    }
    return this.reading;
  }

  private async read(): Promise<void> {
    const source = this.source();
    let pods: PodUsage[] = [];
    if (source) {
      try {
        pods = await source.pods({}, METRICS_PARTS);
      } catch (err) {
        // The other families (berth's own) still serve; the container series are absent from this scrape.
        this.onError(err);
      }
    }
    this.fill(pods);
  }

  /** Replaces every series with those of `pods`: a container or pod gone since the last scrape has none. */
  fill(pods: PodUsage[]): void {
    for (const [, series] of [...this.containerSeries, ...this.podSeries, ...this.networkSeries]) series.reset();
    for (const pod of pods) {
      const podLabels = { namespace: pod.pod.namespace, pod: pod.pod.name, pod_id: pod.pod.id };
      set(this.podSeries, pod, podLabels);
      for (const iface of pod.network?.interfaces ?? []) {
        const labels = { ...podLabels, interface: iface.name };
        for (const [spec, counter] of this.networkSeries) counter.inc(labels, Number(iface[spec.field]));
      }
      for (const container of pod.containers) {
        const labels = { namespace: container.pod.namespace, pod: container.pod.name, container: container.container.name, container_id: container.container.id };
        set(this.containerSeries, container, labels);
      }
    }
  }
}

function set(series: [FamilySpec, Series][], usage: Usage, labels: Record<string, string>): void {
  for (const [spec, metric] of series) {
    const value = spec.value(usage);
    if (value === undefined || !Number.isFinite(value)) continue;
    if (metric instanceof Counter) metric.inc(labels, Math.max(0, value));
    else metric.set(labels, value);
  }
}
