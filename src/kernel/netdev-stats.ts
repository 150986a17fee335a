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
  const netDir = path.join(sysDir, 'class', 'net');
  let names: string[];
  try {
    names = readdirSync(netDir);
  } catch (err) {
    if (codeOf(err) === 'ENOENT' || codeOf(err) === 'ENOTDIR') return undefined;
    throw err;
  }
  const wanted = names.filter((name) => name !== 'lo').sort((a, b) => Number(b === DEFAULT_INTERFACE) - Number(a === DEFAULT_INTERFACE) || a.localeCompare(b));
  const read = wanted.map((name) => {
    const values = COUNTERS.map((c) => files.read(sysDir, `${netDir}/${name}/statistics/${c}`));
    // An interface that went away between readdir and the reads is skipped.
    if (values.some((v) => v === undefined || !/^\d+\s*$/.test(v))) return undefined;
    const [rxBytes, rxErrors, txBytes, txErrors] = values.map((v) => BigInt(v!.trim()));
    return { name, rxBytes, rxErrors, txBytes, txErrors };
  });
  return read.filter((x): x is InterfaceCounters => x !== undefined);
}
