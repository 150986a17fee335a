// A real CNCF distribution registry (Debian's docker-registry 2.8) on loopback for e2e tests.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomBytes } from 'node:crypto';
import { freePort, onTimeout, pidAlive, pidListensOn, procCmdline, waitFor } from './util.js';
import { startTokenServer, type TokenAuthOptions, type TokenServer } from './token-server.js';

import type { Credentials } from './registry-client.js';

export type { TokenAuthOptions, TokenServer } from './token-server.js';
export type { Credentials } from './registry-client.js';

const execFileP = promisify(execFile);

export const REGISTRY_BIN = '/usr/bin/docker-registry';

export type RegistryAuthOptions =
  | { htpasswd: { users: Record<string, string> } }
  | { token: TokenAuthOptions };

export interface StartRegistryOptions {
  auth?: RegistryAuthOptions;
}

export interface Registry {
  /** '127.0.0.1:PORT' — use as the registry part of image references. */
  host: string;
  /** 'http://127.0.0.1:PORT' */
  url: string;
  /** pid of the docker-registry process. */
  pid: number;
  /** Temp dir holding config.yml, registry.log, htpasswd/cert and data/ (the storage root). */
  dir: string;
  authMode: 'none' | 'htpasswd' | 'token';
  /** Users accepted (htpasswd users or token-server users); {} when authMode is 'none'. */
  users: Record<string, string>;
  /** First configured user, used by images.ts to push to an auth registry. */
  credentials?: Credentials;
  /** The in-process token server (token mode only). Stopped by stop(). */
  tokenServer?: TokenServer;
  /** Absolute path of the stored blob file for a digest (to corrupt/inspect in tests). */
  blobPath(digest: string): string;
  /** The registry's combined stdout/stderr so far. */
  logs(): string;
  /** SIGKILL this registry's pid (only that pid), wait for it to exit, remove the temp dir. Idempotent. */
  stop(): Promise<void>;
}

interface Live {
  child: ChildProcess;
  pid: number;
  dir: string;
  configPath: string;
  watchdog?: ChildProcess;
}

const live = new Map<number, Live>();
const started: { pid: number; configPath: string }[] = [];
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const l of live.values()) {
      try {
        process.kill(l.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
      try {
        if (l.watchdog?.pid) process.kill(l.watchdog.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
      try {
        rmSync(l.dir, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    }
  });
}

/** pids of every docker-registry this process started (dead or alive). */
export function startedRegistryPids(): number[] {
  return started.map((s) => s.pid);
}

/**
 * pids of docker-registry processes this process started that are still running
 * (checked against /proc/<pid>/cmdline so a recycled pid is not reported).
 */
export function leakedRegistryPids(): number[] {
  return started
    .filter((s) => {
      if (!pidAlive(s.pid)) return false;
      const argv = procCmdline(s.pid);
      return argv !== null && argv.includes(s.configPath);
    })
    .map((s) => s.pid);
}

/** Stop every registry started by this process that is still running. */
export async function stopAllRegistries(): Promise<void> {
  await Promise.all([...live.values()].map((l) => killAndWait(l)));
}

async function killAndWait(l: Live, removeDir = true): Promise<void> {
  const { child } = l;
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    try {
      process.kill(l.pid, 'SIGKILL');
    } catch {
      /* raced with exit */
    }
    await exited;
  }
  live.delete(l.pid);
  if (l.watchdog?.pid && l.watchdog.exitCode === null && l.watchdog.signalCode === null) {
    try {
      process.kill(l.watchdog.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  if (removeDir) await rm(l.dir, { recursive: true, force: true });
}

function yamlStr(s: string): string {
  return JSON.stringify(s); // JSON strings are valid YAML double-quoted scalars
}

async function htpasswdFile(users: Record<string, string>): Promise<string> {
  const lines: string[] = [];
  for (const [u, p] of Object.entries(users)) {
    const { stdout } = await execFileP('htpasswd', ['-Bbn', u, p]);
    lines.push(stdout.trim());
  }
  return lines.join('\n') + '\n';
}

export async function startRegistry(opts: StartRegistryOptions = {}): Promise<Registry> {
  installExitHook();
  const dir = mkdtempSync(path.join(tmpdir(), 'berth-registry-'));
  const dataDir = path.join(dir, 'data');
  const configPath = path.join(dir, 'config.yml');
  const logPath = path.join(dir, 'registry.log');
  let tokenServer: TokenServer | undefined;
  let authYaml = '';
  let authMode: Registry['authMode'] = 'none';
  let users: Record<string, string> = {};
  try {
    if (opts.auth && 'htpasswd' in opts.auth) {
      authMode = 'htpasswd';
      users = { ...opts.auth.htpasswd.users };
      const htpath = path.join(dir, 'htpasswd');
      writeFileSync(htpath, await htpasswdFile(users));
      authYaml = `auth:\n  htpasswd:\n    realm: "berth-registry"\n    path: ${yamlStr(htpath)}\n`;
    } else if (opts.auth && 'token' in opts.auth) {
      authMode = 'token';
      users = { ...opts.auth.token.users };
      tokenServer = await startTokenServer(opts.auth.token);
      const bundle = path.join(dir, 'token-root.crt');
      writeFileSync(bundle, tokenServer.certPem);
      authYaml =
        `auth:\n  token:\n` +
        `    realm: ${yamlStr(tokenServer.realm)}\n` +
        `    service: ${yamlStr(tokenServer.service)}\n` +
        `    issuer: ${yamlStr(tokenServer.issuer)}\n` +
        `    rootcertbundle: ${yamlStr(bundle)}\n`;
    }

    let lastErr = '';
    for (let attempt = 0; attempt < 8; attempt++) {
      const port = await freePort();
      const host = `127.0.0.1:${port}`;
      const config =
        `version: 0.1\n` +
        `log:\n  level: info\n  formatter: text\n` +
        `storage:\n  filesystem:\n    rootdirectory: ${yamlStr(dataDir)}\n  delete:\n    enabled: true\n` +
        `  maintenance:\n    uploadpurging:\n      enabled: false\n` +
        `http:\n  addr: ${yamlStr(host)}\n  secret: ${yamlStr(randomBytes(16).toString('hex'))}\n` +
        authYaml;
      writeFileSync(configPath, config);
      writeFileSync(logPath, '');
      const logFd = openSync(logPath, 'a');
      let child: ChildProcess;
      try {
        child = spawn(REGISTRY_BIN, ['serve', configPath], { stdio: ['ignore', logFd, logFd] });
      } finally {
        closeSync(logFd);
      }
      const pid = child.pid;
      if (pid === undefined) {
        await new Promise((r) => child.once('error', r));
        throw new Error(`could not spawn ${REGISTRY_BIN}`);
      }
      started.push({ pid, configPath });
      // Watchdog: if this node process dies without running exit hooks (SIGKILL, signal),
      // kill the registry and remove its dir. Killed by stop().
      const watchdog = spawn(
        '/bin/sh',
        [
          '-c',
          // parent gone or a zombie (killed, not yet reaped) → kill the registry, remove its dir
          'while [ -d "/proc/$1" ] && ! grep -q "^State:[[:space:]]*[ZX]" "/proc/$1/status" 2>/dev/null; do sleep 0.5; done; ' +
            'kill -9 "$2" 2>/dev/null; rm -rf "$3"',
          'berth-registry-watchdog',
          String(process.pid),
          String(pid),
          dir,
        ],
        { detached: true, stdio: 'ignore' },
      );
      watchdog.unref();
      watchdog.on('error', () => {});
      const l: Live = { child, pid, dir, configPath, watchdog };
      live.set(pid, l);
      child.once('exit', () => {
        // The pid may be recycled now: make sure the watchdog can't kill a stranger.
        if (watchdog.pid && watchdog.exitCode === null && watchdog.signalCode === null) {
          try {
            process.kill(watchdog.pid, 'SIGKILL');
          } catch {
            /* gone */
          }
        }
      });

      const ready = await waitReady(child, pid, port, `http://${host}`, 20_000);
      if (ready === 'ready') {
        let stopping: Promise<void> | undefined;
        const reg: Registry = {
          host,
          url: `http://${host}`,
          pid,
          dir,
          authMode,
          users,
          credentials: Object.entries(users).map(([username, password]) => ({ username, password }))[0],
          tokenServer,
          blobPath: (digest: string) => {
            const [alg, hex] = digest.split(':');
            return path.join(dataDir, 'docker/registry/v2/blobs', alg!, hex!.slice(0, 2), hex!, 'data');
          },
          logs: () => {
            try {
              return readFileSync(logPath, 'utf8');
            } catch {
              return '';
            }
          },
          stop: () => {
            stopping ??= (async () => {
              await killAndWait(l);
              await tokenServer?.stop();
            })();
            return stopping;
          },
        };
        return reg;
      }
      const log = readFileSync(logPath, 'utf8');
      // Not ready: kill (no-op if exited) and decide whether to retry.
      await killAndWait(l, false);
      lastErr = log;
      if (ready === 'exited' && /address already in use|bind/i.test(log)) continue;
      throw new Error(`docker-registry did not become ready (${ready}):\n${log}`);
    }
    throw new Error(`docker-registry could not bind a port after retries:\n${lastErr}`);
  } catch (e) {
    await tokenServer?.stop();
    await rm(dir, { recursive: true, force: true });
    throw e;
  }
}

async function waitReady(child: ChildProcess, pid: number, port: number, url: string, timeoutMs: number): Promise<'ready' | 'exited' | 'timeout'> {
  let exited = child.exitCode !== null || child.signalCode !== null;
  child.once('exit', () => {
    exited = true;
  });
  const answered = async (): Promise<'ready' | 'exited' | undefined> => {
    if (exited) return 'exited';
    try {
      const res = await fetch(`${url}/v2/`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      // Require the distribution header so a foreign server on a recycled port doesn't fool us.
      if ((res.status === 200 || res.status === 401) && res.headers.get('docker-distribution-api-version')) {
        if (exited) return 'exited';
        if (pidListensOn(pid, port)) return 'ready';
      }
    } catch {
      /* not listening yet */
    }
    return undefined;
  };
  return waitFor(`the registry on ${url}`, answered, { timeoutMs }).catch(onTimeout('timeout' as const));
}
