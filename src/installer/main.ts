import { parseArgs } from 'node:util';
import { removeAllPods, probeRuntime } from './cri-client.js';
import { currentRuntimeEndpoint } from './kubelet-config.js';
import { isSwitched, KubeletFiles, switchKubelet, unswitchKubelet } from './kubelet-switch.js';
import { promises as fs } from 'node:fs';

// The installer's helper commands, run with the bundle's node by contrib/installer/entrypoint.sh (probe) and its
// host-side step (the rest). One JSON line on stdout per command; errors on stderr, exit 1; usage errors exit 2.

const USAGE = `usage: installer-helper COMMAND [options]
  probe --endpoint unix:///PATH [--timeout-seconds N]                  exit 0 when the CRI runtime answers Version
  remove-pods --endpoint unix:///PATH [--timeout-seconds N]            stop and remove every pod sandbox of that runtime
  kubelet-endpoint --config FILE --flags FILE                          the runtime endpoint kubelet uses now
  kubelet-switch --config FILE --flags FILE --state DIR --endpoint E   point kubelet's files at E (originals saved)
  kubelet-unswitch --config FILE --flags FILE --state DIR              put the originals back
  kubelet-switched --config FILE --flags FILE --state DIR              exit 0 when switched, 1 when not`;

async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  let values: Record<string, string | undefined>;
  try {
    values = parseArgs({
      args: rest,
      options: { endpoint: { type: 'string' }, config: { type: 'string' }, flags: { type: 'string' }, state: { type: 'string' }, 'timeout-seconds': { type: 'string' } },
      strict: true,
    }).values as Record<string, string | undefined>;
  } catch (err) {
    process.stderr.write(`${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  const need = (name: string): string => {
    const v = values[name];
    if (!v) throw new UsageError(`${command}: --${name} is required`);
    return v;
  };
  const timeoutMs = Number(values['timeout-seconds'] ?? '30') * 1000;
  const files = (): KubeletFiles => ({ config: need('config'), flags: need('flags'), stateDir: need('state') });
  const print = (o: unknown) => process.stdout.write(`${JSON.stringify(o)}\n`);
  try {
    switch (command) {
      case 'probe':
        print(await probeRuntime(need('endpoint'), timeoutMs));
        return 0;
      case 'remove-pods':
        print(await removeAllPods(need('endpoint'), timeoutMs));
        return 0;
      case 'kubelet-endpoint': {
        const read = (f: string) => fs.readFile(f, 'utf8').catch(() => undefined);
        print({ endpoint: currentRuntimeEndpoint(await read(need('config')), await read(need('flags')), need('config')) });
        return 0;
      }
      case 'kubelet-switch':
        print(await switchKubelet(files(), need('endpoint')));
        return 0;
      case 'kubelet-unswitch':
        print(await unswitchKubelet(files()));
        return 0;
      case 'kubelet-switched':
        return (await isSwitched(files())) ? 0 : 1;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command ?? '')}`);
    }
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`${err.message}\n${USAGE}\n`);
      return 2;
    }
    process.stderr.write(`installer-helper ${command}: ${(err as Error).message}\n`);
    return 1;
  }
}

class UsageError extends Error {}

process.exitCode = await main(process.argv.slice(2));
