import { promises as fs } from 'node:fs';
import path from 'node:path';
import { BerthError, errorMessage } from '../../errors.js';
import { Logger } from '../../log.js';
import { readJson, writeJsonAtomic } from '../../store/atomic.js';
import { withUndo } from '../../store/undo.js';
import { NetworkReadiness, PodNetworkRequest, PodNetworkResult } from '../types.js';
import { chooseConfigFile, CniConfigError, NetworkList, parseNetworkConfig, resultIps, RuntimeInputs } from './config.js';
import { cniAdd, cniCheck, cniDel, Invocation, missingPlugin } from './invoke.js';
import { DirWatcher } from './watch.js';

// Pod networking through CNI plugins. The network config is the lexically first file in the conf dir, re-read
// whenever the directory changes (and checked again at every pod start, so a pod started right after a config
// appears uses it). Each pod's ADD result is cached with the config it was made with, so DEL works after a restart
// and after the config changed.

export interface CniOptions {
  confDir: string;
  binDirs: string[];
  /** <root>/network/cni-cache */
  cacheDir: string;
  log: Logger;
}

interface Loaded {
  /** Full path of the chosen file; undefined when the conf dir holds none. */
  file?: string;
  list?: NetworkList;
  error?: string;
  /** name + mtime + size of what was parsed, to skip re-reading an unchanged file. */
  stamp?: string;
}

interface CacheEntry {
  version: 1;
  podId: string;
  file: string;
  list: NetworkList;
  ifName: string;
  name: string;
  namespace: string;
  uid: string;
  inputs: RuntimeInputs;
  result: unknown;
}

export interface CniPodState {
  backend: 'cni';
  network: string;
  file: string;
  /** The pod's netns file, for CHECK after a restart. */
  netns: string;
}

const IFNAME = 'eth0';

export class CniNetwork {
  private loaded: Loaded = {};
  private watcher: DirWatcher | undefined;
  private refreshing: Promise<Loaded> | undefined;
  private queuedRefresh: Promise<Loaded> | undefined;

  constructor(private readonly opts: CniOptions) {}

  /**
   * Re-reads the conf dir (cheap when nothing changed). A call made while a read is under way gets a read that
   * starts after it (one, shared by every such call), so a change that triggered the call is never missed.
   */
  refresh(): Promise<Loaded> {
    if (this.queuedRefresh) return this.queuedRefresh;
    if (!this.refreshing) {
      this.refreshing = this.load().finally(() => (this.refreshing = undefined));
      return this.refreshing;
    }
    this.queuedRefresh = this.refreshing
      .catch(() => undefined)
      .then(() => {
        this.queuedRefresh = undefined;
        return this.refresh();
      });
    return this.queuedRefresh;
  }

  private async load(): Promise<Loaded> {
    const names = await fs.readdir(this.opts.confDir).catch(() => [] as string[]);
    const chosen = chooseConfigFile(names);
    if (!chosen) {
      if (this.loaded.file) this.opts.log.info('CNI config removed', { confDir: this.opts.confDir });
      this.loaded = {};
      return this.loaded;
    }
    const file = path.join(this.opts.confDir, chosen);
    let stamp: string;
    let text: string;
    try {
      const st = await fs.stat(file);
      stamp = `${file}:${st.mtimeMs}:${st.size}:${st.ino}`;
      if (stamp === this.loaded.stamp) return this.loaded;
      text = await fs.readFile(file, 'utf8');
    } catch (err) {
      // Removed between readdir and read: the next event reloads.
      this.loaded = { file, error: `CNI config ${file}: cannot read: ${errorMessage(err)}` };
      return this.loaded;
    }
    try {
      const list = parseNetworkConfig(file, text);
      this.loaded = { file, list, stamp };
      this.opts.log.info('CNI config loaded', { file, network: list.name, plugins: list.plugins.map((p) => p.type) });
    } catch (err) {
      this.loaded = { file, stamp, error: err instanceof CniConfigError ? err.message : errorMessage(err) };
      this.opts.log.warn('CNI config is invalid', { file, error: this.loaded.error });
    }
    return this.loaded;
  }

  /** True when the conf dir holds a config file (valid or not): in auto mode, it wins over the embedded bridge. */
  hasConfig(): boolean {
    return this.loaded.file !== undefined;
  }

  readiness(): NetworkReadiness {
    const problem = this.problem(this.loaded);
    return problem ? { ready: false, reason: 'NetworkPluginNotReady', message: problem } : { ready: true, reason: '', message: '' };
  }

  private problem(l: Loaded): string | undefined {
    if (!l.file) return `no CNI network config found in ${this.opts.confDir}`;
    if (l.error || !l.list) return l.error ?? `CNI config ${l.file} is invalid`;
    const missing = missingPlugin(l.list, this.opts.binDirs);
    if (missing) return `CNI config ${l.file}: plugin "${missing}" not found in ${this.opts.binDirs.join(', ')}`;
    return undefined;
  }

  /** Loads the config, watches the conf dir, and CHECKs live pods' networks in the background. */
  async start(livePods: { podId: string; state: Record<string, unknown> }[]): Promise<void> {
    await this.refresh();
    this.watcher = new DirWatcher(this.opts.confDir, () => {
      this.refresh().catch((err) => this.opts.log.warn('cannot read CNI conf dir', { error: errorMessage(err) }));
    });
    const cniPods = livePods.filter((p) => p.state.backend === 'cni');
    void Promise.all(
      cniPods.map(async (p) => {
        try {
          if (await this.check(p.podId, typeof p.state.netns === 'string' ? p.state.netns : '')) this.opts.log.info('CNI CHECK passed', { pod: p.podId });
        } catch (err) {
          this.opts.log.warn('CNI CHECK failed', { pod: p.podId, error: errorMessage(err) });
        }
      }),
    );
    // Caches of pods that are gone (berth died between ADD and recording the pod): DEL them.
    const live = new Set(livePods.map((p) => p.podId));
    for (const name of await fs.readdir(this.opts.cacheDir).catch(() => [] as string[])) {
      const podId = name.replace(/\.json$/, '');
      if (!name.endsWith('.json') || live.has(podId)) continue;
      this.opts.log.info('deleting the CNI network of a pod that is gone', { pod: podId });
      await this.teardownFromCache(podId, '').catch((err) => this.opts.log.warn('CNI DEL of a gone pod failed', { pod: podId, error: errorMessage(err) }));
    }
  }

  private cacheFile(podId: string): string {
    return path.join(this.opts.cacheDir, `${podId}.json`);
  }

  private invocation(entry: Omit<CacheEntry, 'version' | 'result'>, netnsPath: string): Invocation {
    return {
      list: entry.list,
      file: entry.file,
      binDirs: this.opts.binDirs,
      podId: entry.podId,
      name: entry.name,
      namespace: entry.namespace,
      uid: entry.uid,
      netnsPath,
      ifName: entry.ifName,
      inputs: entry.inputs,
    };
  }

  async setup(req: PodNetworkRequest): Promise<PodNetworkResult> {
    const t0 = process.hrtime.bigint();
    const l = await this.refresh();
    const problem = this.problem(l);
    if (problem) throw new BerthError('failed_precondition', `pod ${req.podId}: ${problem}`);
    const entry: Omit<CacheEntry, 'version' | 'result'> = {
      podId: req.podId,
      file: l.file!,
      list: l.list!,
      ifName: IFNAME,
      name: req.name,
      namespace: req.namespace,
      uid: req.uid,
      inputs: { portMappings: req.portMappings, dns: req.dns, annotations: req.annotations },
    };
    const inv = this.invocation(entry, req.netnsPath);
    const result = await withUndo(this.opts.log.child({ pod: req.podId }), async (undo) => {
      // Registered before the ADD: a plugin that fails leaves what the ones before it made, and plugins accept a
      // DEL of what they never made. Without a cache to DEL from later, a result that cannot be cached is undone.
      let added: unknown;
      undo.push('CNI DEL', () => cniDel(inv, added));
      added = await cniAdd(inv);
      try {
        await fs.mkdir(this.opts.cacheDir, { recursive: true, mode: 0o700 });
        await writeJsonAtomic(this.cacheFile(req.podId), { version: 1, ...entry, result: added } satisfies CacheEntry);
      } catch (err) {
        throw new BerthError('internal', `pod ${req.podId}: cannot cache the CNI result: ${errorMessage(err)}`, { cause: err });
      }
      return added;
    });
    const ips = resultIps(result);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    this.opts.log.debug('pod network set up (CNI)', { pod: req.podId, network: l.list!.name, ips, ms: Math.round(ms * 100) / 100 });
    const state: CniPodState = { backend: 'cni', network: l.list!.name, file: l.file!, netns: req.netnsPath };
    return { ip: ips[0] ?? '', additionalIps: ips.slice(1), state: { ...state } };
  }

  /** CHECK with the cached config and result. False when there is nothing to check (no cache, or CHECK is off). */
  async check(podId: string, netnsPath: string): Promise<boolean> {
    const entry = await readJson<CacheEntry>(this.cacheFile(podId));
    if (!entry) return false;
    await cniCheck(this.invocation(entry, netnsPath), entry.result);
    return true;
  }

  async teardown(req: PodNetworkRequest, state: Record<string, unknown>): Promise<void> {
    if (state.backend !== 'cni') return;
    await this.teardownFromCache(req.podId, req.netnsPath, req);
  }

  private async teardownFromCache(podId: string, netnsPath: string, req?: PodNetworkRequest): Promise<void> {
    const netns = netnsPath && (await fs.access(netnsPath).then(() => true, () => false)) ? netnsPath : '';
    const entry = await readJson<CacheEntry>(this.cacheFile(podId));
    if (entry) {
      await cniDel(this.invocation(entry, netns), entry.result);
    } else if (req) {
      // No cache (lost, or made by an older berth): DEL with today's config; plugins accept unknown containers.
      const l = await this.refresh();
      if (!l.list) {
        this.opts.log.warn('no CNI cache and no valid config: cannot DEL the pod network', { pod: podId });
        return;
      }
      const inv = this.invocation(
        { podId, file: l.file!, list: l.list, ifName: IFNAME, name: req.name, namespace: req.namespace, uid: req.uid, inputs: { portMappings: req.portMappings, dns: req.dns, annotations: req.annotations } },
        netns,
      );
      await cniDel(inv, undefined);
    }
    await fs.rm(this.cacheFile(podId), { force: true });
  }

  close(): void {
    this.watcher?.close();
    this.watcher = undefined;
  }
}
