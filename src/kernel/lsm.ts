import { promises as fs, readFileSync } from 'node:fs';

// What the host's Linux security modules offer, read from sysfs/securityfs: whether AppArmor is on, which of its
// profiles are loaded, whether SELinux is on. Read by path, never by spawning a tool.

const APPARMOR_ENABLED = '/sys/module/apparmor/parameters/enabled';
const APPARMOR_PROFILES = '/sys/kernel/security/apparmor/profiles';
/** selinuxfs: present exactly when SELinux is enabled (enforcing or permissive). */
const SELINUX_ENFORCE = '/sys/fs/selinux/enforce';

export interface LsmHost {
  /** AppArmor is enabled in this kernel (fixed for the boot: read once). */
  apparmorEnabled(): boolean;
  /** The named AppArmor profile is loaded now (profiles come and go: read each time it is asked). */
  apparmorProfileLoaded(name: string): Promise<boolean>;
  /** SELinux is enabled on this host (fixed for the boot: read once). */
  selinuxEnabled(): boolean;
}

/** The names in securityfs's profiles list: one "name (mode)" a line. */
export function parseAppArmorProfiles(text: string): Set<string> {
  const names = new Set<string>();
  for (const line of text.split('\n')) {
    const m = /^(.*) \((\w+)\)$/.exec(line.trim());
    if (m) names.add(m[1]);
  }
  return names;
}

function once<T>(read: () => T): () => T {
  let value: { v: T } | undefined;
  return () => (value ??= { v: read() }).v;
}

export const kernelLsmHost: LsmHost = {
  apparmorEnabled: once(() => {
    try {
      return readFileSync(APPARMOR_ENABLED, 'utf8').trim() === 'Y';
    } catch {
      return false;
    }
  }),
  async apparmorProfileLoaded(name) {
    const text = await fs.readFile(APPARMOR_PROFILES, 'utf8').catch(() => '');
    return parseAppArmorProfiles(text).has(name);
  },
  selinuxEnabled: once(() => {
    try {
      readFileSync(SELINUX_ENFORCE);
      return true;
    } catch {
      return false;
    }
  }),
};
