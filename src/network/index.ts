import { bandwidthLimits } from './bandwidth.js';
import { createHash } from 'node:crypto';
import path from 'node:path';
import { BerthConfig, NetworkMode } from '../config/schema.js';
import { errorMessage } from '../errors.js';
import { Logger } from '../log.js';
import { CniNetwork } from './cni/network.js';
import { EmbeddedNetwork } from './embedded.js';
import { linuxEmbeddedHost } from './embedded-host.js';
import { MAX_PREFIX_LENGTH } from './rules.js';
import { NetworkReadiness, PodNetwork, PodNetworkPlan, PodNetworkRequest, PodNetworkResult } from './types.js';

// The pod network berth runs with, chosen by `[network] mode`:
//   auto      a CNI config in the conf dir wins, else the embedded bridge; decided at every pod start
//   embedded  the embedded bridge only
//   cni       CNI only; NetworkReady is false until a valid config (and its plugins) exist
// Teardown always goes to the backend that set the pod up (recorded in the pod's network state).

/** berth's iptables chains: "BERTH-*" for the default bridge, "BERTH-<bridge>-*" for another, so that two berths
 * on one node (tests, say) with different bridges never touch each other's rules. */
export function chainPrefixFor(bridge: string, defaultBridge = 'berth0'): string {
  if (bridge === defaultBridge) return 'BERTH';
  const prefix = `BERTH-${bridge}`;
  return prefix.length <= MAX_PREFIX_LENGTH ? prefix : `BERTH-${createHash('sha256').update(bridge).digest('hex').slice(0, MAX_PREFIX_LENGTH - 6)}`;
}

export class NetworkManager implements PodNetwork {
  constructor(
    readonly mode: NetworkMode,
    readonly embedded: EmbeddedNetwork,
    readonly cni: CniNetwork,
    private readonly log: Logger,
  ) {}

  async start(livePods: { podId: string; state: Record<string, unknown> }[]): Promise<void> {
    await this.embedded.load(livePods);
    if (this.mode !== 'embedded') await this.cni.start(livePods);
    const embeddedPods = livePods.some((p) => p.state.backend === 'embedded');
    const embeddedActive = this.mode === 'embedded' || (this.mode === 'auto' && !this.cni.hasConfig());
    if (embeddedActive || embeddedPods) {
      // In the background: serving does not wait for it, pod starts do. A failure leaves NetworkReady false with
      // the reason, and the next pod start tries again.
      this.embedded.ensure().catch((err) => this.log.error('embedded network is not ready', { error: errorMessage(err) }));
    }
    // Checks only once ensure() has run: a CNI-only node never pays for it.
    if (this.mode !== 'cni' || embeddedPods) this.embedded.watchRules();
  }

  private async backendFor(): Promise<'embedded' | 'cni'> {
    if (this.mode !== 'auto') return this.mode;
    await this.cni.refresh();
    return this.cni.hasConfig() ? 'cni' : 'embedded';
  }

  async prepare(req: PodNetworkRequest): Promise<PodNetworkPlan> {
    // CNI plugins make everything themselves once the netns exists, and a failed setup() DELs what it made itself
    // (after a failed ADD, or a result that cannot be cached). The plan's state still names the backend: it is what
    // a crash during the ADD leaves in the pod's network note, and the next start's release of the half-made pod
    // must DEL with it (host-local has taken an address by then, and no cache names it yet).
    if ((await this.backendFor()) !== 'cni') return this.embedded.prepare(req);
    // The bandwidth plugin would skip a malformed annotation silently; refused here as the embedded network does.
    bandwidthLimits(req.annotations);
    return { backend: 'cni', state: { backend: 'cni' } };
  }

  async setup(req: PodNetworkRequest, plan: PodNetworkPlan): Promise<PodNetworkResult> {
    if (plan.backend !== 'cni') return this.embedded.setup(req, plan);
    try {
      return await this.cni.setup(req);
    } catch (err) {
      // A failed CNI setup has DELeted the list itself: the plan's teardown (the caller's undo) has nothing left to
      // do, and a second DEL is not what plugins should see. The note on disk keeps the plan as it was, for a crash.
      plan.state.undone = true;
      throw err;
    }
  }

  async teardown(req: PodNetworkRequest, state: Record<string, unknown>): Promise<void> {
    if (state.backend === 'cni' && state.undone !== true) await this.cni.teardown(req, state);
    else if (state.backend === 'embedded') await this.embedded.teardown(req, state);
  }

  readiness(): NetworkReadiness {
    if (this.mode === 'embedded') return this.embedded.readiness();
    if (this.mode === 'cni' || this.cni.hasConfig()) return this.cni.readiness();
    return this.embedded.readiness();
  }

  setPodCidr(cidr: string): void {
    this.embedded.setPodCidr(cidr);
  }

  async close(): Promise<void> {
    this.cni.close();
    await this.embedded.close();
  }
}

/** Chooses the pod network backend from `[network] mode`. */
export async function createPodNetwork(config: BerthConfig, paths: { root: string }, log: Logger): Promise<PodNetwork> {
  const dataDir = path.join(paths.root, 'network');
  const embedded = new EmbeddedNetwork({
    bridge: config.network.bridge,
    subnet: config.network.subnet,
    chainPrefix: chainPrefixFor(config.network.bridge),
    dataDir,
    log: log.child({ backend: 'embedded' }),
    host: linuxEmbeddedHost,
  });
  const cni = new CniNetwork({ confDir: config.cni.confDir, binDirs: config.cni.binDirs, cacheDir: path.join(dataDir, 'cni-cache'), log: log.child({ backend: 'cni' }) });
  log.info('pod network', { mode: config.network.mode, bridge: config.network.bridge, subnet: config.network.subnet, cniConfDir: config.cni.confDir });
  return new NetworkManager(config.network.mode, embedded, cni, log);
}
