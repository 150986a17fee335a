import type { MetricDescriptor } from '../gen/runtime/v1/MetricDescriptor.js';
import type { Metric } from '../gen/runtime/v1/Metric.js';
import type { PodSandboxMetrics } from '../gen/runtime/v1/PodSandboxMetrics.js';
import type { ContainerUsage, PodUsage } from '../stats/types.js';

// ListMetricDescriptors / ListPodSandboxMetrics: kubelet's CRI-only metrics mode (PodAndContainerStatsFromCRI)
// serves these on /metrics/cadvisor in place of cAdvisor's, so the names, help and label keys are cAdvisor's.
// kubelet pairs Metric.label_values with the descriptor's label_keys by position. Values are whole numbers on the
// wire (UInt64Value): a `_seconds_total` counter is whole seconds, as in CRI-O.

/** cAdvisor's labels of a container series: the pod's identity and the container's. */
const CONTAINER_LABELS = ['container', 'id', 'image', 'name', 'namespace', 'pod'];
const NETWORK_LABELS = [...CONTAINER_LABELS, 'interface'];

interface Family {
  name: string;
  help: string;
  type: 'COUNTER' | 'GAUGE';
  labels: string[];
}

const families = {
  cpuUsage: { name: 'container_cpu_usage_seconds_total', help: 'Cumulative cpu time consumed in seconds.', type: 'COUNTER', labels: CONTAINER_LABELS },
  cpuThrottled: { name: 'container_cpu_cfs_throttled_seconds_total', help: 'Total time duration the container has been throttled.', type: 'COUNTER', labels: CONTAINER_LABELS },
  memUsage: { name: 'container_memory_usage_bytes', help: 'Current memory usage in bytes, including all memory regardless of when it was accessed', type: 'GAUGE', labels: CONTAINER_LABELS },
  memWorkingSet: { name: 'container_memory_working_set_bytes', help: 'Current working set in bytes.', type: 'GAUGE', labels: CONTAINER_LABELS },
  memRss: { name: 'container_memory_rss', help: 'Size of RSS in bytes.', type: 'GAUGE', labels: CONTAINER_LABELS },
  memLimit: { name: 'container_spec_memory_limit_bytes', help: 'Memory limit for the container.', type: 'GAUGE', labels: CONTAINER_LABELS },
  oom: { name: 'container_oom_events_total', help: 'Count of out of memory events observed for the container', type: 'COUNTER', labels: CONTAINER_LABELS },
  processes: { name: 'container_processes', help: 'Number of processes running inside the container.', type: 'GAUGE', labels: CONTAINER_LABELS },
  fsReads: { name: 'container_fs_reads_bytes_total', help: 'Cumulative count of bytes read', type: 'COUNTER', labels: CONTAINER_LABELS },
  fsWrites: { name: 'container_fs_writes_bytes_total', help: 'Cumulative count of bytes written', type: 'COUNTER', labels: CONTAINER_LABELS },
  fsUsage: { name: 'container_fs_usage_bytes', help: 'Number of bytes that are consumed by the container on this filesystem.', type: 'GAUGE', labels: CONTAINER_LABELS },
  fsInodes: { name: 'container_fs_inodes_total', help: 'Number of Inodes', type: 'GAUGE', labels: CONTAINER_LABELS },
  rxBytes: { name: 'container_network_receive_bytes_total', help: 'Cumulative count of bytes received', type: 'COUNTER', labels: NETWORK_LABELS },
  rxErrors: { name: 'container_network_receive_errors_total', help: 'Cumulative count of errors encountered while receiving', type: 'COUNTER', labels: NETWORK_LABELS },
  txBytes: { name: 'container_network_transmit_bytes_total', help: 'Cumulative count of bytes transmitted', type: 'COUNTER', labels: NETWORK_LABELS },
  txErrors: { name: 'container_network_transmit_errors_total', help: 'Cumulative count of errors encountered while transmitting', type: 'COUNTER', labels: NETWORK_LABELS },
} satisfies Record<string, Family>;

export function metricDescriptors(): MetricDescriptor[] {
  return Object.values(families).map((f) => ({ name: f.name, help: f.help, label_keys: [...f.labels] }));
}

const SECOND = 1_000_000_000n;

function metric(f: Family, timestampNs: bigint | undefined, labels: string[], value: number | bigint): Metric {
  return {
    name: f.name,
    timestamp: String(timestampNs ?? 0n),
    metric_type: f.type,
    label_values: labels,
    value: { value: String(typeof value === 'bigint' ? value : Math.max(0, Math.round(value))) },
  };
}

/** Series of one cgroup's usage (a container's, or the pod's own with container=""), labelled as cAdvisor does. */
function usageMetrics(u: Pick<ContainerUsage, 'cpu' | 'memory' | 'pids' | 'io'>, labels: string[]): Metric[] {
  const out: Metric[] = [];
  if (u.cpu) {
    out.push(metric(families.cpuUsage, u.cpu.timestampNs, labels, u.cpu.usageCoreNanoSeconds / SECOND));
    if (u.cpu.throttledNanoSeconds !== undefined) out.push(metric(families.cpuThrottled, u.cpu.timestampNs, labels, u.cpu.throttledNanoSeconds / SECOND));
  }
  if (u.memory) {
    const t = u.memory.timestampNs;
    out.push(metric(families.memUsage, t, labels, u.memory.usageBytes));
    out.push(metric(families.memWorkingSet, t, labels, u.memory.workingSetBytes));
    out.push(metric(families.memRss, t, labels, u.memory.rssBytes));
    if (u.memory.limitBytes !== undefined) out.push(metric(families.memLimit, t, labels, u.memory.limitBytes));
    if (u.memory.oomKills !== undefined) out.push(metric(families.oom, t, labels, u.memory.oomKills));
  }
  if (u.pids) out.push(metric(families.processes, u.cpu?.timestampNs ?? u.memory?.timestampNs, labels, u.pids.current));
  if (u.io) {
    out.push(metric(families.fsReads, u.io.timestampNs, labels, u.io.readBytes));
    out.push(metric(families.fsWrites, u.io.timestampNs, labels, u.io.writeBytes));
  }
  return out;
}

export function podMetrics(p: PodUsage, imageOf: (containerId: string) => string): PodSandboxMetrics {
  // The pod's own series carry container="" and the pod id, as cAdvisor labels a pod cgroup.
  const podLabels = ['', p.pod.id, '', p.pod.name, p.pod.namespace, p.pod.name];
  const metrics = usageMetrics(p, podLabels);
  for (const i of p.network?.interfaces ?? []) {
    const labels = [...podLabels, i.name];
    const t = p.network!.timestampNs;
    metrics.push(
      metric(families.rxBytes, t, labels, i.rxBytes),
      metric(families.rxErrors, t, labels, i.rxErrors),
      metric(families.txBytes, t, labels, i.txBytes),
      metric(families.txErrors, t, labels, i.txErrors),
    );
  }
  return {
    pod_sandbox_id: p.pod.id,
    metrics,
    container_metrics: p.containers.map((c) => {
      const labels = [c.container.name, c.container.id, imageOf(c.container.id), c.container.name, p.pod.namespace, p.pod.name];
      const series = usageMetrics(c, labels);
      if (c.writableLayer) {
        series.push(metric(families.fsUsage, c.writableLayer.timestampNs, labels, c.writableLayer.usedBytes));
        series.push(metric(families.fsInodes, c.writableLayer.timestampNs, labels, c.writableLayer.inodesUsed));
      }
      return { container_id: c.container.id, metrics: series };
    }),
  };
}
