import type { EmbeddedHost } from '../../../src/network/embedded-host.js';
import type { SavedTables } from '../../../src/network/rules.js';

// A recording stand-in for the host side of the embedded network. Each call is journaled as its name (iptables
// changes as `iptables -I`/`iptables -D`/`iptables base` by what they do); a name in `failing` throws instead.
// iptables is modelled as tables of chains and `-A` lines that restores change as iptables-restore --noflush does
// (a declared chain is created or flushed, a `-D` of a rule that is not there fails the batch, which then changes
// nothing), so that a test can flush them as a neighbour's firewall reload would and see what berth puts back.

export class FakeEmbeddedHost implements EmbeddedHost {
  readonly calls: string[] = [];
  readonly failing = new Set<string>();
  /** The host's devices as ifbs() reports them; createIfb adds, deleteLink removes. */
  readonly devices = new Set<string>(['lo', 'eth0']);
  readonly batches: string[] = [];

  private call(name: string): void {
    this.calls.push(name);
    if (this.failing.has(name)) throw new Error(`injected failure: ${name}`);
  }

  async readRoutes(): Promise<string> {
    this.call('readRoutes');
    return 'Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\neth0\t00000000\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n';
  }
  async defaultMtu(): Promise<number> {
    this.call('defaultMtu');
    return 1500;
  }
  async ensureBridge(): Promise<void> {
    this.call('ensureBridge');
  }
  async writeSysctl(): Promise<void> {
    this.call('writeSysctl');
  }
  async bridgePorts(): Promise<string[]> {
    this.call('bridgePorts');
    return [];
  }
  async deleteLink(name: string): Promise<void> {
    this.call('deleteLink');
    this.devices.delete(name);
  }
  async createIfb(name: string, owner: string): Promise<void> {
    this.call('createIfb');
    this.devices.add(name);
    this.ifbOwners.set(name, owner);
  }
  /** The alias each ifb was made with; a device added to `devices` by hand has none (as if this berth's). */
  ifbOwners = new Map<string, string>();
  async tcBatch(text: string): Promise<void> {
    this.call('tcBatch');
    this.batches.push(text);
  }
  async ifbs(owner: string): Promise<string[]> {
    this.call('ifbs');
    return [...this.devices].filter((d) => (this.ifbOwners.get(d) ?? owner) === owner);
  }
  async attachHostEnd(): Promise<void> {
    this.call('attachHostEnd');
  }
  tables: SavedTables = {
    nat: { chains: new Set(['PREROUTING', 'INPUT', 'OUTPUT', 'POSTROUTING']), rules: [] },
    filter: { chains: new Set(['INPUT', 'FORWARD', 'OUTPUT']), rules: [] },
  };
  /** Every batch applied, in order. */
  readonly restores: string[] = [];

  async iptablesSave(): Promise<SavedTables> {
    this.call('iptablesSave');
    return copyTables(this.tables);
  }
  async iptablesRestore(text: string): Promise<void> {
    if (text === '') return;
    const podRule = text.includes('-j DNAT --to-destination');
    const op = !podRule || /^:/m.test(text) ? 'iptables base' : /^-I /m.test(text) ? 'iptables -I' : 'iptables -D';
    this.call(op);
    this.tables = applyRestore(this.tables, text);
    this.restores.push(text);
  }

  /** A firewall reload: nat and filter restored with flush from a save without berth's chains, plus `extra`. */
  flushingReload(keep: (chainOrRule: string) => boolean, extra: { nat?: string[]; filter?: string[] } = {}): void {
    for (const table of ['nat', 'filter'] as const) {
      const t = this.tables[table] ?? { chains: new Set<string>(), rules: [] };
      this.tables[table] = { chains: new Set([...t.chains].filter(keep)), rules: [...t.rules.filter(keep), ...(extra[table] ?? [])] };
    }
  }
}

function copyTables(t: SavedTables): SavedTables {
  const out: SavedTables = {};
  for (const [name, v] of Object.entries(t)) out[name] = { chains: new Set(v.chains), rules: [...v.rules] };
  return out;
}

function applyRestore(before: SavedTables, text: string): SavedTables {
  const tables = copyTables(before);
  let cur: { chains: Set<string>; rules: string[] } | undefined;
  const chainOf = (rule: string) => rule.split(' ')[1]!;
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) {
      const name = line.slice(1);
      cur = tables[name] ??= { chains: new Set(), rules: [] };
    } else if (!cur || line === 'COMMIT' || line === '') {
      continue;
    } else if (line.startsWith(':')) {
      const chain = line.slice(1).split(' ')[0]!;
      cur.chains.add(chain);
      cur.rules = cur.rules.filter((r) => chainOf(r) !== chain);
    } else if (line.startsWith('-A ')) {
      if (!cur.chains.has(chainOf(line))) throw new Error(`iptables-restore: chain ${chainOf(line)} does not exist`);
      cur.rules.push(line);
    } else if (line.startsWith('-I ')) {
      const [, chain, maybePos, ...rest] = line.split(' ');
      if (!cur.chains.has(chain!)) throw new Error(`iptables-restore: chain ${chain} does not exist`);
      const spec = /^\d+$/.test(maybePos!) ? rest.join(' ') : [maybePos, ...rest].join(' ');
      cur.rules.unshift(`-A ${chain} ${spec}`);
    } else if (line.startsWith('-D ')) {
      const rule = '-A' + line.slice(2);
      const i = cur.rules.indexOf(rule);
      if (i < 0) throw new Error(`iptables-restore: no such rule: ${line}`);
      cur.rules.splice(i, 1);
    } else if (line.startsWith('-F ')) {
      const chain = line.slice(3);
      cur.rules = cur.rules.filter((r) => chainOf(r) !== chain);
    } else if (line.startsWith('-X ')) {
      cur.chains.delete(line.slice(3));
    } else {
      throw new Error(`fake iptables-restore: cannot read ${line}`);
    }
  }
  return tables;
}
