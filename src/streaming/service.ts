import type { TokenCache } from './tokens.js';
import type { AttachTarget, ExecTarget, PortForwardTarget, StreamingTargets } from './types.js';

// What the Exec, Attach and PortForward RPCs do once their request is valid: check that the container runs (or the
// pod is ready), remember the request under a fresh token, and answer the URL that redeems it.

export class StreamingService {
  constructor(
    private readonly tokens: TokenCache,
    private readonly targets: StreamingTargets,
    /** scheme://host:port of the streaming server. */
    private readonly baseUrl: string,
  ) {}

  async exec(target: ExecTarget): Promise<string> {
    const containerId = await this.targets.runningContainer(target.containerId);
    return this.url('exec', this.tokens.insert({ ...target, containerId }));
  }

  async attach(target: AttachTarget): Promise<string> {
    const containerId = await this.targets.runningContainer(target.containerId);
    return this.url('attach', this.tokens.insert({ ...target, containerId }));
  }

  async portForward(target: PortForwardTarget): Promise<string> {
    const podSandboxId = await this.targets.readyPod(target.podSandboxId);
    return this.url('portforward', this.tokens.insert({ ...target, podSandboxId }));
  }

  private url(kind: string, token: string): string {
    return `${this.baseUrl}/${kind}/${token}`;
  }
}
