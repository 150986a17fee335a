import * as grpc from '@grpc/grpc-js';
import type { RuntimeServiceHandlers } from '../gen/runtime/v1/RuntimeService.js';
import { Logger } from '../log.js';
import { RpcObserver, unary, unimplemented } from './grpc.js';

export const RUNTIME_NAME = 'berth';
export const RUNTIME_API_VERSION = 'v1';
export const RUNTIME_VERSION = '0.1.0';

/** What the daemon tells the handlers about itself; kept narrow so handlers never reach into services' state. */
export interface RuntimeInfo {
  runtimeReady(): { ready: boolean; reason: string; message: string };
  networkReady(): { ready: boolean; reason: string; message: string };
  effectiveConfig(): unknown;
  setPodCidr(cidr: string): void;
  handlers(): { name: string; recursiveReadOnlyMounts: boolean; userNamespaces: boolean }[];
}

const RUNTIME_RPCS = [
  'Version', 'RunPodSandbox', 'StopPodSandbox', 'RemovePodSandbox', 'PodSandboxStatus', 'ListPodSandbox',
  'CreateContainer', 'StartContainer', 'StopContainer', 'RemoveContainer', 'ListContainers', 'ContainerStatus',
  'UpdateContainerResources', 'ReopenContainerLog', 'ExecSync', 'Exec', 'Attach', 'PortForward', 'ContainerStats',
  'ListContainerStats', 'PodSandboxStats', 'ListPodSandboxStats', 'UpdateRuntimeConfig', 'Status',
  'CheckpointContainer', 'ListMetricDescriptors', 'ListPodSandboxMetrics', 'RuntimeConfig',
] as const;

export function runtimeHandlers(
  info: RuntimeInfo,
  log: Logger,
  lifecycle: Partial<RuntimeServiceHandlers>,
  observe?: RpcObserver,
): RuntimeServiceHandlers {
  const h = <Req, Res>(rpc: string, fn: (req: Req) => Promise<Res>) => unary<Req, Res>(rpc, log, (req) => fn(req), observe);
  const handlers: Record<string, unknown> = {};
  for (const rpc of RUNTIME_RPCS) handlers[rpc] = unimplemented('runtime.v1.RuntimeService', rpc);
  handlers.GetContainerEvents = (call: grpc.ServerWritableStream<unknown, unknown>) => {
    call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: 'runtime.v1.RuntimeService/GetContainerEvents is not implemented by berth yet' });
  };

  const implemented: Partial<RuntimeServiceHandlers> = {
    Version: h('Version', async () => ({
      version: '0.1.0',
      runtime_name: RUNTIME_NAME,
      runtime_version: RUNTIME_VERSION,
      runtime_api_version: RUNTIME_API_VERSION,
    })),
    Status: h('Status', async (req) => {
      const runtime = info.runtimeReady();
      const network = info.networkReady();
      const verboseInfo: Record<string, string> = {};
      if (req.verbose) verboseInfo.config = JSON.stringify(info.effectiveConfig());
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
        features: { supplemental_groups_policy: false },
      };
    }),
    RuntimeConfig: h('RuntimeConfig', async () => ({ linux: { cgroup_driver: 'CGROUPFS' } })),
    UpdateRuntimeConfig: h('UpdateRuntimeConfig', async (req) => {
      const cidr = req.runtime_config?.network_config?.pod_cidr ?? '';
      if (cidr) info.setPodCidr(cidr);
      return {};
    }),
  };
  return { ...handlers, ...lifecycle, ...implemented } as RuntimeServiceHandlers;
}
