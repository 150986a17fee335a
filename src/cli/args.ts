import { isLevel, Level } from '../log.js';

export interface DaemonOptions {
  configFile: string;
  configRequired: boolean;
  socket: string;
  root: string;
  stateDir: string;
  logLevel: Level;
}

export const defaults = {
  configFile: '/etc/berth/config.toml',
  root: '/var/lib/berth',
  stateDir: '/run/berth',
  socket: '/run/berth/berth.sock',
};

export class UsageError extends Error {}

export const usage = `usage: berth [--config FILE] [--socket PATH] [--root DIR] [--state-dir DIR] [--log-level debug|info|warn|error]`;

/** Each flag is independent of the others: --state-dir does not move the socket, so scripts can rely on each default. */
export function parseArgs(argv: string[]): DaemonOptions {
  const values: Record<string, string> = {};
  const known = ['--config', '--socket', '--root', '--state-dir', '--log-level'];
  for (let i = 0; i < argv.length; i++) {
    let arg = argv[i];
    let value: string | undefined;
    const eq = arg.indexOf('=');
    if (eq > 0) {
      value = arg.slice(eq + 1);
      arg = arg.slice(0, eq);
    }
    if (!known.includes(arg)) throw new UsageError(`unknown argument ${arg}\n${usage}`);
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) throw new UsageError(`${arg} needs a value\n${usage}`);
    }
    if (value === '') throw new UsageError(`${arg} needs a non-empty value`);
    values[arg] = value;
  }
  const logLevel = values['--log-level'] ?? 'info';
  if (!isLevel(logLevel)) throw new UsageError(`--log-level must be debug, info, warn or error, not ${logLevel}`);
  const stateDir = values['--state-dir'] ?? defaults.stateDir;
  let socket = values['--socket'] ?? defaults.socket;
  if (socket.startsWith('unix://')) socket = socket.slice('unix://'.length);
  return {
    configFile: values['--config'] ?? defaults.configFile,
    configRequired: values['--config'] !== undefined,
    socket,
    root: values['--root'] ?? defaults.root,
    stateDir,
    logLevel,
  };
}
