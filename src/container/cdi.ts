import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parse as parseYaml } from 'yaml';
import { BerthError, errorMessage, failedPrecondition, invalidArgument, notFound } from '../errors.js';
import type { ShimDevice, ShimMount } from '../kernel/shim-spec.js';
import { deviceNumbers, devicePermissions, type GrantedDevice } from './devices.js';

// CDI (Container Device Interface, https://github.com/cncf-tags/container-device-interface, SPEC.md 1.1.0): spec
// files written by device drivers describe named devices as edits to a container: device nodes, mounts, env.
// A container asks for `vendor.com/class=name`; the edits of that device and of its spec file are applied.
// Hooks would run a vendor's program as root on the host for every such container: berth refuses them.

/** Spec files larger than this are refused: they are read whole on the container-create path. */
const MAX_SPEC_BYTES = 4 << 20;

export interface CdiDeviceNode {
  path: string;
  hostPath?: string;
  type?: 'b' | 'c' | 'u' | 'p';
  major?: number;
  minor?: number;
  fileMode?: number;
  /** As written: '' or absent = rwm, "none" = no access. */
  permissions?: string;
  uid?: number;
  gid?: number;
}

export interface CdiMount {
  hostPath: string;
  containerPath: string;
  type?: string;
  options: string[];
}

export interface CdiEdits {
  env: string[];
  deviceNodes: CdiDeviceNode[];
  mounts: CdiMount[];
  additionalGids: number[];
  /** Present in the file: refused when applied (berth runs no hooks). */
  hasHooks: boolean;
  /** Edits berth cannot apply (intelRdt, netDevices): refused when applied. */
  unsupported: string[];
}

export interface CdiSpec {
  file: string;
  /** Index of the spec directory: a device in a later directory wins over one of the same name in an earlier one. */
  priority: number;
  kind: string;
  edits: CdiEdits;
  devices: Map<string, CdiEdits>;
}

/** A spec file that could not be used, and the kind it declares when that much could be read. */
export interface BadCdiSpec {
  file: string;
  reason: string;
  kind?: string;
}

const VENDOR = /^[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$/;
const CLASS = /^[A-Za-z0-9](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?$/;
const DEVICE_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?$/;

/** Splits `vendor.com/class=name`; undefined when the name is not fully qualified. */
export function parseQualifiedName(name: string): { kind: string; device: string } | undefined {
  const eq = name.indexOf('=');
  const slash = name.indexOf('/');
  if (eq < 0 || slash < 0 || slash > eq) return undefined;
  const vendor = name.slice(0, slash);
  const cls = name.slice(slash + 1, eq);
  const device = name.slice(eq + 1);
  if (!VENDOR.test(vendor) || !CLASS.test(cls) || cls.length > 63 || !DEVICE_NAME.test(device)) return undefined;
  return { kind: `${vendor}/${cls}`, device };
}

// ---- parsing (pure) ----------------------------------------------------------------------------------

class SpecError extends Error {}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

function optionalString(o: Record<string, unknown>, key: string, where: string): string | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'string') throw new SpecError(`${where}.${key} must be a string`);
  return v;
}

function optionalInt(o: Record<string, unknown>, key: string, where: string, max: number): number | undefined {
  const v = o[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > max) throw new SpecError(`${where}.${key} must be an integer from 0 to ${max}`);
  return v;
}

function list(o: Record<string, unknown>, key: string, where: string): unknown[] {
  const v = o[key];
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new SpecError(`${where}.${key} must be a list`);
  return v;
}

function absolute(value: string | undefined, what: string): string {
  if (!value || !value.startsWith('/')) throw new SpecError(`${what} must be an absolute path`);
  return value;
}

function parseEdits(raw: unknown, where: string): CdiEdits {
  if (raw === undefined || raw === null) return { env: [], deviceNodes: [], mounts: [], additionalGids: [], hasHooks: false, unsupported: [] };
  if (!isObject(raw)) throw new SpecError(`${where} must be a mapping`);
  const env = list(raw, 'env', where).map((e, i) => {
    if (typeof e !== 'string' || e.indexOf('=') <= 0) throw new SpecError(`${where}.env[${i}] must be "NAME=value"`);
    return e;
  });
  const deviceNodes = list(raw, 'deviceNodes', where).map((n, i): CdiDeviceNode => {
    const at = `${where}.deviceNodes[${i}]`;
    if (!isObject(n)) throw new SpecError(`${at} must be a mapping`);
    const type = optionalString(n, 'type', at);
    if (type !== undefined && type !== '' && !['b', 'c', 'u', 'p'].includes(type)) throw new SpecError(`${at}.type must be b, c, u or p`);
    const permissions = optionalString(n, 'permissions', at);
    if (permissions && permissions !== 'none' && /[^rwm]/.test(permissions)) throw new SpecError(`${at}.permissions ${JSON.stringify(permissions)} is not a combination of r, w and m`);
    const hostPath = optionalString(n, 'hostPath', at);
    return {
      path: absolute(optionalString(n, 'path', at), `${at}.path`),
      ...(hostPath ? { hostPath: absolute(hostPath, `${at}.hostPath`) } : {}),
      ...(type ? { type: type as CdiDeviceNode['type'] } : {}),
      major: optionalInt(n, 'major', at, 0xffffffff),
      minor: optionalInt(n, 'minor', at, 0xffffffff),
      fileMode: optionalInt(n, 'fileMode', at, 0o7777),
      permissions,
      uid: optionalInt(n, 'uid', at, 0xfffffffe),
      gid: optionalInt(n, 'gid', at, 0xfffffffe),
    };
  });
  const mounts = list(raw, 'mounts', where).map((m, i): CdiMount => {
    const at = `${where}.mounts[${i}]`;
    if (!isObject(m)) throw new SpecError(`${at} must be a mapping`);
    const options = list(m, 'options', at).map((o, k) => {
      if (typeof o !== 'string') throw new SpecError(`${at}.options[${k}] must be a string`);
      return o;
    });
    const hostPath = optionalString(m, 'hostPath', at);
    if (!hostPath) throw new SpecError(`${at}.hostPath is required`);
    return { hostPath, containerPath: absolute(optionalString(m, 'containerPath', at), `${at}.containerPath`), type: optionalString(m, 'type', at) || undefined, options };
  });
  const additionalGids = list(raw, 'additionalGids', where).map((g, i) => {
    if (typeof g !== 'number' || !Number.isInteger(g) || g < 0 || g > 0xfffffffe) throw new SpecError(`${where}.additionalGids[${i}] must be a group id`);
    return g;
  });
  const hooks = list(raw, 'hooks', where);
  const unsupported: string[] = [];
  if (raw.intelRdt !== undefined && raw.intelRdt !== null) unsupported.push('intelRdt');
  if (list(raw, 'netDevices', where).length > 0) unsupported.push('netDevices');
  return { env, deviceNodes, mounts, additionalGids: additionalGids.filter((g) => g !== 0), hasHooks: hooks.length > 0, unsupported };
}

/** Parses one spec file's text (JSON for .json, YAML otherwise). Throws BadCdiSpec-shaped errors. */
export function parseCdiSpec(text: string, file: string, priority = 0): CdiSpec {
  let raw: unknown;
  try {
    raw = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
  } catch (err) {
    // Enough to tell which devices the file cannot be hiding: the kind, when it is legible.
    const legible = /(?:^|[{,\s])"?kind"?\s*:\s*"?([A-Za-z0-9._-]+\/[A-Za-z0-9._-]+)/m.exec(text)?.[1];
    throw badSpec(file, `not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${errorMessage(err)}`, legible);
  }
  const kind = isObject(raw) && typeof raw.kind === 'string' ? raw.kind : undefined;
  try {
    if (!isObject(raw)) throw new SpecError('the top level must be a mapping');
    if (typeof raw.cdiVersion !== 'string' || !/^\d+\.\d+\.\d+/.test(raw.cdiVersion)) throw new SpecError('cdiVersion must be a version such as "0.6.0"');
    if (!kind || !parseQualifiedName(`${kind}=x`)) throw new SpecError(`kind ${JSON.stringify(raw.kind)} must be "vendor.com/class"`);
    const rawDevices = list(raw, 'devices', 'spec');
    if (rawDevices.length === 0) throw new SpecError('devices must list at least one device');
    const devices = new Map<string, CdiEdits>();
    rawDevices.forEach((d, i) => {
      if (!isObject(d) || typeof d.name !== 'string' || !DEVICE_NAME.test(d.name)) throw new SpecError(`devices[${i}].name must be a device name`);
      if (devices.has(d.name)) throw new SpecError(`device ${d.name} is listed twice`);
      devices.set(d.name, parseEdits(d.containerEdits, `devices[${i}].containerEdits`));
    });
    return { file, priority, kind, edits: parseEdits(raw.containerEdits, 'containerEdits'), devices };
  } catch (err) {
    if (err instanceof SpecError) throw badSpec(file, err.message, kind);
    throw err;
  }
}

function badSpec(file: string, reason: string, kind?: string): BerthError & { bad: BadCdiSpec } {
  const err = new BerthError('failed_precondition', `CDI spec ${file}: ${reason}`) as BerthError & { bad: BadCdiSpec };
  err.bad = { file, reason, ...(kind ? { kind } : {}) };
  return err;
}

// ---- reading the spec directories --------------------------------------------------------------------

export interface CdiRegistry {
  specs: CdiSpec[];
  bad: BadCdiSpec[];
}

/** Reads every .json and .yaml file of the directories (missing directories are fine). Bad files are listed, not thrown. */
export async function loadCdiRegistry(dirs: string[]): Promise<CdiRegistry> {
  const specs: CdiSpec[] = [];
  const bad: BadCdiSpec[] = [];
  for (const [priority, dir] of dirs.entries()) {
    const names = await fs.readdir(dir).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT' || err.code === 'ENOTDIR') return [] as string[];
      throw failedPrecondition(`CDI: cannot read the spec directory ${dir}: ${errorMessage(err)}`);
    });
    for (const name of names.sort()) {
      if (!name.endsWith('.json') && !name.endsWith('.yaml')) continue;
      const file = path.join(dir, name);
      try {
        const st = await fs.stat(file);
        if (!st.isFile()) continue;
        if (st.size > MAX_SPEC_BYTES) throw badSpec(file, `larger than ${MAX_SPEC_BYTES} bytes`);
        specs.push(parseCdiSpec(await fs.readFile(file, 'utf8'), file, priority));
      } catch (err) {
        const known = (err as { bad?: BadCdiSpec }).bad;
        bad.push(known ?? { file, reason: errorMessage(err) });
      }
    }
  }
  return { specs, bad };
}

// ---- resolving requested devices ---------------------------------------------------------------------

/** What the container gets from its CDI devices. */
export interface CdiInjection {
  granted: GrantedDevice[];
  mounts: ShimMount[];
  env: string[];
  additionalGids: number[];
}

export type StatNode = (hostPath: string) => Promise<{ type: 'b' | 'c' | 'p' | 'other'; major: number; minor: number; mode: number } | undefined>;

export const statHostNode: StatNode = async (hostPath) => {
  const st = await fs.stat(hostPath).catch(() => undefined);
  if (!st) return undefined;
  const type = st.isBlockDevice() ? 'b' : st.isCharacterDevice() ? 'c' : st.isFIFO() ? 'p' : 'other';
  return { type, ...deviceNumbers(st.rdev), mode: st.mode & 0o777 };
};

function findDevice(registry: CdiRegistry, kind: string, device: string, field: string, name: string): { spec: CdiSpec; edits: CdiEdits } {
  let best: CdiSpec[] = [];
  for (const spec of registry.specs) {
    if (spec.kind !== kind || !spec.devices.has(device)) continue;
    if (best.length === 0 || spec.priority > best[0].priority) best = [spec];
    else if (spec.priority === best[0].priority) best.push(spec);
  }
  if (best.length > 1) {
    throw failedPrecondition(`${field}: CDI device "${name}" is defined by more than one spec file: ${best.map((s) => s.file).join(', ')}`);
  }
  if (best.length === 1) return { spec: best[0], edits: best[0].devices.get(device)! };
  // Not found: a file that could not be read, and may have defined it, is the likelier cause.
  const suspects = registry.bad.filter((b) => b.kind === undefined || b.kind === kind);
  if (suspects.length > 0) {
    throw failedPrecondition(
      `${field}: CDI device "${name}" not found; spec files that could not be read may define it: ${suspects.map((b) => `${b.file} (${b.reason})`).join('; ')}`,
    );
  }
  throw notFound(`${field}: CDI device "${name}" not found in any CDI spec file`);
}

function refuseUnapplicable(edits: CdiEdits, field: string, name: string, file: string): void {
  if (edits.hasHooks) {
    throw invalidArgument(`${field}: CDI device "${name}" needs hooks (${file}); berth does not run CDI hooks`);
  }
  if (edits.unsupported.length > 0) {
    throw invalidArgument(`${field}: CDI device "${name}" uses ${edits.unsupported.join(' and ')} (${file}), which berth does not support`);
  }
}

async function deviceNode(n: CdiDeviceNode, stat: StatNode, where: string): Promise<GrantedDevice> {
  const hostPath = n.hostPath ?? n.path;
  const host = await stat(hostPath);
  const given = n.type === 'u' ? 'c' : n.type;
  // A node the vendor described completely need not exist on the host (the CDI rule).
  const complete = given !== undefined && (given === 'p' || (n.major ?? 0) !== 0);
  if (!host && !complete) throw failedPrecondition(`${where}: host device ${hostPath} does not exist`);
  if (host && host.type === 'other' && !complete) throw failedPrecondition(`${where}: host path ${hostPath} is not a device node`);
  const type = given ?? (host!.type as 'b' | 'c' | 'p');
  if (!complete && host && host.type !== type) throw failedPrecondition(`${where}: host device ${hostPath} is not of type ${type}`);
  const node: ShimDevice = {
    path: n.path,
    type,
    major: n.major ?? (host && host.type === type ? host.major : 0),
    minor: n.minor ?? (host && host.type === type ? host.minor : 0),
    mode: n.fileMode ?? host?.mode ?? 0o666,
    uid: n.uid ?? 0,
    gid: n.gid ?? 0,
  };
  const permissions = n.permissions === 'none' ? '' : n.permissions ? devicePermissions(n.permissions, `${where}.permissions`) : 'rwm';
  return { node, permissions };
}

function toMount(m: CdiMount, where: string): ShimMount {
  const bind = !m.type || m.type === 'bind' || m.type === 'none' || m.options.includes('bind') || m.options.includes('rbind');
  if (!bind) return { destination: m.containerPath, type: m.type!, source: m.hostPath, options: m.options };
  if (!m.hostPath.startsWith('/')) throw failedPrecondition(`${where}: bind mount source ${m.hostPath} must be an absolute path`);
  const options = m.options.includes('bind') || m.options.includes('rbind') ? m.options : ['rbind', ...m.options];
  return { destination: m.containerPath, type: 'bind', source: m.hostPath, options };
}

/**
 * The edits for the requested devices, in request order: each device's own, and once per spec file the file's
 * common edits. `names[i]` errors name `config.cdi_devices[i]`.
 */
export async function resolveCdiDevices(names: string[], registry: CdiRegistry, stat: StatNode = statHostNode): Promise<CdiInjection> {
  const out: CdiInjection = { granted: [], mounts: [], env: [], additionalGids: [] };
  const specsApplied = new Set<CdiSpec>();
  const seen = new Set<string>();
  for (const [i, name] of names.entries()) {
    const field = `config.cdi_devices[${i}]`;
    const q = parseQualifiedName(name);
    if (!q) throw invalidArgument(`${field}: "${name}" is not a fully qualified CDI device name (vendor.com/class=name)`);
    if (seen.has(name)) continue;
    seen.add(name);
    const { spec, edits } = findDevice(registry, q.kind, q.device, field, name);
    const apply: CdiEdits[] = [edits];
    if (!specsApplied.has(spec)) apply.unshift(spec.edits);
    for (const e of apply) refuseUnapplicable(e, field, name, spec.file);
    specsApplied.add(spec);
    const where = `${field} (${name}, ${spec.file})`;
    for (const e of apply) {
      out.env.push(...e.env);
      for (const n of e.deviceNodes) out.granted.push(await deviceNode(n, stat, where));
      for (const m of e.mounts) out.mounts.push(toMount(m, where));
      out.additionalGids.push(...e.additionalGids);
    }
  }
  return out;
}
