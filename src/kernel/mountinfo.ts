// /proc/<pid>/mountinfo parser (see proc(5)). The parser is pure so layouts of other hosts can be
// unit-tested from their text; readMountInfo() is the one line that touches the host.
import { readFileSync } from 'node:fs';

export interface MountInfo {
  id: number;
  parentId: number;
  /** "major:minor" of the device (0:N for virtual filesystems). */
  device: string;
  /** The directory of the filesystem that forms this mount's root (e.g. a cgroup path). */
  root: string;
  mountPoint: string;
  /** Per-mount options (rw, nosuid, relatime...). */
  options: string[];
  /** Optional tagged fields such as shared:1 or master:2. */
  optional: string[];
  fsType: string;
  source: string;
  /** Per-superblock options; for cgroup v1 these name the controllers (rw,cpu,cpuacct). */
  superOptions: string[];
}

/** The kernel escapes space, tab, newline and backslash in paths as \ooo (octal). */
export function unescapeOctal(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}

/** Parses mountinfo text; malformed lines are skipped rather than failing the whole table. */
export function parseMountInfo(text: string): MountInfo[] {
  const mounts: MountInfo[] = [];
  for (const line of text.split('\n')) {
    const fields = line.trim().split(' ');
    // The optional fields are variable in number and end at a lone "-".
    const sep = fields.indexOf('-', 6);
    if (fields.length < 7 || sep < 0 || fields.length < sep + 3) continue;
    mounts.push({
      id: Number(fields[0]),
      parentId: Number(fields[1]),
      device: fields[2],
      root: unescapeOctal(fields[3]),
      mountPoint: unescapeOctal(fields[4]),
      options: fields[5].split(','),
      optional: fields.slice(6, sep),
      fsType: fields[sep + 1],
      source: unescapeOctal(fields[sep + 2]),
      superOptions: (fields[sep + 3] ?? '').split(',').filter((o) => o !== ''),
    });
  }
  return mounts;
}

export function readMountInfo(file = '/proc/self/mountinfo'): MountInfo[] {
  return parseMountInfo(readFileSync(file, 'utf8'));
}
