import type { RuntimeServiceHandlers } from '../gen/runtime/v1/RuntimeService.js';
import type { PodSandboxStatus } from '../gen/runtime/v1/PodSandboxStatus.js';
import type { PodSandbox } from '../gen/runtime/v1/PodSandbox.js';
import type { ContainerStatus } from '../gen/runtime/v1/ContainerStatus.js';
import { invalidArgument } from '../errors.js';
import { Logger } from '../log.js';
import { SandboxService } from '../sandbox/service.js';
import { SandboxRecord } from '../sandbox/types.js';
import { handlerFactory, loadCri, requireId, RpcObserver } from './grpc.js';
import { ItemBytes } from './encoded.js';
import { podResourcesFromProto, sandboxConfigFromProto } from './translate.js';
import { pagedStream } from './paging.js';
import type { PodSandboxFilter__Output } from '../gen/runtime/v1/PodSandboxFilter.js';

const ns = (ms: number) => String(BigInt(Math.round(ms)) * 1_000_000n);

function metadata(record: SandboxRecord) {
  return { ...record.config.metadata };
}

function podState(record: SandboxRecord): 'SANDBOX_READY' | 'SANDBOX_NOTREADY' {
  return record.state === 'READY' ? 'SANDBOX_READY' : 'SANDBOX_NOTREADY';
}

const podStateFilter: Record<string, 'READY' | 'NOTREADY'> = { SANDBOX_READY: 'READY', SANDBOX_NOTREADY: 'NOTREADY' };

export function toPodSandbox(record: SandboxRecord): PodSandbox {
  return {
    id: record.id,
    metadata: metadata(record),
    state: podState(record),
    created_at: ns(record.createdAt),
    labels: record.config.labels,
    annotations: record.config.annotations,
    runtime_handler: record.config.runtimeHandler,
  };
}

export function toPodSandboxStatus(record: SandboxRecord): PodSandboxStatus {
  const n = record.config.namespaces;
  return {
    id: record.id,
    metadata: metadata(record),
    state: podState(record),
    created_at: ns(record.createdAt),
    network: { ip: record.ip ?? '', additional_ips: record.additionalIps.map((ip) => ({ ip })) },
    linux: { namespaces: { options: { network: n.network, pid: n.pid, ipc: n.ipc, target_id: n.targetId ?? '' } } },
    labels: record.config.labels,
    annotations: record.config.annotations,
    runtime_handler: record.config.runtimeHandler,
  };
}

/** A pod's containers' statuses and when they were read (Unix ns, on the event stream's clock). */
export type PodContainersReader = (podId: string) => { statuses: ContainerStatus[]; timestampNs: bigint };

/**
 * kubelet with evented PLEG takes a PodSandboxStatus answer whose `timestamp` is set as the pod's whole state (it
 * then reads `containers_statuses` instead of asking for each container), verbose or not: both are always filled,
 * from the same moment.
 */
export function podHandlers(
  sandboxes: SandboxService,
  podContainers: PodContainersReader,
  log: Logger,
  observe?: RpcObserver,
): Partial<RuntimeServiceHandlers> {
  const h = handlerFactory(log, observe);
  // ListPodSandbox and StreamPodSandboxes answer the same filter with the same items.
  const podBytes = new ItemBytes<Readonly<SandboxRecord>, PodSandbox>('items', loadCri().runtime.v1.RuntimeService.service.ListPodSandbox.responseSerialize, toPodSandbox);
  const listPods = (f: PodSandboxFilter__Output | null | undefined): Readonly<SandboxRecord>[] => {
    const state = f?.state ? podStateFilter[f.state.state] : undefined;
    // An unknown state (a newer client's, arriving as a number) is refused rather than guessed at.
    if (f?.state && !state) throw invalidArgument(`filter.state.state ${f.state.state} is not a pod sandbox state`);
    return sandboxes.list({ id: f?.id || undefined, state, labels: f?.label_selector });
  };
  return {
    RunPodSandbox: h('RunPodSandbox', async (req) => {
      const record = await sandboxes.run(sandboxConfigFromProto(req.config, req.runtime_handler));
      return { pod_sandbox_id: record.id };
    }),
    StopPodSandbox: h('StopPodSandbox', async (req) => {
      await sandboxes.stop(requireId(req.pod_sandbox_id, 'pod_sandbox_id', 'StopPodSandbox'));
      return {};
    }),
    RemovePodSandbox: h('RemovePodSandbox', async (req) => {
      await sandboxes.remove(requireId(req.pod_sandbox_id, 'pod_sandbox_id', 'RemovePodSandbox'));
      return {};
    }),
    PodSandboxStatus: h('PodSandboxStatus', async (req) => {
      const record = sandboxes.get(requireId(req.pod_sandbox_id, 'pod_sandbox_id', 'PodSandboxStatus'));
      const info: Record<string, string> = {};
      if (req.verbose) {
        info.info = JSON.stringify({
          namespaces: record.namespacePaths,
          initPid: record.initPid,
          cgroup: record.cgroup,
          filesDir: record.filesDir,
          shm: record.shmPath,
          // What kubelet last said of the pod's cgroup (RunPodSandbox, then UpdatePodSandboxResources).
          podResources: record.config.podResources ?? null,
          config: record.config,
        });
      }
      const { statuses, timestampNs } = podContainers(record.id);
      return { status: toPodSandboxStatus(record), info, containers_statuses: statuses, timestamp: String(timestampNs) };
    }),
    UpdatePodSandboxResources: h('UpdatePodSandboxResources', async (req) => {
      const id = requireId(req.pod_sandbox_id, 'pod_sandbox_id', 'UpdatePodSandboxResources');
      await sandboxes.recordResources(id, podResourcesFromProto(req.resources, req.overhead, '', Date.now()));
      return {};
    }),
    ListPodSandbox: h('ListPodSandbox', async (req) => podBytes.response(listPods(req.filter))),
    StreamPodSandboxes: pagedStream('StreamPodSandboxes', log, (req) => listPods(req.filter).map(toPodSandbox), (pod_sandboxes) => ({ pod_sandboxes }), observe),
  };
}
