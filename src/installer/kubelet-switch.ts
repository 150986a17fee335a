import { promises as fs } from 'node:fs';
import path from 'node:path';
import {
  currentRuntimeEndpoint,
  KubeletConfigError,
  restoreConfigEndpoints,
  restoreFlagEndpoints,
  setConfigEndpoints,
  setFlagEndpoints,
} from './kubelet-config.js';

// Switches kubelet's configuration files to a CRI endpoint and back. The installer's host-side step runs this with
// the bundle's node while kubelet is stopped. Each file's original is saved in the state directory before the
// first write, with a copy of what was written: switching back restores the original byte for byte when the file
// is still what the switch wrote, and otherwise only puts the endpoint fields back (someone edited it since).

export interface KubeletFiles {
  config: string;
  flags: string;
  /** Where originals are kept (the installer's /var/lib/berth-installer/kubelet). */
  stateDir: string;
}

type Kind = 'config' | 'flags';

async function readIfPresent(file: string): Promise<string | undefined> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** Same owner-visible mode as the file it replaces; temp file + fsync + rename, so kubelet never reads half a file. */
async function writeAtomic(file: string, text: string): Promise<void> {
  const mode = (await fs.stat(file).catch(() => undefined))?.mode ?? 0o600;
  const tmp = `${file}.berth-${process.pid}.tmp`;
  const handle = await fs.open(tmp, 'w', mode & 0o7777);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.rename(tmp, file);
}

function saved(files: KubeletFiles, kind: Kind) {
  return { original: path.join(files.stateDir, `${kind}.original`), written: path.join(files.stateDir, `${kind}.switched`) };
}

/** Points both files (those present) at `endpoint`; returns the endpoint kubelet used before. */
export async function switchKubelet(files: KubeletFiles, endpoint: string): Promise<{ previous: string; changed: string[] }> {
  const config = await readIfPresent(files.config);
  const flags = await readIfPresent(files.flags);
  if (config === undefined && flags === undefined) {
    throw new KubeletConfigError(files.config, `neither it nor ${files.flags} exists: where does this node's kubelet read its runtime endpoint?`);
  }
  await fs.mkdir(files.stateDir, { recursive: true, mode: 0o700 });
  // A second switch (the installer pod restarted) must not take the already-switched file for the original.
  const firstOriginal = async (kind: Kind, current: string | undefined) => readIfPresent(saved(files, kind).original).then((o) => o ?? current);
  const previous = currentRuntimeEndpoint(await firstOriginal('config', config), await firstOriginal('flags', flags), files.config);
  const changed: string[] = [];
  const rewrite = async (kind: Kind, file: string, text: string | undefined, next: (t: string) => string) => {
    if (text === undefined) return;
    const out = next(text);
    const s = saved(files, kind);
    if ((await readIfPresent(s.original)) === undefined) await writeAtomic(s.original, text);
    await writeAtomic(s.written, out);
    if (out !== text) {
      await writeAtomic(file, out);
      changed.push(file);
    }
  };
  await rewrite('config', files.config, config, (t) => setConfigEndpoints(t, files.config, endpoint));
  await rewrite('flags', files.flags, flags, (t) => setFlagEndpoints(t, endpoint));
  return { previous, changed };
}

/** Undoes switchKubelet; returns the files it rewrote and those it could only patch (edited since the switch). */
export async function unswitchKubelet(files: KubeletFiles): Promise<{ restored: string[]; patched: string[] }> {
  const restored: string[] = [];
  const patched: string[] = [];
  for (const [kind, file] of [['config', files.config], ['flags', files.flags]] as [Kind, string][]) {
    const s = saved(files, kind);
    const original = await readIfPresent(s.original);
    if (original === undefined) continue;
    const current = await readIfPresent(file);
    const written = await readIfPresent(s.written);
    if (current === undefined || current === written) {
      await writeAtomic(file, original);
      restored.push(file);
    } else {
      const out = kind === 'config' ? restoreConfigEndpoints(current, original, file) : restoreFlagEndpoints(current, original);
      if (out !== current) await writeAtomic(file, out);
      patched.push(file);
    }
    await fs.rm(s.original, { force: true });
    await fs.rm(s.written, { force: true });
  }
  return { restored, patched };
}

/** Whether switchKubelet's originals are kept, i.e. kubelet is (or is being) switched. */
export async function isSwitched(files: KubeletFiles): Promise<boolean> {
  for (const kind of ['config', 'flags'] as Kind[]) if ((await readIfPresent(saved(files, kind).original)) !== undefined) return true;
  return false;
}
