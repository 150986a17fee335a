import { HostPort } from './hostports.js';

// iptables rules of the embedded network, as iptables-restore text (applied with --noflush). Pure.
//
// Chains (prefix P, "BERTH" for the default bridge):
//   nat    P-HOSTPORTS    per-pod DNAT rules, each tagged with the comment "berth-pod:<pod id>";
//                         jumped to from PREROUTING and OUTPUT for traffic to a local address
//   nat    P-POSTROUTING  masquerade: pod traffic leaving the subnet, loopback-sourced traffic to a hostPort, and
//                         hairpin (a pod reaching a pod, itself included, through a hostPort)
//   filter P-FORWARD      accept traffic to and from the bridge (a FORWARD policy of DROP does not cut pods off)
// P-POSTROUTING and P-FORWARD are rewritten whole at start (declaring an existing chain in iptables-restore --noflush
// flushes it); P-HOSTPORTS is declared only when missing, so live pods' rules survive a restart.

export interface Chains {
  hostports: string;
  postrouting: string;
  forward: string;
}

export function chainsFor(prefix: string): Chains {
  return { hostports: `${prefix}-HOSTPORTS`, postrouting: `${prefix}-POSTROUTING`, forward: `${prefix}-FORWARD` };
}

/** iptables chain names are at most 28 characters; this leaves room for "-POSTROUTING". */
export const MAX_PREFIX_LENGTH = 28 - '-POSTROUTING'.length;

const POD_COMMENT = 'berth-pod:';

export function podComment(podId: string): string {
  return `${POD_COMMENT}${podId}`;
}

/** What iptables-save shows: per table, the chains that exist and the rules. */
export interface SavedTables {
  [table: string]: { chains: Set<string>; rules: string[] };
}

export function parseSave(text: string): SavedTables {
  const out: SavedTables = {};
  let current: { chains: Set<string>; rules: string[] } | undefined;
  for (const line of text.split('\n')) {
    if (line.startsWith('*')) {
      current = { chains: new Set(), rules: [] };
      out[line.slice(1).trim()] = current;
    } else if (!current) {
      continue;
    } else if (line.startsWith(':')) {
      current.chains.add(line.slice(1).split(' ')[0]!);
    } else if (line.startsWith('-A ')) {
      current.rules.push(line);
    }
  }
  return out;
}

interface Jump {
  table: 'nat' | 'filter';
  from: string;
  spec: string;
  to: string;
}

function jumps(c: Chains): Jump[] {
  const local = '-m addrtype --dst-type LOCAL';
  return [
    { table: 'nat', from: 'PREROUTING', spec: `${local} -m comment --comment "berth hostPorts"`, to: c.hostports },
    { table: 'nat', from: 'OUTPUT', spec: `${local} -m comment --comment "berth hostPorts"`, to: c.hostports },
    { table: 'nat', from: 'POSTROUTING', spec: '-m comment --comment "berth masquerade"', to: c.postrouting },
    { table: 'filter', from: 'FORWARD', spec: '-m comment --comment "berth forward"', to: c.forward },
  ];
}

function hasJump(saved: SavedTables, j: Jump): boolean {
  const rules = saved[j.table]?.rules ?? [];
  return rules.some((r) => r.startsWith(`-A ${j.from} `) && r.endsWith(` -j ${j.to}`));
}

/** The per-pod comment in a saved rule, or undefined. */
export function podOfRule(rule: string): string | undefined {
  const m = /--comment "?berth-pod:([0-9a-zA-Z_.-]+)"?/.exec(rule);
  return m?.[1];
}

/**
 * The saved `-A` lines of P-HOSTPORTS that are tagged with a pod that is not live: swept at start, and what
 * `berth doctor` lists. Untagged rules are not berth's per-pod rules and are never included.
 */
export function staleHostPortRules(chains: Chains, saved: SavedTables, livePods: ReadonlySet<string>): string[] {
  return (saved.nat?.rules ?? []).filter((rule) => {
    if (!rule.startsWith(`-A ${chains.hostports} `)) return false;
    const pod = podOfRule(rule);
    return pod !== undefined && !livePods.has(pod);
  });
}

export interface BaseRulesInput {
  chains: Chains;
  bridge: string;
  /** Pod subnets in use (the current one first). */
  subnets: string[];
  saved: SavedTables;
  /** Pods whose DNAT rules stay; rules of any other pod in P-HOSTPORTS are deleted. */
  livePods: ReadonlySet<string>;
}

/** The start-time batch: chains, static rules, jumps (only those missing), stale per-pod rules deleted. */
export function baseRules(input: BaseRulesInput): string {
  const { chains: c, bridge, subnets, saved } = input;
  const nat: string[] = ['*nat'];
  const natSaved = saved.nat ?? { chains: new Set<string>(), rules: [] };
  if (!natSaved.chains.has(c.hostports)) nat.push(`:${c.hostports} - [0:0]`);
  nat.push(`:${c.postrouting} - [0:0]`);
  nat.push(`-A ${c.postrouting} -s 127.0.0.0/8 -o ${bridge} -m comment --comment "berth: node to hostPort via loopback" -j MASQUERADE`);
  for (const s of subnets) {
    nat.push(`-A ${c.postrouting} -s ${s} -d ${s} -m conntrack --ctstate DNAT -m comment --comment "berth: hairpin" -j MASQUERADE`);
    nat.push(`-A ${c.postrouting} -s ${s} ! -d ${s} -m comment --comment "berth: pod traffic leaving the subnet" -j MASQUERADE`);
  }
  for (const rule of staleHostPortRules(c, saved, input.livePods)) nat.push('-D' + rule.slice(2));
  const filter: string[] = ['*filter', `:${c.forward} - [0:0]`];
  filter.push(`-A ${c.forward} -o ${bridge} -m comment --comment "berth: to pods" -j ACCEPT`);
  filter.push(`-A ${c.forward} -i ${bridge} -m comment --comment "berth: from pods" -j ACCEPT`);
  for (const j of jumps(c)) {
    if (hasJump(saved, j)) continue;
    (j.table === 'nat' ? nat : filter).push(`-I ${j.from} 1 ${j.spec} -j ${j.to}`);
  }
  return [...nat, 'COMMIT', ...filter, 'COMMIT', ''].join('\n');
}

/**
 * A pod's DNAT rules, to add (`-A`, or `-I` ahead of older rules for the same port: those of a pod whose teardown
 * could not delete them, which then outrank nobody) or delete (`-D`). Empty when the pod has no hostPorts.
 */
export function podRules(chains: Chains, podId: string, ip: string, ports: HostPort[], op: '-A' | '-I' | '-D'): string {
  if (ports.length === 0) return '';
  const lines = ['*nat'];
  for (const p of ports) {
    const dst = p.hostIp ? `-d ${p.hostIp}/32 ` : '';
    lines.push(
      `${op} ${chains.hostports} ${dst}-p ${p.protocol} -m ${p.protocol} --dport ${p.hostPort} -m comment --comment "${podComment(podId)}" ` +
        `-j DNAT --to-destination ${ip}:${p.containerPort}`,
    );
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}

/** Deletes whatever rules of `podId` the saved nat table holds in P-HOSTPORTS (fallback when podRules -D fails). */
export function deletePodRules(chains: Chains, saved: SavedTables, podId: string): string {
  const rules = (saved.nat?.rules ?? []).filter((r) => r.startsWith(`-A ${chains.hostports} `) && podOfRule(r) === podId);
  if (rules.length === 0) return '';
  return ['*nat', ...rules.map((r) => '-D' + r.slice(2)), 'COMMIT', ''].join('\n');
}

/** Removes berth's chains and jumps entirely (tests, and an operator who drops the embedded network). */
export function removeAll(chains: Chains, saved: SavedTables): string {
  const nat: string[] = ['*nat'];
  const filter: string[] = ['*filter'];
  for (const j of jumps(chains)) {
    for (const r of saved[j.table]?.rules ?? []) {
      if (r.startsWith(`-A ${j.from} `) && r.endsWith(` -j ${j.to}`)) (j.table === 'nat' ? nat : filter).push('-D' + r.slice(2));
    }
  }
  for (const chain of [chains.hostports, chains.postrouting]) {
    if (saved.nat?.chains.has(chain)) nat.push(`-F ${chain}`, `-X ${chain}`);
  }
  if (saved.filter?.chains.has(chains.forward)) filter.push(`-F ${chains.forward}`, `-X ${chains.forward}`);
  return [...nat, 'COMMIT', ...filter, 'COMMIT', ''].join('\n');
}

/** A live pod's hostPort rules as berth's records hold them: what a re-assertion puts back. */
export interface PodRuleRecord {
  ip: string;
  ports: HostPort[];
}

export interface DriftInput {
  chains: Chains;
  saved: SavedTables;
  /** Pod subnets in use: P-POSTROUTING holds two rules per subnet and one for loopback. */
  subnets: string[];
  /** Live pods with hostPorts, by pod id. */
  pods: ReadonlyMap<string, PodRuleRecord>;
}

/**
 * What of berth's rules the saved tables lack: chains, jumps, static rules (counted, as iptables-save may print a
 * rule in another canonical form than berth wrote it) and each live pod's DNAT rules (one per hostPort, matched by
 * its pod comment and port). Empty when nothing is missing. Rules others added are never looked at.
 */
export function ruleDrift(input: DriftInput): string[] {
  const { chains: c, saved, subnets, pods } = input;
  const missing: string[] = [];
  const natChains = saved.nat?.chains ?? new Set<string>();
  for (const chain of [c.hostports, c.postrouting]) if (!natChains.has(chain)) missing.push(`chain nat ${chain}`);
  if (!saved.filter?.chains.has(c.forward)) missing.push(`chain filter ${c.forward}`);
  for (const j of jumps(c)) if (!hasJump(saved, j)) missing.push(`jump ${j.table} ${j.from} -> ${j.to}`);
  const inChain = (table: 'nat' | 'filter', chain: string) => (saved[table]?.rules ?? []).filter((r) => r.startsWith(`-A ${chain} `));
  if (natChains.has(c.postrouting) && inChain('nat', c.postrouting).length < 1 + 2 * subnets.length) missing.push(`rules of nat ${c.postrouting}`);
  if (saved.filter?.chains.has(c.forward) && inChain('filter', c.forward).length < 2) missing.push(`rules of filter ${c.forward}`);
  if (natChains.has(c.hostports)) {
    const byPod = new Map<string, string[]>();
    for (const r of inChain('nat', c.hostports)) {
      const pod = podOfRule(r);
      if (pod) byPod.set(pod, [...(byPod.get(pod) ?? []), r]);
    }
    for (const [podId, rec] of pods) {
      const rules = byPod.get(podId) ?? [];
      for (const p of rec.ports) {
        const found = rules.some((r) => r.includes(` -p ${p.protocol} `) && r.includes(`--dport ${p.hostPort} `) && r.includes(`--to-destination ${rec.ip}:${p.containerPort}`));
        if (!found) missing.push(`hostPort rule of pod ${podId} (${p.hostPort}/${p.protocol})`);
      }
    }
  } else {
    for (const podId of pods.keys()) missing.push(`hostPort rules of pod ${podId}`);
  }
  return missing;
}

/**
 * The batch that puts berth's rules back after someone else removed some (a firewall reload flushing nat and
 * filter): the start-time batch (chains, static rules, missing jumps, stale pod rules deleted), then every live
 * pod with a rule missing gets its whole set again, its surviving rules deleted first so none is doubled.
 */
export function reassertRules(input: BaseRulesInput & { pods: ReadonlyMap<string, PodRuleRecord>; drift: string[] }): string {
  const base = baseRules(input);
  const nat: string[] = [];
  const hostportsKept = input.saved.nat?.chains.has(input.chains.hostports) ?? false;
  for (const [podId, rec] of input.pods) {
    if (!input.drift.some((d) => d.includes(`pod ${podId}`))) continue;
    if (hostportsKept) {
      const del = deletePodRules(input.chains, input.saved, podId);
      if (del) nat.push(...del.split('\n').filter((l) => l.startsWith('-D ')));
    }
    nat.push(...podRules(input.chains, podId, rec.ip, rec.ports, '-A').split('\n').filter((l) => l.startsWith('-A ')));
  }
  if (nat.length === 0) return base;
  // Into the nat section of the base batch, after its chain declarations: a flushed-away P-HOSTPORTS is declared
  // there first.
  const lines = base.split('\n');
  lines.splice(lines.indexOf('COMMIT'), 0, ...nat);
  return lines.join('\n');
}
