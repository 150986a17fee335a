import { promises as fs } from 'node:fs';
import path from 'node:path';
import { failedPrecondition, invalidArgument } from '../errors.js';

// Where a container's CRI log goes. kubelet gives the pod's log_directory and a log_path relative to it; the pod
// spec shapes the container name in that path, so it is treated as hostile: it must stay beneath the directory.
// The monitor opens it with openat2(RESOLVE_BENEATH) + O_NOFOLLOW from a descriptor of the directory (at create
// and at every reopen), which is the guarantee; the checks here turn the plain mistakes and planted symlinks into
// clear errors before a process is made.

export interface LogLocation {
  /** The pod's log directory (absolute, kubelet's). */
  directory: string;
  /** The path beneath it, normalised, no `..`. */
  relative: string;
  /** directory/relative, what ContainerStatus reports. */
  full: string;
}

/** Validates log_path against log_directory. No directory or no path: no log (undefined). */
export function logLocation(directory: string, logPath: string): LogLocation | undefined {
  if (!directory || !logPath) return undefined;
  const field = 'config.log_path';
  if (logPath.includes('\0')) throw invalidArgument(`${field} contains a NUL byte`);
  if (path.isAbsolute(logPath)) throw invalidArgument(`${field} "${logPath}" is absolute; it must be relative to the pod's log_directory ${directory}`);
  if (logPath.split('/').includes('..')) throw invalidArgument(`${field} "${logPath}" has a ".." component; it must stay beneath the pod's log_directory ${directory}`);
  const relative = path.posix.normalize(logPath).replace(/\/+$/, '');
  if (relative === '.' || relative === '' || logPath.endsWith('/')) throw invalidArgument(`${field} "${logPath}" names no file beneath the pod's log_directory`);
  if (!path.isAbsolute(directory)) throw invalidArgument(`pod sandbox log_directory "${directory}" is not absolute`);
  return { directory, relative, full: path.join(directory, relative) };
}

/**
 * Refuses a log path whose existing components beneath the directory are symlinks (or the file is not a regular
 * file): the monitor would refuse to follow them anyway, this says so clearly. Missing components are fine: the
 * shim creates them beneath the directory without following links.
 */
export async function checkNoSymlinks(loc: LogLocation): Promise<void> {
  const parts = loc.relative.split('/');
  let current = loc.directory;
  for (let i = 0; i < parts.length; i++) {
    current = path.join(current, parts[i]);
    const st = await fs.lstat(current).catch((err: NodeJS.ErrnoException) => {
      if (err.code === 'ENOENT') return undefined;
      throw err;
    });
    if (!st) return;
    const last = i === parts.length - 1;
    if (st.isSymbolicLink()) throw failedPrecondition(`config.log_path "${loc.relative}": ${current} is a symlink; berth does not follow links in log paths`);
    if (!last && !st.isDirectory()) throw failedPrecondition(`config.log_path "${loc.relative}": ${current} is not a directory`);
    if (last && !st.isFile()) throw failedPrecondition(`config.log_path "${loc.relative}": ${current} exists and is not a regular file`);
  }
}
