import test from 'ava';
import { helpText, parseArgs, parseCommand, UsageError } from '../../src/cli/args.js';
import { versionText } from '../../src/cli/version.js';

test('--help and -h ask for the help, before any other flag is checked', (t) => {
  t.deepEqual(parseCommand(['--help']), { kind: 'help' });
  t.deepEqual(parseCommand(['-h']), { kind: 'help' });
  t.deepEqual(parseCommand(['--root', '/x', '--help']), { kind: 'help' });
});

test('the help names every daemon flag and every command', (t) => {
  const help = helpText()!;
  for (const flag of ['--config', '--socket', '--root', '--state-dir', '--log-level', '--help', '--version']) t.true(help.includes(flag), flag);
  for (const command of ['config default', 'config check', 'doctor', 'version', 'help']) t.true(help.includes(command), command);
});

test('help config covers both config commands; help of no command is refused', (t) => {
  t.deepEqual(parseCommand(['help', 'config']), { kind: 'help', topic: 'config' });
  const text = helpText('config')!;
  t.regex(text, /berth config default/);
  t.regex(text, /berth config check \[--config FILE\]/);
  t.throws(() => parseCommand(['help', 'frobnicate']), { instanceOf: UsageError, message: /no such command frobnicate/ });
});

test('--version, -v and the version command', (t) => {
  for (const argv of [['--version'], ['-v'], ['version']]) t.deepEqual(parseCommand(argv), { kind: 'version' });
});

test('the version names berth, the commit, the CRI API with its Kubernetes release, and node', (t) => {
  const text = versionText();
  t.regex(text, /^berth \d+\.\d+\.\d+\n/);
  t.regex(text, /^commit: \S+$/m);
  t.regex(text, /^CRI API: runtime\.v1 \(k8s\.io\/cri-api of Kubernetes 1\.\d+\)$/m);
  t.true(text.includes(`node: ${process.version}`));
});

test('config default and config check [--config FILE]', (t) => {
  t.deepEqual(parseCommand(['config', 'default']), { kind: 'config-default' });
  t.deepEqual(parseCommand(['config', 'check']), { kind: 'config-check', configFile: '/etc/berth/config.toml', configRequired: false });
  t.deepEqual(parseCommand(['config', 'check', '--config', '/tmp/c.toml']), { kind: 'config-check', configFile: '/tmp/c.toml', configRequired: true });
  t.deepEqual(parseCommand(['config', 'check', '--help']), { kind: 'help', topic: 'config check' });
});

test('unknown flags, commands and stray arguments are usage errors with a one-line hint', (t) => {
  const cases: [string[], RegExp][] = [
    [['--frob'], /unknown option --frob/],
    [['--sock', 'x'], /unknown option --sock/],
    [['--root'], /--root needs a value/],
    [['--root', '/x', 'extra'], /unknown command|unexpected argument/],
    [['frob'], /unknown command frob/],
    [['config'], /config needs a command/],
    [['config', 'show'], /unknown command config show/],
    [['config', 'default', '--config', 'x'], /unknown option --config/],
    [['version', 'now'], /unexpected argument "now"/],
  ];
  for (const [argv, message] of cases) {
    const err = t.throws(() => parseCommand(argv), { instanceOf: UsageError }, argv.join(' '));
    t.regex(err!.message, message);
    t.false(err!.message.includes('\n'), 'one line');
  }
});

test('the log level is only set when given, so that the file\'s log.level applies otherwise', (t) => {
  t.is(parseArgs([]).logLevel, undefined);
  t.is(parseArgs(['--log-level', 'warn']).logLevel, 'warn');
  t.throws(() => parseArgs(['--log-level', 'loud']), { instanceOf: UsageError });
});
