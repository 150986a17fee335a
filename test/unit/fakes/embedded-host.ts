import type { EmbeddedHost } from '../../../src/network/embedded-host.js';
import type { SavedTables } from '../../../src/network/rules.js';

// A recording stand-in for the host side of the embedded network. Each call is journaled as its name (iptables
// changes as `iptables -I`/`iptables -D`/`iptables base` by what they do); a name in `failing` throws instead.

export class FakeEmbeddedHost implements EmbeddedHost {
  readonly calls: string[] = [];
  readonly failing = new Set<string>();
  /** The host's devices as links() reports them; createIfb adds, deleteLink removes. */
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
  async createIfb(name: string): Promise<void> {
    this.call('createIfb');
    this.devices.add(name);
  }
  async tcBatch(text: string): Promise<void> {
    this.call('tcBatch');
    this.batches.push(text);
  }
  async links(): Promise<string[]> {
    this.call('links');
    return [...this.devices];
  }
  async attachHostEnd(): Promise<void> {
    this.call('attachHostEnd');
  }
  async iptablesSave(): Promise<SavedTables> {
    this.call('iptablesSave');
    return {};
  }
  async iptablesRestore(text: string): Promise<void> {
    if (text === '') return;
    const podRule = text.includes('-j DNAT --to-destination');
    const op = !podRule ? 'iptables base' : /^-I /m.test(text) ? 'iptables -I' : 'iptables -D';
    this.call(op);
  }
}
