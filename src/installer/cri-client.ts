import * as grpc from '@grpc/grpc-js';
import { loadCri } from '../cri/grpc.js';
import type { RuntimeServiceClient } from '../gen/runtime/v1/RuntimeService.js';

// A CRI client for the installer: is a runtime answering (berth, after its unit starts), and remove every pod of a
// runtime (the one kubelet leaves, after a drain has left DaemonSet and static pods running on it). Speaks
// runtime.v1 over the runtime's own socket, as crictl would; berth's proto is the CRI's, so any CRI runtime answers.

function client(endpoint: string): RuntimeServiceClient {
  if (!endpoint.startsWith('unix://')) throw new Error(`endpoint ${JSON.stringify(endpoint)} is not unix:///path`);
  const cri = loadCri();
  return new cri.runtime.v1.RuntimeService(endpoint, grpc.credentials.createInsecure()) as unknown as RuntimeServiceClient;
}

function call<Req, Res>(c: RuntimeServiceClient, rpc: string, req: Req, timeoutMs: number): Promise<Res> {
  return new Promise((resolve, reject) => {
    const method = (c as unknown as Record<string, Function>)[rpc];
    method.call(c, req, new grpc.Metadata(), { deadline: Date.now() + timeoutMs }, (err: grpc.ServiceError | null, res: Res) =>
      err ? reject(new Error(`${rpc}: ${err.details || err.message}`)) : resolve(res),
    );
  });
}

export async function probeRuntime(endpoint: string, timeoutMs: number): Promise<{ runtime: string; version: string }> {
  const c = client(endpoint);
  try {
    const v = await call<object, { runtime_name: string; runtime_version: string }>(c, 'Version', {}, timeoutMs);
    return { runtime: v.runtime_name, version: v.runtime_version };
  } finally {
    c.close();
  }
}

/**
 * Stops then removes every pod sandbox (with its containers) of the runtime at `endpoint`. Each pod gets the whole
 * timeout; a pod that fails is reported and the others still go; the call fails if any is left.
 */
export async function removeAllPods(endpoint: string, timeoutMs: number): Promise<{ removed: string[] }> {
  const c = client(endpoint);
  try {
    const list = await call<object, { items: { id: string; metadata?: { namespace?: string; name?: string } }[] }>(c, 'ListPodSandbox', {}, timeoutMs);
    const removed: string[] = [];
    const failed: string[] = [];
    for (const pod of list.items) {
      const name = `${pod.metadata?.namespace ?? ''}/${pod.metadata?.name ?? ''} (${pod.id})`;
      try {
        await call(c, 'StopPodSandbox', { pod_sandbox_id: pod.id }, timeoutMs);
        await call(c, 'RemovePodSandbox', { pod_sandbox_id: pod.id }, timeoutMs);
        removed.push(name);
      } catch (err) {
        failed.push(`${name}: ${(err as Error).message}`);
      }
    }
    if (failed.length > 0) throw new Error(`pods left on ${endpoint}: ${failed.join('; ')}`);
    return { removed };
  } finally {
    c.close();
  }
}
