import { promises as fs } from 'node:fs';
import { BerthError, errorMessage } from '../errors.js';
import { iptablesRestore, iptablesSave } from './iptables.js';
import { attachHostEnd, bridgePorts, defaultMtu, deleteLink, ensureBridge, writeSysctl } from './links.js';
import { SavedTables } from './rules.js';
import { createIfb, ownedIfbs } from './ifb.js';
import { run } from './exec.js';

// What the embedded network does to the host: links, sysctls, routes, iptables. EmbeddedNetwork gets it through
// its options, so that unit tests drive its bookkeeping and rollback with a recording fake and no root.

export interface EmbeddedHost {
  /** The text of /proc/net/route. */
  readRoutes(): Promise<string>;
  defaultMtu(dev: string | undefined): Promise<number>;
  ensureBridge(bridge: string, address: string): Promise<void>;
  writeSysctl(key: string, value: string): Promise<void>;
  bridgePorts(bridge: string): Promise<string[]>;
  deleteLink(name: string, what: string): Promise<void>;
  attachHostEnd(bridge: string, hostName: string, what: string): Promise<void>;
  iptablesSave(what: string, table?: string): Promise<SavedTables>;
  iptablesRestore(text: string, what: string): Promise<void>;
  /** Makes an ifb device, up, aliased `owner`; one that exists already (left by a crash) is reused. */
  createIfb(name: string, owner: string, what: string): Promise<void>;
  /** Runs one `tc -batch` (qdiscs and filters of a pod's bandwidth limits). */
  tcBatch(text: string, what: string): Promise<void>;
  /** berth's ifb devices whose alias names `owner` (another berth's, on another bridge, are not listed). */
  ifbs(owner: string): Promise<string[]>;
}

export const linuxEmbeddedHost: EmbeddedHost = {
  readRoutes: () => fs.readFile('/proc/net/route', 'utf8'),
  defaultMtu,
  ensureBridge,
  writeSysctl,
  bridgePorts,
  deleteLink,
  attachHostEnd,
  iptablesSave,
  iptablesRestore,
  async createIfb(name, owner, what) {
    try {
      createIfb(name, owner);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'EEXIST') return;
      throw new BerthError('internal', `${what}: cannot create ifb device ${name}: ${errorMessage(err)}`, { cause: err });
    }
  },
  async tcBatch(text, what) {
    await run('tc', ['-batch', '-'], { what: `${what}: tc -batch`, input: text, timeoutMs: 10_000 });
  },
  ifbs: ownedIfbs,
};
