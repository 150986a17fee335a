import { existsSync } from 'node:fs';
import { loadConfig } from './config/load.js';
import { BerthConfig, ConfigError, defaultConfig } from './config/schema.js';
import { renderConfig } from './config/render.js';
import { afterReload, changedKeys, reloadable } from './config/reload.js';
import { Command, DaemonOptions, helpText, parseCommand, UsageError } from './cli/args.js';
import { versionText } from './cli/version.js';
import { log, setLogLevel } from './log.js';
import { activeFault, faultError } from './fault.js';
import { Daemon, startDaemon } from './daemon.js';
import { SocketInUseError } from './cri/server.js';
import { MetricsAddressError } from './metrics/server.js';
import { monotonicUsec, Notifier, notifierFromEnv } from './kernel/sd-notify.js';

async function main(argv: string[]): Promise<number> {
  let command: Command;
  try {
    command = parseCommand(argv);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`berth: ${err.message}\n`);
      return 2;
    }
    throw err;
  }
  switch (command.kind) {
    case 'help':
      process.stdout.write(helpText(command.topic) ?? '');
      return 0;
    case 'version':
      process.stdout.write(versionText());
      return 0;
    case 'config-default':
      process.stdout.write(renderConfig(defaultConfig(), ['berth configuration: every key with its default value.', 'Reloaded on SIGHUP: the [registry] section and log.level; other keys need a restart.']));
      return 0;
    case 'config-check':
      try {
        const config = await loadConfig(command.configFile, command.configRequired);
        const present = command.configRequired || existsSync(command.configFile);
        const verdict = present ? `${command.configFile} is valid; the effective configuration:` : `${command.configFile} does not exist: berth runs with the embedded defaults:`;
        process.stdout.write(renderConfig(config, [verdict]));
        return 0;
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        process.stderr.write(`berth: ${err.message}\n`);
        return 1;
      }
    case 'doctor': {
      // Loaded only for this command: the daemon does not pay for it.
      const { runDoctor } = await import('./doctor/command.js');
      setLogLevel('warn');
      return runDoctor(command.options, { stdout: (t) => process.stdout.write(t), stderr: (t) => process.stderr.write(t) });
    }
    case 'serve':
      return serve(command.options);
  }
}

/** Tells systemd (Type=notify) where berth is; a failure is logged, never fatal: berth serves either way. */
function tellSystemd(notifier: Notifier | undefined, message: string): void {
  if (!notifier) return;
  try {
    notifier.notify(message);
  } catch (err) {
    log.error('sd_notify failed: systemd may not see berth as ready (its unit start then times out)', { socket: notifier.socket, message, error: err });
  }
}

async function serve(options: DaemonOptions): Promise<number> {
  // Taken out of the environment before anything is spawned.
  const systemd = notifierFromEnv();
  if (options.logLevel) setLogLevel(options.logLevel);
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
  setLogLevel(options.logLevel ?? config.log.level);
  if (faultError) {
    process.stderr.write(`berth: ${faultError}\n`);
    return 2;
  }
  // Loud, and at error level so that no log level hides it: this berth will kill itself on purpose.
  if (activeFault) log.error('BERTH_FAULT is set: this berth will crash (SIGKILL itself) on purpose; never set it outside tests', { step: activeFault.step, nth: activeFault.nth });
  let running = config;
  let daemon: Daemon | undefined;
  let reloading = Promise.resolve();
  const queueReload = () => {
    // One reload at a time, in signal order, so the last SIGHUP's file is the one in effect.
    reloading = reloading
      .then(async () => {
        tellSystemd(systemd, `RELOADING=1\nMONOTONIC_USEC=${monotonicUsec()}`);
        try {
          running = await reload(running, options, daemon!);
        } finally {
          tellSystemd(systemd, 'READY=1');
        }
      })
      .catch((err) => log.error('SIGHUP: reload failed', { error: err }));
  };
  // Installed before the daemon starts, since SIGHUP's default action would end berth; one that arrives while
  // starting is applied once serving.
  let hupWhileStarting = false;
  process.on('SIGHUP', () => (daemon ? queueReload() : (hupWhileStarting = true)));
  try {
    daemon = await startDaemon(config, { socket: options.socket, root: options.root, stateDir: options.stateDir }, log);
  } catch (err) {
    // A setting that only fails when used (a taken streaming or metrics address, a certificate that does not load).
    if (err instanceof SocketInUseError || err instanceof ConfigError || err instanceof MetricsAddressError) {
      process.stderr.write(`berth: ${err.message}\n`);
      return 1;
    }
    throw err;
  }
  // The socket serves: kubelet, ordered after berth.service, may start.
  tellSystemd(systemd, `READY=1\nSTATUS=serving CRI on ${options.socket}`);
  if (hupWhileStarting) queueReload();
  const serving = daemon;
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn('second signal: forcing shutdown', { signal });
        serving.kill();
        resolve(1);
        return;
      }
      stopping = true;
      tellSystemd(systemd, 'STOPPING=1');
      log.info('shutting down: draining in-flight RPCs', { signal });
      serving.stop().then(
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

/** SIGHUP: re-reads the config file and applies what can change while running; returns the config now in effect. */
async function reload(running: BerthConfig, options: DaemonOptions, daemon: Daemon): Promise<BerthConfig> {
  let next: BerthConfig;
  try {
    next = await loadConfig(options.configFile, options.configRequired);
  } catch (err) {
    log.error('SIGHUP: configuration not reloaded, berth keeps running with the previous one', { file: options.configFile, error: err });
    return running;
  }
  const changes = changedKeys(running, next);
  const applied = changes.filter((c) => reloadable(c.key) && !(c.key === 'log.level' && options.logLevel));
  const restartNeeded = changes.filter((c) => !reloadable(c.key)).map((c) => c.key);
  daemon.reloadRegistry(next.registry);
  if (!options.logLevel) setLogLevel(next.log.level);
  log.info('SIGHUP: configuration reloaded', {
    file: options.configFile,
    changed: Object.fromEntries(applied.map((c) => [c.key, { from: c.from, to: c.to }])),
  });
  if (options.logLevel && changes.some((c) => c.key === 'log.level')) {
    log.warn('SIGHUP: log.level not applied: --log-level on the command line takes precedence', { logLevel: options.logLevel });
  }
  if (restartNeeded.length > 0) log.warn('SIGHUP: changed keys take effect only after a restart', { keys: restartNeeded });
  return afterReload(running, next);
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    log.error('berth failed', { error: err, stack: (err as Error).stack });
    process.exit(1);
  },
);
