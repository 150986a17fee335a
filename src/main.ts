import { loadConfig } from './config/load.js';
import { ConfigError } from './config/schema.js';
import { parseArgs, UsageError } from './cli/args.js';
import { log, setLogLevel } from './log.js';
import { startDaemon } from './daemon.js';
import { SocketInUseError } from './cri/server.js';

async function main(argv: string[]): Promise<number> {
  let options;
  try {
    options = parseArgs(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`berth: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  setLogLevel(options.logLevel);
  let config;
  try {
    config = await loadConfig(options.configFile, options.configRequired);
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`berth: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  let daemon;
  try {
    daemon = await startDaemon(config, { socket: options.socket, root: options.root, stateDir: options.stateDir }, log);
  } catch (err) {
    if (err instanceof SocketInUseError) {
      process.stderr.write(`berth: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn('second signal: forcing shutdown', { signal });
        daemon.kill();
        resolve(1);
        return;
      }
      stopping = true;
      log.info('shutting down: draining in-flight RPCs', { signal });
      daemon.stop().then(
        () => {
          log.info('berth stopped');
          resolve(0);
        },
        (err) => {
          log.error('shutdown failed', { error: err });
          resolve(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    log.error('berth failed', { error: err, stack: (err as Error).stack });
    process.exit(1);
  },
);
