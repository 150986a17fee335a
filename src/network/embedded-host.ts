import { promises as fs } from 'node:fs';
import { iptablesRestore, iptablesSave } from './iptables.js';
import { attachHostEnd, bridgePorts, defaultMtu, deleteLink, ensureBridge, writeSysctl } from './links.js';
import { SavedTables } from './rules.js';

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
};
