// Interface counters of a pod's network namespace, read from the sysfs instance berth-shim sandbox mounted from
// inside that namespace (`<pod run dir>/sys`: sysfs shows the network namespace of whoever mounted it). No
// process and no setns per read: four small files per interface, read synchronously (sysfs answers from kernel
// memory; see cgroup-stats.ts for what the asynchronous reads cost), kept open between reads when the caller
// passes its KernelFiles (owned by `sysDir`: release it when the pod is gone).
import { readdirSync } from 'node:fs';
import path from 'node:path';
import { codeOf } from './cgroup-io.js';
import { KernelFiles } from './kernel-files.js';

// Without the caller's: nothing kept open.
const UNCACHED = new KernelFiles(0);

export interface InterfaceCounters {
  name: string;
  rxBytes: bigint;
  rxErrors: bigint;
  txBytes: bigint;
  txErrors: bigint;
}

/** The pod's default interface, listed first. */
export const DEFAULT_INTERFACE = 'eth0';

const COUNTERS = ['rx_bytes', 'rx_errors', 'tx_bytes', 'tx_errors'] as const;

/**
 * Counters of every interface but loopback (which cAdvisor and kubelet leave out too), eth0 first; undefined when
 * `sysDir` holds no sysfs (a pod made before berth mounted one, or a host-network pod).
 */
export async function readInterfaceCounters(sysDir: string, files: KernelFiles = UNCACHED): Promise<InterfaceCounters[] | undefined> {
  const names = listInterfaces(sysDir);
  return names && countersOf(sysDir, names, files).counters;
}

/**
 * Reads the pods' counters with their files kept open and each pod's interface list remembered: listing a
 * network namespace's class/net costs ~50 µs of kernel time, more than reading eth0's four counters, and a pod's
 * interfaces are made with it. The list is read again when one of its interfaces vanished, and at most
 * `relistMs` after it was read, so an interface added later shows up within that time.
 */
export class InterfaceCountersReader {
  private readonly lists = new Map<string, { names: string[]; listedAt: number }>();

  constructor(
    private readonly files: KernelFiles,
    private readonly relistMs = 10_000,
    private readonly now: () => number = () => performance.now(),
  ) {}

  read(sysDir: string): InterfaceCounters[] | undefined {
    const known = this.lists.get(sysDir);
    if (known && this.now() - known.listedAt < this.relistMs) {
      const { counters, vanished } = countersOf(sysDir, known.names, this.files);
      if (!vanished) return counters;
    }
    const names = listInterfaces(sysDir);
    if (!names) {
      this.release(sysDir);
      return undefined;
    }
    this.lists.set(sysDir, { names, listedAt: this.now() });
    return countersOf(sysDir, names, this.files).counters;
  }

  /** Forgets the pod's list and closes its files (the pod is gone). */
  release(sysDir: string): void {
    this.lists.delete(sysDir);
    this.files.release(sysDir);
  }
}

/** Interface names but lo, eth0 first; undefined without a sysfs there. */
function listInterfaces(sysDir: string): string[] | undefined {
  let names: string[];
  try {
    names = readdirSync(path.join(sysDir, 'class', 'net'));
  } catch (err) {
    if (codeOf(err) === 'ENOENT' || codeOf(err) === 'ENOTDIR') return undefined;
    throw err;
  }
  return names.filter((name) => name !== 'lo').sort((a, b) => Number(b === DEFAULT_INTERFACE) - Number(a === DEFAULT_INTERFACE) || a.localeCompare(b));
}

function countersOf(sysDir: string, names: string[], files: KernelFiles): { counters: InterfaceCounters[]; vanished: boolean } {
  const counters: InterfaceCounters[] = [];
  let vanished = false;
  for (const name of names) {
    const values = COUNTERS.map((c) => files.read(sysDir, `${sysDir}/class/net/${name}/statistics/${c}`));
    // An interface that went away since it was listed is skipped.
    if (values.some((v) => v === undefined || !/^\d+\s*$/.test(v))) {
      vanished = true;
      continue;
    }
    const [rxBytes, rxErrors, txBytes, txErrors] = values.map((v) => BigInt(v!.trim()));
    counters.push({ name, rxBytes, rxErrors, txBytes, txErrors });
  }
  return { counters, vanished };
}
