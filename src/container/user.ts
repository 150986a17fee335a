import { invalidArgument } from '../errors.js';

// Who a container process runs as: the CRI security context first, then the image's User, resolved against the
// image's /etc/passwd and /etc/group the way Docker and containerd do.

export interface PasswdEntry {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

export interface GroupEntry {
  name: string;
  gid: number;
  members: string[];
}

export function parsePasswd(text: string): PasswdEntry[] {
  const out: PasswdEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(':');
    if (f.length < 4 || line.startsWith('#')) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) continue;
    out.push({ name: f[0], uid, gid, home: f[5] ?? '/' });
  }
  return out;
}

export function parseGroup(text: string): GroupEntry[] {
  const out: GroupEntry[] = [];
  for (const line of text.split('\n')) {
    const f = line.trim().split(':');
    if (f.length < 3 || line.startsWith('#')) continue;
    const gid = Number(f[2]);
    if (!Number.isInteger(gid)) continue;
    out.push({ name: f[0], gid, members: (f[3] ?? '').split(',').filter(Boolean) });
  }
  return out;
}

/** Where supplementary groups come from: Merge adds the user's memberships in the image's /etc/group, Strict does not. */
export type SupplementalGroupsPolicy = 'Merge' | 'Strict';

export interface UserRequest {
  runAsUser?: number;
  runAsUsername?: string;
  runAsGroup?: number;
  supplementalGroups: number[];
  /** Absent = Merge. */
  groupsPolicy?: SupplementalGroupsPolicy;
  imageUser?: string;
}

export interface ResolvedUser {
  uid: number;
  gid: number;
  /**
   * Every group the process holds: the primary gid first (as `id -G` and kubelet's ContainerUser show it), then
   * the rest in ascending order.
   */
  additionalGids: number[];
  home: string;
}

function lookupGroup(spec: string, groups: GroupEntry[], field: string): number {
  if (/^\d+$/.test(spec)) return Number(spec);
  const found = groups.find((g) => g.name === spec);
  if (!found) throw invalidArgument(`${field}: group "${spec}" not found in the image's /etc/group`);
  return found.gid;
}

export function resolveUser(req: UserRequest, passwd: PasswdEntry[], groups: GroupEntry[]): ResolvedUser {
  let uid: number;
  let gid: number | undefined;
  let entry: PasswdEntry | undefined;
  if (req.runAsUser !== undefined) {
    uid = req.runAsUser;
    entry = passwd.find((p) => p.uid === uid);
  } else if (req.runAsUsername) {
    entry = passwd.find((p) => p.name === req.runAsUsername);
    if (!entry) throw invalidArgument(`config.linux.security_context.run_as_username: user "${req.runAsUsername}" not found in the image's /etc/passwd`);
    uid = entry.uid;
  } else if (req.imageUser) {
    const [user, group] = req.imageUser.split(':', 2);
    if (/^\d+$/.test(user)) {
      uid = Number(user);
      entry = passwd.find((p) => p.uid === uid);
    } else {
      entry = passwd.find((p) => p.name === user);
      if (!entry) throw invalidArgument(`image user "${user}" not found in the image's /etc/passwd`);
      uid = entry.uid;
    }
    if (group) gid = lookupGroup(group, groups, 'image user group');
  } else {
    uid = 0;
    entry = passwd.find((p) => p.uid === 0);
  }
  if (req.runAsGroup !== undefined) gid = req.runAsGroup;
  gid ??= entry?.gid ?? 0;
  const extra = new Set<number>();
  // Strict ignores the image's group file for memberships: what groups the process holds is then the pod's to say.
  if (entry && req.groupsPolicy !== 'Strict') {
    for (const g of groups) if (g.members.includes(entry.name)) extra.add(g.gid);
  }
  for (const g of req.supplementalGroups) extra.add(g);
  extra.delete(gid);
  return { uid, gid, additionalGids: [gid, ...[...extra].sort((a, b) => a - b)], home: entry?.home ?? '/' };
}
