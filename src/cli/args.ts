import { parseArgs as parseFlags } from 'node:util';
import { isLevel, Level } from '../log.js';

// The command line: the daemon's flags and the subcommands of the same binary. Parsing is util.parseArgs'; the
// tables below also write the help, so help lists exactly the flags that are accepted.

export interface DaemonOptions {
  configFile: string;
  configRequired: boolean;
  socket: string;
  root: string;
  stateDir: string;
  /** Only when given on the command line: it then wins over the file's log.level, also on SIGHUP. */
  logLevel?: Level;
}

export const defaults = {
  configFile: '/etc/berth/config.toml',
  root: '/var/lib/berth',
  stateDir: '/run/berth',
  socket: '/run/berth/berth.sock',
};

export class UsageError extends Error {}

export type Command =
  | { kind: 'serve'; options: DaemonOptions }
  | { kind: 'help'; topic?: string }
  | { kind: 'version' }
  | { kind: 'config-default' }
  | { kind: 'config-check'; configFile: string; configRequired: boolean }
  | { kind: 'doctor'; options: DoctorCommandOptions };

/** `berth doctor`: where to look (the daemon's own flags) and what to do. */
export interface DoctorCommandOptions {
  configFile: string;
  configRequired: boolean;
  socket: string;
  root: string;
  stateDir: string;
  json: boolean;
  fix: boolean;
  force: boolean;
}

interface Flag {
  name: string;
  value?: string;
  meaning: string;
  short?: string;
}

const CONFIG_FLAG: Flag = {
  name: 'config',
  value: 'FILE',
  meaning: `TOML configuration (default ${defaults.configFile}; that file may be absent, a file named here must exist)`,
};
const HELP_FLAG: Flag = { name: 'help', short: 'h', meaning: 'print this help and exit' };

const SOCKET_FLAG: Flag = { name: 'socket', value: 'PATH', meaning: `the CRI socket, "unix://" prefix accepted (default ${defaults.socket})` };
const ROOT_FLAG: Flag = { name: 'root', value: 'DIR', meaning: `persistent state: images, layers, container metadata (default ${defaults.root})` };
const STATE_DIR_FLAG: Flag = { name: 'state-dir', value: 'DIR', meaning: `volatile state: pinned namespaces, pid files (default ${defaults.stateDir})` };

const SERVE_FLAGS: Flag[] = [
  CONFIG_FLAG,
  SOCKET_FLAG,
  ROOT_FLAG,
  STATE_DIR_FLAG,
  { name: 'log-level', value: 'LEVEL', meaning: 'debug, info, warn or error; wins over the file\'s log.level (default: the file\'s, else info)' },
  HELP_FLAG,
  { name: 'version', short: 'v', meaning: 'print version, git commit, CRI API and node versions, and exit' },
];

interface Subcommand {
  name: string;
  args: string;
  meaning: string;
  flags: Flag[];
}

const SUBCOMMANDS: Subcommand[] = [
  { name: 'config default', args: '', meaning: 'print the complete default configuration as commented TOML', flags: [HELP_FLAG] },
  {
    name: 'config check',
    args: ' [--config FILE]',
    meaning: 'validate a configuration file and print the effective configuration; exits 1 naming the bad key',
    flags: [CONFIG_FLAG, HELP_FLAG],
  },
  {
    name: 'doctor',
    args: ' [--json] [--fix [--force]]',
    meaning: 'list what the kernel and disk hold that no berth record owns; exits 0 if nothing, 1 if something, 2 on error',
    flags: [
      CONFIG_FLAG,
      SOCKET_FLAG,
      ROOT_FLAG,
      STATE_DIR_FLAG,
      { name: 'json', meaning: 'print the findings as JSON' },
      { name: 'fix', meaning: 'remove what is listed; refused while a berth answers on the socket' },
      { name: 'force', meaning: 'with --fix: remove even while a berth answers on the socket' },
      HELP_FLAG,
    ],
  },
  { name: 'version', args: '', meaning: 'the same as --version', flags: [HELP_FLAG] },
  { name: 'help', args: ' [COMMAND]', meaning: 'this help, or a command\'s', flags: [] },
];

function flagLines(flags: Flag[]): string[] {
  const left = flags.map((f) => `${f.short ? `-${f.short}, ` : '    '}--${f.name}${f.value ? ` ${f.value}` : ''}`);
  const width = Math.max(...left.map((l) => l.length));
  return flags.map((f, i) => `  ${left[i].padEnd(width)}  ${f.meaning}`);
}

/** The help for the daemon (no topic) or for a subcommand; undefined for a topic that is no command. */
export function helpText(topic?: string): string | undefined {
  if (topic === undefined) {
    const width = Math.max(...SUBCOMMANDS.map((s) => (s.name + s.args).length));
    return [
      'usage: berth [OPTIONS]            serve the CRI (runtime.v1) on a unix socket',
      '       berth COMMAND [OPTIONS]',
      '',
      'options:',
      ...flagLines(SERVE_FLAGS),
      '',
      'commands:',
      ...SUBCOMMANDS.map((s) => `  ${(s.name + s.args).padEnd(width)}  ${s.meaning}`),
      '',
      'SIGHUP reloads the [registry] section and log.level; SIGTERM or SIGINT drains in-flight RPCs and exits.',
      '',
    ].join('\n');
  }
  const matching = SUBCOMMANDS.filter((s) => s.name === topic || s.name.startsWith(`${topic} `));
  if (matching.length === 0) return undefined;
  const lines: string[] = [];
  for (const s of matching) {
    lines.push(`usage: berth ${s.name}${s.args}`, `  ${s.meaning}`);
    if (s.flags.length > 0) lines.push('options:', ...flagLines(s.flags));
    lines.push('');
  }
  return lines.join('\n');
}

const HINT = "see 'berth --help'";

function flagsFor(flags: Flag[], argv: string[], what: string): Record<string, string | boolean | undefined> {
  const options = Object.fromEntries(
    flags.map((f) => [f.name, { type: f.value ? ('string' as const) : ('boolean' as const), ...(f.short ? { short: f.short } : {}) }]),
  );
  try {
    const { values, positionals } = parseFlags({ args: argv, options, strict: true, allowPositionals: true });
    if (positionals.length > 0) throw new UsageError(`unexpected argument ${JSON.stringify(positionals[0])} for ${what} (${HINT})`);
    for (const f of flags) {
      if (f.value && values[f.name] === '') throw new UsageError(`--${f.name} needs a non-empty value (${HINT})`);
    }
    return values;
  } catch (err) {
    if (err instanceof UsageError) throw err;
    const code = (err as NodeJS.ErrnoException).code;
    const named = /'(-[^' ]+)/.exec((err as Error).message)?.[1] ?? '';
    if (code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') throw new UsageError(`unknown option ${named} for ${what} (${HINT})`);
    if (code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') throw new UsageError(`${named} needs a value (${HINT})`);
    throw new UsageError(`${(err as Error).message} (${HINT})`);
  }
}

/** The daemon's flags. Each is independent of the others: --state-dir does not move the socket. */
export function parseArgs(argv: string[]): DaemonOptions {
  const values = flagsFor(SERVE_FLAGS, argv, 'berth');
  const logLevel = values['log-level'] as string | undefined;
  if (logLevel !== undefined && !isLevel(logLevel)) throw new UsageError(`--log-level must be debug, info, warn or error, not ${logLevel}`);
  return { ...pathsFrom(values), logLevel };
}

/** The config file, socket, root and state dir, as the daemon and `berth doctor` both take them. */
function pathsFrom(values: Record<string, string | boolean | undefined>): Omit<DaemonOptions, 'logLevel'> {
  let socket = (values.socket as string | undefined) ?? defaults.socket;
  if (socket.startsWith('unix://')) socket = socket.slice('unix://'.length);
  const config = values.config as string | undefined;
  return {
    configFile: config ?? defaults.configFile,
    configRequired: config !== undefined,
    socket,
    root: (values.root as string | undefined) ?? defaults.root,
    stateDir: (values['state-dir'] as string | undefined) ?? defaults.stateDir,
  };
}

export function parseCommand(argv: string[]): Command {
  const [first, second, ...rest] = argv;
  if (first === undefined || first.startsWith('-')) {
    // --help and --version answer before anything else is checked, as other daemons' do.
    if (argv.some((a) => a === '--help' || a === '-h')) return { kind: 'help' };
    if (argv.some((a) => a === '--version' || a === '-v')) return { kind: 'version' };
    return { kind: 'serve', options: parseArgs(argv) };
  }
  const wantsHelp = (args: string[]) => args.includes('--help') || args.includes('-h');
  switch (first) {
    case 'help':
      if (argv.length > 3) throw new UsageError(`help takes at most one command (${HINT})`);
      if (second !== undefined && helpText([second, ...rest].join(' ')) === undefined) throw new UsageError(`no such command ${second} (${HINT})`);
      return { kind: 'help', topic: second === undefined ? undefined : [second, ...rest].join(' ') };
    case 'version':
      if (wantsHelp(argv.slice(1))) return { kind: 'help', topic: 'version' };
      flagsFor([], argv.slice(1), 'berth version');
      return { kind: 'version' };
    case 'config': {
      if (second === undefined || second.startsWith('-')) {
        if (wantsHelp(argv.slice(1))) return { kind: 'help', topic: 'config' };
        throw new UsageError(`config needs a command: default or check (see 'berth help config')`);
      }
      if (wantsHelp(rest)) return { kind: 'help', topic: `config ${second}` };
      if (second === 'default') {
        flagsFor([], rest, 'berth config default');
        return { kind: 'config-default' };
      }
      if (second === 'check') {
        const config = flagsFor([CONFIG_FLAG], rest, 'berth config check').config as string | undefined;
        return { kind: 'config-check', configFile: config ?? defaults.configFile, configRequired: config !== undefined };
      }
      throw new UsageError(`unknown command config ${second} (see 'berth help config')`);
    }
    case 'doctor': {
      const args = argv.slice(1);
      if (wantsHelp(args)) return { kind: 'help', topic: 'doctor' };
      const doctor = SUBCOMMANDS.find((s) => s.name === 'doctor')!;
      const values = flagsFor(doctor.flags, args, 'berth doctor');
      if (values.force && !values.fix) throw new UsageError(`--force only goes with --fix (${HINT})`);
      return {
        kind: 'doctor',
        options: {
          ...pathsFrom(values),
          json: values.json === true,
          fix: values.fix === true,
          force: values.force === true,
        },
      };
    }
    default:
      throw new UsageError(`unknown command ${first} (${HINT})`);
  }
}
