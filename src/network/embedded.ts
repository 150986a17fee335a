import path from 'node:path';
import { BerthError, errorMessage, invalidArgument } from '../errors.js';
import { Logger } from '../log.js';
import { Cidr, formatCidr, formatIp, gatewayOf, parseCidr } from './cidr.js';
import { HostPort, HostPortTable, portRequest } from './hostports.js';
import { adopt, allocate, reconcile, release, SubnetOrigin } from './ipam.js';
import { IpamStore } from './ipam-store.js';
import { EmbeddedHost } from './embedded-host.js';
import { withUndo } from '../store/undo.js';
import { defaultRouteDevice, parseProcRoutes, routeCollision } from './routes.js';
import { Chains, chainsFor, deletePodRules, PodRuleRecord, podRules, reassertRules, ruleDrift } from './rules.js';
import { NetworkReadiness, PodNetworkPlan, PodNetworkRequest, PodNetworkResult } from './types.js';
import { PhaseTimer } from '../phases.js';
import { bandwidthLimits, BandwidthLimits, ifbName, orphanIfbs, shapingBatch } from './bandwidth.js';
import { ifbOwnerTag } from './ifb.js';

// The embedded network: one bridge, a veth pair per pod, IPAM in <root>/network/ipam.json, and berth's own
// iptables chains for masquerade and hostPorts. Made for a node without a CNI plugin.

export interface EmbeddedOptions {
  bridge: string;
  /** `[network] subnet`; a pod CIDR from kubelet (persisted) takes precedence. */
  subnet: string;
  /** How often watchRules() checks that berth's iptables rules are all there (default 5000 ms). */
  ruleCheckMs?: number;
  chainPrefix: string;
  /** <root>/network */
  dataDir: string;
  log: Logger;
  /** Links, sysctls, routes and iptables: linuxEmbeddedHost, or a test's fake. */
  host: EmbeddedHost;
}

export interface EmbeddedPodState {
  backend: 'embedded';
  ip: string;
  subnet: string;
  bridge: string;
  veth: string;
  chainPrefix: string;
  hostPorts: HostPort[];
  /** "namespace/name", for the message of a hostPort clash; absent in states of older berths. */
  pod?: string;
  /** The pod's bandwidth annotations, when it has any. */
  bandwidth?: BandwidthLimits;
  /** The ifb device shaping the pod's egress (host namespace; deleted with the pod). */
  ifb?: string;
}

function isEmbeddedState(s: Record<string, unknown>): s is Record<string, unknown> & EmbeddedPodState {
  return s.backend === 'embedded' && typeof s.ip === 'string';
}

/** Host end of a pod's veth pair: "berth" + the first 10 hex digits of the pod id (15 characters, IFNAMSIZ-1). */
export function vethName(podId: string): string {
  return `berth${podId.slice(0, 10)}`;
}

/**
 * Ports of berth's bridge that no live pod owns: only names berth gives (vethName), so a port another tool put on
 * the bridge is never counted. Run at start, and by `berth doctor`.
 */
export function orphanVeths(bridgePorts: readonly string[], liveVeths: ReadonlySet<string>): string[] {
  return bridgePorts.filter((port) => /^berth[0-9a-f]{10}$/.test(port) && !liveVeths.has(port));
}

/** The first IPv4 block of what kubelet sends ("10.244.1.0/24" or a dual-stack "10.244.1.0/24,fd00::/64"). */
export function ipv4PodCidr(text: string): Cidr | undefined {
  for (const part of text.split(',').map((s) => s.trim())) {
    const c = parseCidr(part, false);
    if (c) return c;
  }
  return undefined;
}

export class EmbeddedNetwork {
  private readonly store: IpamStore;
  private readonly chains: Chains;
  private readonly hostPorts = new HostPortTable();
  private subnet: Cidr;
  private subnetOrigin: SubnetOrigin = 'config';
  /** Subnets live pods use (pods started before a pod CIDR change keep theirs). */
  private readonly liveSubnets = new Set<string>();
  private readonly livePods = new Set<string>();
  private readonly liveVeths = new Set<string>();
  private readonly liveIfbs = new Set<string>();
  private mtu = 1500;
  private ensured: Promise<void> | undefined;
  /** Orphan veths are looked for once, at start: later, a pod being set up could look like one. */
  private vethsReconciled = false;
  private pending: Promise<void> = Promise.resolve();
  private status: NetworkReadiness = { ready: true, reason: '', message: '' };
  /** Why the last pod CIDR from kubelet is not followed: NetworkReady stays false until one is. */
  private podCidrProblem: string | undefined;
  private readonly host: EmbeddedHost;
  /** hostPort rules of live pods whose setup put them in: what a re-assertion puts back. */
  private readonly ruleRecords = new Map<string, PodRuleRecord>();
  /** A rule check (and re-assertion) in progress: pod rule changes and pod starts wait for it. */
  private guard: Promise<boolean> | undefined;
  /** Pod rule changes in flight: a check waits for them, so it never sees a pod half-added or half-deleted. */
  private readonly inflight = new Set<Promise<unknown>>();
  private watchTimer: NodeJS.Timeout | undefined;

  constructor(private readonly opts: EmbeddedOptions) {
    this.host = opts.host;
    this.store = new IpamStore(path.join(opts.dataDir, 'ipam.json'));
    this.chains = chainsFor(opts.chainPrefix);
    const subnet = parseCidr(opts.subnet);
    if (!subnet) throw invalidArgument(`network.subnet "${opts.subnet}" is not an IPv4 CIDR`);
    this.subnet = subnet;
  }

  /** Reads IPAM, frees addresses of pods that are gone, takes back what live pods hold. No kernel work. */
  async load(livePods: { podId: string; state: Record<string, unknown> }[]): Promise<void> {
    const state = await this.store.load();
    if (state.podCidr) {
      const c = parseCidr(state.podCidr);
      if (c) {
        this.subnet = c;
        this.subnetOrigin = 'kubelet';
      }
    }
    let changed = false;
    const live = new Set(livePods.map((p) => p.podId));
    for (const [ip, pod] of reconcile(state, live)) {
      this.opts.log.info('released the address of a pod that is gone', { pod, ip });
      changed = true;
    }
    for (const { podId, state: s } of livePods) {
      if (!isEmbeddedState(s) || s.bridge !== this.opts.bridge) continue;
      try {
        if (adopt(state, podId, s.ip)) changed = true;
      } catch (err) {
        this.opts.log.error('two live pods claim one address', { pod: podId, ip: s.ip, error: errorMessage(err) });
      }
      this.track(podId, s);
      // Put in by an earlier berth; the start's ensure() puts back any that went missing meanwhile.
      if ((s.hostPorts ?? []).length > 0) this.ruleRecords.set(podId, { ip: s.ip, ports: s.hostPorts });
      try {
        this.hostPorts.reserve(podId, s.hostPorts ?? [], { pod: s.pod });
      } catch (err) {
        this.opts.log.warn('live pods share a hostPort', { pod: podId, error: errorMessage(err) });
      }
    }
    if (changed) await this.store.save();
  }

  private track(podId: string, s: EmbeddedPodState): void {
    this.livePods.add(podId);
    this.liveSubnets.add(s.subnet);
    this.liveVeths.add(s.veth);
    if (s.ifb) this.liveIfbs.add(s.ifb);
  }

  /** Bridge, sysctls and chains; memoized, retried after a failure. */
  ensure(): Promise<void> {
    if (!this.ensured) {
      this.status = { ready: false, reason: 'NetworkPluginNotReady', message: `embedded network: setting up bridge ${this.opts.bridge}` };
    }
    this.ensured ??= this.doEnsure().then(
      () => {
        this.status = { ready: true, reason: '', message: '' };
      },
      (err) => {
        this.ensured = undefined;
        this.status = { ready: false, reason: 'NetworkPluginNotReady', message: errorMessage(err) };
        throw err;
      },
    );
    return this.ensured;
  }

  private async doEnsure(): Promise<void> {
    const t0 = Date.now();
    const what = `embedded network (bridge ${this.opts.bridge})`;
    const routes = parseProcRoutes(await this.host.readRoutes());
    const collision = routeCollision(this.subnet, routes, this.opts.bridge);
    if (collision) {
      throw new BerthError('failed_precondition', `${what}: ${collision}; set another [network] subnet (or pod CIDR)`);
    }
    this.mtu = await this.host.defaultMtu(defaultRouteDevice(routes));
    await this.host.ensureBridge(this.opts.bridge, `${formatIp(gatewayOf(this.subnet))}/${this.subnet.prefix}`);
    await this.host.writeSysctl('net.ipv4.ip_forward', '1');
    // Static rules are rewritten whatever the check finds (the subnets may have changed); excluding pod rule
    // changes, so that a pod torn down meanwhile does not get its rules back.
    await this.exclusive(() => this.reassert(what, true));
    // A veth on our bridge that no live pod owns outlived its pod (its netns is still referenced somewhere).
    // An ifb of berth's that no live pod owns was left by a crash between its creation and the pod's teardown.
    const [orphans, links] = this.vethsReconciled ? [[], []] : await Promise.all([this.host.bridgePorts(this.opts.bridge), this.host.ifbs(ifbOwnerTag(this.opts.bridge))]);
    this.vethsReconciled = true;
    for (const port of orphanVeths(orphans, this.liveVeths)) {
      this.opts.log.info('removing a veth no pod owns', { veth: port });
      await this.host.deleteLink(port, what).catch((err) => this.opts.log.warn('cannot remove orphan veth', { veth: port, error: errorMessage(err) }));
    }
    for (const ifb of orphanIfbs(links, this.liveIfbs)) {
      this.opts.log.info('removing an ifb device no pod owns', { ifb });
      await this.host.deleteLink(ifb, what).catch((err) => this.opts.log.warn('cannot remove orphan ifb device', { ifb, error: errorMessage(err) }));
    }
    this.opts.log.info('embedded network ready', { bridge: this.opts.bridge, subnet: formatCidr(this.subnet), mtu: this.mtu, ms: Date.now() - t0 });
  }

  private subnetsInUse(): string[] {
    return [formatCidr(this.subnet), ...[...this.liveSubnets].filter((s) => s !== formatCidr(this.subnet))];
  }

  /**
   * Checks every `ruleCheckMs` that berth's chains, jumps, static rules and live pods' hostPort rules are all there
   * (another tool's flushing iptables-restore, a firewall reload, removes them), and puts back what is missing. One
   * iptables-save per check, off the pod-start path; see README "Pod networking" for why this and not more.
   */
  watchRules(): void {
    if (this.watchTimer) return;
    this.watchTimer = setInterval(() => {
      if (!this.ensured || !this.status.ready) return;
      this.ensured
        .then(() => this.checkRules())
        .catch((err) => this.opts.log.error('cannot check or re-assert the iptables rules', { error: errorMessage(err) }));
    }, this.opts.ruleCheckMs ?? 5000);
    this.watchTimer.unref();
  }

  /** One check (joined if one is running); true when something was missing and has been put back. */
  checkRules(): Promise<boolean> {
    return this.guard ?? this.exclusive(() => this.reassert(`embedded network (bridge ${this.opts.bridge}): rule check`, false));
  }

  /** Runs `fn` alone: after any check in progress and the pod rule changes in flight, before new ones. */
  private async exclusive(fn: () => Promise<boolean>): Promise<boolean> {
    while (this.guard) await this.guard.catch(() => undefined);
    const run = (async () => {
      await Promise.allSettled([...this.inflight]);
      return fn();
    })();
    this.guard = run.finally(() => {
      this.guard = undefined;
    });
    return this.guard;
  }

  /** Puts back what is missing (`always`: rewrites the static rules even when nothing is). */
  private async reassert(what: string, always: boolean): Promise<boolean> {
    const t0 = Date.now();
    const saved = await this.host.iptablesSave(what);
    const subnets = this.subnetsInUse();
    const drift = ruleDrift({ chains: this.chains, saved, subnets, pods: this.ruleRecords });
    if (drift.length === 0 && !always) return false;
    // At start everything is missing on a fresh node: only live pods' missing rules are news then.
    const lost = always ? drift.filter((d) => d.includes(' of pod ')) : drift;
    if (lost.length > 0) this.opts.log.warn("berth's iptables rules were removed by something else: putting them back", { missing: lost.slice(0, 20), count: lost.length });
    await this.host.iptablesRestore(
      reassertRules({ chains: this.chains, bridge: this.opts.bridge, subnets, saved, livePods: this.livePods, pods: this.ruleRecords, drift }),
      what,
    );
    if (lost.length > 0) this.opts.log.info('iptables rules re-asserted', { bridge: this.opts.bridge, pods: drift.filter((d) => d.includes(' of pod ')).length, ms: Date.now() - t0 });
    return drift.length > 0;
  }

  /** A change to pod rules: waits out a check in progress, and is waited for by the next one. */
  private async ruleOp<T>(op: () => Promise<T>): Promise<T> {
    while (this.guard) await this.guard.catch(() => undefined);
    const p = op();
    this.inflight.add(p);
    try {
      return await p;
    } finally {
      this.inflight.delete(p);
    }
  }

  readiness(): NetworkReadiness {
    if (!this.status.ready || !this.podCidrProblem) return this.status;
    return { ready: false, reason: 'NetworkPluginNotReady', message: this.podCidrProblem };
  }

  setPodCidr(text: string): void {
    const cidr = ipv4PodCidr(text);
    const log = this.opts.log;
    if (!cidr) {
      log.warn('pod CIDR from kubelet has no IPv4 block; keeping the configured subnet', { podCidr: text });
      return;
    }
    const normalized = { base: cidr.base, prefix: cidr.prefix };
    if (formatCidr(normalized) === formatCidr(this.subnet)) return;
    // Never rejects: every later prepare() awaits this chain.
    this.pending = this.pending
      .then(() => this.followPodCidr(text, normalized))
      .catch((err) => {
        log.error('cannot follow the pod CIDR', { podCidr: text, error: errorMessage(err) });
        this.podCidrProblem = `cannot follow the pod CIDR ${text} from kubelet: ${errorMessage(err)}`;
      });
  }

  private async followPodCidr(text: string, cidr: Cidr): Promise<void> {
    const log = this.opts.log;
    if (cidr.prefix > 30) {
      log.error('pod CIDR is too small for pods', { podCidr: text });
      this.podCidrProblem = `pod CIDR ${text} from kubelet is too small (needs /30 or larger); pods keep getting addresses in ${formatCidr(this.subnet)}`;
      return;
    }
    const previous = { subnet: this.subnet, origin: this.subnetOrigin, podCidr: this.store.state.podCidr };
    this.subnet = cidr;
    this.subnetOrigin = 'kubelet';
    this.store.state.podCidr = formatCidr(cidr);
    try {
      await this.store.save();
    } catch (err) {
      // Unrecorded, the subnet would change back at the next restart while pods of the new one live on: keep the old.
      this.subnet = previous.subnet;
      this.subnetOrigin = previous.origin;
      this.store.state.podCidr = previous.podCidr;
      if (previous.podCidr === undefined) delete this.store.state.podCidr;
      throw new BerthError('internal', `cannot record it in ${this.store.file}: ${errorMessage(err)}`, { cause: err });
    }
    this.podCidrProblem = undefined;
    log.info('embedded network follows the pod CIDR', { from: formatCidr(previous.subnet), to: formatCidr(cidr) });
    if (this.ensured) {
      this.ensured = undefined;
      await this.ensure().catch((err) => log.error('embedded network cannot use the pod CIDR', { error: errorMessage(err) }));
    }
  }

  /**
   * Address and hostPorts are taken now, before the pod's netns exists, so that the namespace helper can make the
   * veth pair, eth0's address and route as it creates the netns: no process of its own on the pod-start path.
   */
  async prepare(req: PodNetworkRequest): Promise<PodNetworkPlan> {
    // Checked before anything is taken: a bad annotation is INVALID_ARGUMENT naming it, and costs nothing.
    const bandwidth = bandwidthLimits(req.annotations);
    await this.pending;
    await this.ensure();
    // A re-assertion under way finishes before the pod starts: its rules then go in beside berth's whole set.
    await this.guard?.catch(() => undefined);
    const { ports, fields } = portRequest(req.portMappings);
    const pod = `${req.namespace}/${req.name}`;
    return withUndo(this.opts.log.child({ pod: req.podId }), async (undo) => {
      this.hostPorts.reserve(req.podId, ports, { pod, fields });
      undo.push('release hostPorts', () => this.hostPorts.release(req.podId));
      const subnet = this.subnet;
      const ip = allocate(this.store.state, subnet, req.podId, this.subnetOrigin);
      undo.push('release address', () => release(this.store.state, req.podId));
      return this.planFor(req, { subnet, ip, ports, pod, bandwidth });
    });
  }

  private planFor(req: PodNetworkRequest, a: { subnet: Cidr; ip: string; ports: HostPort[]; pod: string; bandwidth?: BandwidthLimits }): PodNetworkPlan {
    const { subnet, ip, ports, pod, bandwidth } = a;
    const veth = vethName(req.podId);
    const state: EmbeddedPodState = {
      backend: 'embedded',
      ip,
      subnet: formatCidr(subnet),
      bridge: this.opts.bridge,
      veth,
      chainPrefix: this.opts.chainPrefix,
      hostPorts: ports,
      pod,
      ...(bandwidth ? { bandwidth } : {}),
      ...(bandwidth?.egressBitsPerSecond !== undefined ? { ifb: ifbName(req.podId) } : {}),
    };
    // Counted as live from here on, so that a concurrent re-run of ensure() (a pod CIDR change) keeps its subnet
    // masqueraded, its rules and its veth.
    this.track(req.podId, state);
    return {
      backend: 'embedded',
      ip,
      veth: { hostName: veth, address: `${ip}/${subnet.prefix}`, gateway: formatIp(gatewayOf(subnet)), mtu: this.mtu },
      state: { ...state },
    };
  }

  /**
   * The host end (created up) joins the bridge; hostPort rules go in. A failure takes out the rules this call put
   * in; the plan itself (address, hostPorts) is the caller's to undo, with teardown(plan.state).
   */
  async setup(req: PodNetworkRequest, plan: PodNetworkPlan): Promise<PodNetworkResult> {
    const timer = new PhaseTimer();
    if (!plan.veth || !isEmbeddedState(plan.state)) throw new BerthError('internal', `pod ${req.podId}: embedded network setup without a plan`);
    const state = plan.state;
    const what = `pod ${req.podId}: embedded network`;
    // When each step finished, in ms since setup() began: logged, so the pod-start path stays measurable.
    await withUndo(this.opts.log.child({ pod: req.podId }), async (undo) => {
      // The host end needs no undo of its own: it goes with the pod's netns.
      const insert = () =>
        this.ruleOp(async () => {
          await this.host.iptablesRestore(podRules(this.chains, req.podId, state.ip, state.hostPorts, '-I'), what);
          this.ruleRecords.set(req.podId, { ip: state.ip, ports: state.hostPorts });
        });
      const rules = (async () => {
        if (state.hostPorts.length === 0) return;
        try {
          await insert();
        } catch (err) {
          // Most likely P-HOSTPORTS is gone (a firewall reload since the last check): put berth's rules back, then
          // try once more. Only this failure path costs the extra iptables-save.
          if (!(await this.checkRules())) throw err;
          await insert();
        }
        timer.mark('hostPorts');
        undo.push('delete hostPort rules', () =>
          this.ruleOp(() => {
            this.ruleRecords.delete(req.podId);
            return this.host.iptablesRestore(podRules(this.chains, req.podId, state.ip, state.hostPorts, '-D'), what);
          }),
        );
      })();
      const settled = await Promise.allSettled([
        timer.timed('hostEnd', this.host.attachHostEnd(this.opts.bridge, state.veth, what)),
        rules,
        state.bandwidth ? timer.timed('bandwidth', this.shape(state, undo, what)) : undefined,
      ]);
      const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
      if (failed) throw failed.reason;
    });
    // Not awaited: the sandbox record (written next) holds the address too, and start() takes back into IPAM
    // whatever live pods hold, so a crash before this write lands loses nothing. It keeps an fsync off pod start.
    this.persist();
    this.opts.log.debug('pod network set up', { pod: req.podId, ip: state.ip, veth: state.veth, hostPorts: state.hostPorts.length, ms: timer.ms, steps: timer.phases });
    return { ip: state.ip, additionalIps: [], state: { ...state } };
  }

  /** Unannotated pods never get here. The qdiscs on the veth go with it; the ifb is the pod's to delete. */
  private async shape(state: EmbeddedPodState, undo: { push(name: string, fn: () => unknown): void }, what: string): Promise<void> {
    if (state.ifb) {
      const ifb = state.ifb;
      await this.host.createIfb(ifb, ifbOwnerTag(this.opts.bridge), what);
      undo.push('delete ifb device', () => this.host.deleteLink(ifb, what));
    }
    await this.host.tcBatch(shapingBatch(state.veth, state.ifb, state.bandwidth!), what);
  }

  async teardown(req: PodNetworkRequest, raw: Record<string, unknown>): Promise<void> {
    if (!isEmbeddedState(raw)) return;
    const what = `pod ${req.podId}: embedded network teardown`;
    const chains = chainsFor(raw.chainPrefix ?? this.opts.chainPrefix);
    const ports = raw.hostPorts ?? [];
    try {
      if (ports.length > 0) {
        await this.ruleOp(async () => {
          this.ruleRecords.delete(req.podId);
          try {
            await this.host.iptablesRestore(podRules(chains, req.podId, raw.ip, ports, '-D'), what);
          } catch {
            // Some rule was gone already (a second teardown, or a manual flush): delete whatever is left of the pod's.
            await this.host.iptablesRestore(deletePodRules(chains, await this.host.iptablesSave(what, 'nat'), req.podId), what);
          }
        });
      }
      // A failure above leaves the ifb too: a pod that is not live loses it at the next start (ensure()).
      if (raw.ifb) await this.host.deleteLink(raw.ifb, what);
    } finally {
      // Released even when rules are left (the error still goes up): the rules of a pod that is not live are swept
      // by ensure() at the next start, and until then a later pod's rules for the same hostPort go in ahead of them.
      // The veth goes with the pod's netns once it is unpinned: deleting it here would cost ~17 ms of RCU wait.
      const freed = release(this.store.state, req.podId);
      this.hostPorts.release(req.podId);
      this.livePods.delete(req.podId);
      this.liveVeths.delete(raw.veth);
      if (raw.ifb) this.liveIfbs.delete(raw.ifb);
      // Not awaited (two fsyncs off StopPodSandbox): a lost write frees itself, as start() releases the addresses
      // of every pod without network state in its sandbox record, which this teardown's caller clears (or removes).
      if (freed.length > 0) this.persist();
    }
  }

  private persist(): void {
    this.store.save().catch((err) => this.opts.log.error('cannot write IPAM state', { file: this.store.file, error: errorMessage(err) }));
  }

  /** Waits for pending IPAM writes. */
  async close(): Promise<void> {
    if (this.watchTimer) clearInterval(this.watchTimer);
    this.watchTimer = undefined;
    await this.ensured?.catch(() => undefined);
    await this.guard?.catch(() => undefined);
    await this.pending;
    await this.store.flush();
  }
}
