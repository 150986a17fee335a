import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { RuntimeServiceHandlers } from '../gen/runtime/v1/RuntimeService.js';
import { invalidArgument } from '../errors.js';
import { Logger } from '../log.js';
import { ipv4PodCidr } from '../network/embedded.js';
import { handlerFactory, RpcObserver, unimplemented, unimplementedStream } from './grpc.js';

export const RUNTIME_NAME = 'berth';
export const RUNTIME_API_VERSION = 'v1';
/** VersionResponse.version is the kubelet runtime API's own version, not berth's: every CRI runtime answers 0.1.0. */
const KUBELET_API_VERSION = '0.1.0';

/** berth's version, from package.json, so a release bumps it in one place. */
export const RUNTIME_VERSION: string = (() => {
  const file = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../package.json');
  return (JSON.parse(readFileSync(file, 'utf8')) as { version: string }).version;
})();

/** What the daemon tells the handlers about itself; kept narrow so handlers never reach into services' state. */
export interface RuntimeInfo {
  runtimeReady(): { ready: boolean; reason: string; message: string };
  networkReady(): { ready: boolean; reason: string; message: string };
  effectiveConfig(): unknown;
  /** What berth found on the host at start: cgroup layout, user namespaces, seccomp, network, socket. */
  summary(): Record<string, unknown>;
  setPodCidr(cidr: string): void;
  handlers(): { name: string; recursiveReadOnlyMounts: boolean; userNamespaces: boolean }[];
}

const RUNTIME_RPCS = [
  'Version', 'RunPodSandbox', 'StopPodSandbox', 'RemovePodSandbox', 'PodSandboxStatus', 'ListPodSandbox',
  'CreateContainer', 'StartContainer', 'StopContainer', 'RemoveContainer', 'ListContainers', 'ContainerStatus',
  'UpdateContainerResources', 'ReopenContainerLog', 'ExecSync', 'Exec', 'Attach', 'PortForward', 'ContainerStats',
  'ListContainerStats', 'PodSandboxStats', 'ListPodSandboxStats', 'UpdateRuntimeConfig', 'Status',
  'CheckpointContainer', 'CheckpointPod', 'RestorePod', 'ListMetricDescriptors', 'ListPodSandboxMetrics', 'RuntimeConfig',
  'UpdatePodSandboxResources',
] as const;

/** Server-streaming RPCs: UNIMPLEMENTED until a part of berth serves them (kubelet then falls back to the List RPC). */
const RUNTIME_STREAM_RPCS = [
  'GetContainerEvents', 'StreamPodSandboxes', 'StreamContainers', 'StreamContainerStats', 'StreamPodSandboxStats',
  'StreamPodSandboxMetrics',
] as const;

/** Why berth answers UNIMPLEMENTED to these, for the operator who reads kubelet's log. */
const CHECKPOINT_WHY =
  'berth does not checkpoint or restore containers: that needs CRIU, which berth does not ship or drive (its container init would have to be restorable too)';

export function runtimeHandlers(
  info: RuntimeInfo,
  log: Logger,
  lifecycle: Partial<RuntimeServiceHandlers>,
  observe?: RpcObserver,
): RuntimeServiceHandlers {
  const h = handlerFactory(log, observe);
  const handlers: Record<string, unknown> = {};
  for (const rpc of RUNTIME_RPCS) handlers[rpc] = unimplemented('runtime.v1.RuntimeService', rpc);
  for (const rpc of RUNTIME_STREAM_RPCS) handlers[rpc] = unimplementedStream('runtime.v1.RuntimeService', rpc);
  for (const rpc of ['CheckpointContainer', 'CheckpointPod', 'RestorePod']) {
    handlers[rpc] = unimplemented('runtime.v1.RuntimeService', rpc, `runtime.v1.RuntimeService/${rpc}: ${CHECKPOINT_WHY}`);
  }

  const implemented: Partial<RuntimeServiceHandlers> = {
    Version: h('Version', async () => ({
      version: KUBELET_API_VERSION,
      runtime_name: RUNTIME_NAME,
      runtime_version: RUNTIME_VERSION,
      runtime_api_version: RUNTIME_API_VERSION,
    })),
    Status: h('Status', async (req) => {
      const runtime = info.runtimeReady();
      const network = info.networkReady();
      const verboseInfo: Record<string, string> = {};
      if (req.verbose) {
        verboseInfo.config = JSON.stringify(info.effectiveConfig());
        verboseInfo.summary = JSON.stringify(info.summary());
      }
      return {
        status: {
          conditions: [
            { type: 'RuntimeReady', status: runtime.ready, reason: runtime.reason, message: runtime.message },
            { type: 'NetworkReady', status: network.ready, reason: network.reason, message: network.message },
          ],
        },
        info: verboseInfo,
        runtime_handlers: info.handlers().map((handler) => ({
          name: handler.name,
          features: { recursive_read_only_mounts: handler.recursiveReadOnlyMounts, user_namespaces: handler.userNamespaces },
        })),
        features: {
          // Merge and Strict are both honoured at CreateContainer (src/container/user.ts).
          supplemental_groups_policy: true,
          // The init mounts (sysfs included) before it enters the pod's user namespace, so joining the host's
          // network namespace, which that user namespace does not own, needs nothing more than user namespaces.
          user_namespaces_host_network: info.handlers().some((handler) => handler.userNamespaces),
          // nosuid, nodev, noexec (and noatime, nodiratime, ro) on bind mounts; see translate.ts MOUNT_OPTIONS.
          mount_options: true,
        },
      };
    }),
    RuntimeConfig: h('RuntimeConfig', async () => ({ linux: { cgroup_driver: 'CGROUPFS' } })),
    UpdateRuntimeConfig: h('UpdateRuntimeConfig', async (req) => {
      const cidr = req.runtime_config?.network_config?.pod_cidr ?? '';
      // Refused here rather than logged by the network, so that kubelet sees the error and retries with a fixed one.
      if (cidr && !ipv4PodCidr(cidr)) {
        throw invalidArgument(`runtime_config.network_config.pod_cidr "${cidr}" has no IPv4 CIDR block (e.g. "10.244.1.0/24")`);
      }
      if (cidr) info.setPodCidr(cidr);
      return {};
    }),
  };
  return { ...handlers, ...lifecycle, ...implemented } as RuntimeServiceHandlers;
}
