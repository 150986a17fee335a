import { promises as fs } from 'node:fs';
import path from 'node:path';
import { parseCommand } from '../cli/args.js';
import { socketAnswers } from '../cri/server.js';

// Whether a berth serves the root doctor looks at: then an object it is making right now looks orphaned, so --fix
// keeps off. Two signs, either enough: something answers on the socket, or a berth daemon process was started with
// this root (it may serve another socket).

/** The root a berth daemon's argv names (resolved against its working directory), or undefined if it is no daemon. */
export function daemonRoot(argv: string[], cwd: string): string | undefined {
  const main = argv.findIndex((a) => a.endsWith('/dist/src/main.js'));
  if (main < 0) return undefined;
  try {
    const command = parseCommand(argv.slice(main + 1));
    return command.kind === 'serve' ? path.resolve(cwd, command.options.root) : undefined;
  } catch {
    return undefined;
  }
}

async function daemonsWithRoot(root: string): Promise<number[]> {
  const wanted = path.resolve(root);
  const found: number[] = [];
  for (const entry of await fs.readdir('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    const cmdline = await fs.readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    if (!cmdline.includes('main.js')) continue;
    const cwd = await fs.readlink(`/proc/${entry}/cwd`).catch(() => '/');
    if (daemonRoot(cmdline.split('\0').filter(Boolean), cwd) === wanted) found.push(Number(entry));
  }
  return found;
}

/** Why a berth is taken to serve this root, or undefined when none does. */
export async function servingBerth(socket: string, root: string): Promise<string | undefined> {
  if (await socketAnswers(socket)) return `something answers on ${socket}`;
  const pids = await daemonsWithRoot(root);
  if (pids.length > 0) return `berth (pid ${pids.join(', ')}) runs with --root ${root}`;
  return undefined;
}
