import type { ContainerUsage, CpuUsage, MemoryUsage, PidsUsage, PodUsage, UsageParts, UsageSource } from '../stats/types.js';

// The per-container and per-pod series of /metrics, read from the UsageSource when Prometheus scrapes, never on a
// timer: a node nobody scrapes pays nothing. One scrape reads the source once and renders every family from it.
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
    help: "restarts kubelet has made of the pod's containers (per container name, the highest CRI attempt berth holds; summed)",
    value: (u) => podRestarts(u as PodUsage),
  },
];

/**
 * Per container name, the newest attempt: kubelet removes an exited attempt only once a newer one exists, so this
 * never goes down while the pod lives, as a counter must (a sum over every container held would drop each time
 * kubelet garbage-collects an old attempt, which Prometheus reads as a reset).
 */
export function podRestarts(pod: PodUsage): number {
  const newest = new Map<string, number>();
  for (const c of pod.containers) newest.set(c.container.name, Math.max(newest.get(c.container.name) ?? 0, c.attempt));
  let sum = 0;
  for (const attempt of newest.values()) sum += attempt;
  return sum;
}

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

/**
 * Renders the container and pod families as Prometheus text at each scrape. They bypass prom-client's Gauge and
 * Counter: those hash every label set into a map on set() and format each series label by label on output, which
 * for the ~2,500 series of 100 pods was most of a scrape's CPU (bench/, "daemon CPU per scrape"). A series' label
 * text is made once per container or pod and reused by every family and scrape while that container or pod lives.
 */
export class UsageMetrics {
  private reading?: Promise<string>;
  private containerLabels = new Map<string, string>();
  private podLabels = new Map<string, string>();

  constructor(
    private readonly source: () => UsageSource | undefined,
    private readonly onError: (err: unknown) => void,
  ) {}

  /**
   * The families' text for one scrape: the source is read once, and scrapes that overlap share that read.
   */
  scrape(): Promise<string> {
    if (!this.reading) {
      this.reading = this.read().finally(() => (this.reading = undefined));
    }
    return this.reading;
  }

  private async read(): Promise<string> {
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
    return this.render(pods);
  }

  /** Every family with the series of `pods`: a container or pod gone since the last scrape has none. */
  render(pods: PodUsage[]): string {
    const containerLabels = new Map<string, string>();
    const podLabels = new Map<string, string>();
    const containers: [ContainerUsage, string][] = [];
    const podRows: [PodUsage, string][] = [];
    for (const pod of pods) {
      const id = pod.pod.id;
      const labels = this.podLabels.get(id) ?? labelText([['namespace', pod.pod.namespace], ['pod', pod.pod.name], ['pod_id', id]]);
      podLabels.set(id, labels);
      podRows.push([pod, labels]);
      for (const c of pod.containers) {
        const cid = c.container.id;
        const cLabels =
          this.containerLabels.get(cid) ??
          labelText([['namespace', c.pod.namespace], ['pod', c.pod.name], ['container', c.container.name], ['container_id', cid]]);
        containerLabels.set(cid, cLabels);
        containers.push([c, cLabels]);
      }
    }
    this.containerLabels = containerLabels;
    this.podLabels = podLabels;
    let out = '';
    for (const spec of [...USAGE_FAMILIES, ...CONTAINER_ONLY]) out += family(`container_${spec.name}`, spec, containers);
    for (const spec of [...USAGE_FAMILIES, ...POD_ONLY]) out += family(`pod_${spec.name}`, spec, podRows);
    for (const spec of NETWORK_FAMILIES) {
      out += header(spec.name, spec.help, 'counter');
      for (const [pod, labels] of podRows) {
        for (const iface of pod.network?.interfaces ?? []) {
          out += `${spec.name}{${labels},interface="${escapeLabelValue(iface.name)}"} ${Number(iface[spec.field])}\n`;
        }
      }
    }
    return out;
  }
}

function family<U extends Usage>(name: string, spec: FamilySpec, rows: [U, string][]): string {
  let out = header(name, spec.help, spec.type);
  for (const [usage, labels] of rows) {
    const value = spec.value(usage);
    if (value === undefined || !Number.isFinite(value)) continue;
    out += `${name}{${labels}} ${spec.type === 'counter' ? Math.max(0, value) : value}\n`;
  }
  return out;
}

const header = (name: string, help: string, type: string) => `# HELP ${name} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}\n# TYPE ${name} ${type}\n`;

/** `a="x",b="y"`: the label values are hostile input (a pod's name and namespace come from its spec). */
function labelText(pairs: [string, string][]): string {
  return pairs.map(([k, v]) => `${k}="${escapeLabelValue(v)}"`).join(',');
}

/** The text format's escapes inside a label value: backslash, double quote and line feed. */
export function escapeLabelValue(v: string): string {
  return /[\\"\n]/.test(v) ? v.replace(/[\\"\n]/g, (ch) => (ch === '\n' ? '\\n' : `\\${ch}`)) : v;
}
