import type { CgroupLayout } from '../kernel/cgroup-layout.js';
import type { BlockioDeviceLimit } from '../kernel/cgroup-plan.js';
import { probeBlockDevice, type BlockDeviceProbe } from '../kernel/block-devices.js';
import { ConfigError, type BlockioConfig } from './schema.js';

// [blockio] classes name devices by path; the cgroup files want major:minor. They are resolved when the config is
// loaded, so a device that is missing, a partition, or asked for a weight its scheduler cannot give stops berth at
// start naming the key, instead of failing (or being silently ignored) at some later container create.

/** Class name → the cgroup limits of its devices. */
export type BlockioClasses = Record<string, BlockioDeviceLimit[]>;

export type ProbeDevice = (devicePath: string) => Promise<BlockDeviceProbe>;

export async function resolveBlockioClasses(config: BlockioConfig, probe: ProbeDevice): Promise<BlockioClasses> {
  const out: BlockioClasses = {};
  for (const [name, cls] of Object.entries(config.classes)) {
    const seen = new Map<string, number>();
    out[name] = [];
    for (const [i, d] of cls.devices.entries()) {
      const key = `blockio.classes.${name}.devices[${i}]`;
      const found = await probe(d.path);
      if (!found.ok) throw new ConfigError(`${key}.path`, found.reason);
      const dev = `${found.major}:${found.minor}`;
      const twin = seen.get(dev);
      if (twin !== undefined) throw new ConfigError(`${key}.path`, `${d.path} is device ${dev}, already limited by devices[${twin}] of this class`);
      seen.set(dev, i);
      if (d.weight !== undefined && !found.weightMechanism) {
        throw new ConfigError(`${key}.weight`, `device ${d.path} (${dev}) has no I/O weight: its scheduler is not BFQ and iocost is not enabled for it, so the weight would be ignored`);
      }
      const { path: _path, ...limits } = d;
      out[name].push({ major: found.major, minor: found.minor, ...limits, ...(d.weight !== undefined ? { weightMechanism: found.weightMechanism } : {}) });
    }
  }
  return out;
}

/** The probe of the real host, for the cgroup layout berth runs with. */
export function hostDeviceProbe(layout: CgroupLayout): ProbeDevice {
  return (devicePath) => probeBlockDevice(devicePath, layout);
}
