import { ChildProcess, spawn } from 'node:child_process';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { loadCri } from '../../src/cri/grpc.js';
import type { ImageServiceClient } from '../../src/gen/runtime/v1/ImageService.js';
import type { RuntimeServiceClient } from '../../src/gen/runtime/v1/RuntimeService.js';
import { removeTestNet, testNet, testNetFrom, TestNet } from '../e2e/network-helpers.js';

// Starts a real berth process on a temporary socket, root and state dir, and talks to it over gRPC.

const here = path.dirname(fileURLToPath(import.meta.url));
export const MAIN = path.resolve(here, '../../src/main.js');
/** The launcher operators run: the same node flags in tests and the bench as in production. */
export const LAUNCHER = path.resolve(here, '../../../bin/berth');

type Callable<C> = {
  [K in keyof C as K extends string ? (K extends Capitalize<K> ? K : never) : never]: C[K] extends (
    arg: infer A,
    callback: grpc.requestCallback<infer R>,
  ) => grpc.ClientUnaryCall
    ? (arg: A, options?: grpc.CallOptions) => Promise<R>
    : never;
};

function promisify<C extends grpc.Client>(client: C): Callable<C> {
  return new Proxy({} as Callable<C>, {
    get(_target, rpc: string) {
      return (arg: unknown, options: grpc.CallOptions = {}) =>
        new Promise((resolve, reject) => {
          const method = (client as unknown as Record<string, Function>)[rpc];
          method.call(client, arg, new grpc.Metadata(), options, (err: grpc.ServiceError | null, res: unknown) =>
            err ? reject(err) : resolve(res),
          );
        });
    },
  });
}

export interface BerthProcess {
  dir: string;
  socket: string;
  root: string;
  stateDir: string;
  child: ChildProcess;
  logs: string[];
  runtime: Callable<RuntimeServiceClient>;
  images: Callable<ImageServiceClient>;
  rawRuntime: RuntimeServiceClient;
  /** For the server-streaming RPCs (StreamImages), which the promisified client does not cover. */
  rawImages: ImageServiceClient;
  /** Resolves with the exit code once the process has exited. */
  exited: Promise<number | null>;
  waitForLog(predicate: (entry: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  stop(signal?: NodeJS.Signals): Promise<number | null>;
  /** Stops this process and starts a new one on the same root/state/socket/config. */
  restart(): Promise<BerthProcess>;
  cleanup(): Promise<void>;
}

export interface StartOptions {
  config?: string;
  dir?: string;
  extraArgs?: string[];
  /** Added to berth's environment (e.g. a test-only switch of berth-shim). */
  env?: Record<string, string>;
  /** --log-level given to berth; null gives none, so that the config file's log.level applies. */
  logLevel?: string | null;
  /** The program started instead of bin/berth: another build's (the upgrade test's previous release) or an
   * installed release bundle's launcher. */
  launcher?: string;
  /** cleanup() leaves `dir` in place, for a test that checks what berth left in it. */
  keepDir?: boolean;
  /** berth's --state-dir, when not `<dir>/run` (the bench puts it on tmpfs, as /run/berth is); removed by cleanup(). */
  stateDir?: string;
}

/**
 * Each test berth gets a bridge and /24 of its own (kept in its dir across restarts), unless the test's config has a
 * [network] section: parallel berths on one shared berth0 would hand out the same addresses.
 */
async function isolatedNetwork(dir: string, config: string | undefined): Promise<TestNet | undefined> {
  if (config?.includes('[network]')) return undefined;
  const file = path.join(dir, 'testnet.json');
  const saved = await fs.readFile(file, 'utf8').then((t) => JSON.parse(t) as { bridge: string; subnet: string }, () => undefined);
  const net = saved ? testNetFrom(saved.bridge, saved.subnet) : testNet();
  if (!saved) await fs.writeFile(file, JSON.stringify({ bridge: net.bridge, subnet: net.subnet }));
  return net;
}

export async function startBerth(opts: StartOptions = {}): Promise<BerthProcess> {
  const dir = opts.dir ?? (await fs.mkdtemp(path.join(os.tmpdir(), 'berth-test-')));
  const net = await isolatedNetwork(dir, opts.config);
  const socket = path.join(dir, 'run', 'berth.sock');
  const root = path.join(dir, 'root');
  const stateDir = opts.stateDir ?? path.join(dir, 'run');
  const configFile = path.join(dir, 'config.toml');
  const withNet = net ? `${opts.config ?? ''}\n${net.toml('embedded')}` : opts.config;
  // Test berths run side by side: each serves /metrics on a port of its own (logged in "berth serving"), unless
  // the test's config has a [metrics] section.
  const config = withNet?.includes('[metrics]') ? withNet : `${withNet ?? ''}\n[metrics]\naddress = "127.0.0.1:0"\n`;
  if (config !== undefined) await fs.writeFile(configFile, config);
  const args = ['--socket', socket, '--root', root, '--state-dir', stateDir];
  if (opts.logLevel !== null) args.push('--log-level', opts.logLevel ?? 'debug');
  if (config !== undefined) args.push('--config', configFile);
  args.push(...(opts.extraArgs ?? []));
  const child = spawn(opts.launcher ?? LAUNCHER, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } });
  const logs: string[] = [];
  const waiters: { predicate: (e: Record<string, unknown>) => boolean; resolve: (e: Record<string, unknown>) => void }[] = [];
  const onLine = (line: string) => {
    logs.push(line);
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(line);
    } catch {
      return;
    }
    for (const w of [...waiters]) {
      if (w.predicate(entry)) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(entry);
      }
    }
  };
  for (const stream of [child.stdout!, child.stderr!]) {
    let buffered = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => {
      buffered += chunk;
      let nl: number;
      while ((nl = buffered.indexOf('\n')) >= 0) {
        onLine(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 1);
      }
    });
  }
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const waitForLog = (predicate: (e: Record<string, unknown>) => boolean, timeoutMs = 30000) => {
    for (const line of logs) {
      try {
        const entry = JSON.parse(line);
        if (predicate(entry)) return Promise.resolve(entry);
      } catch {
        /* not JSON */
      }
    }
    return new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`log line not seen in ${timeoutMs}ms; logs:\n${logs.slice(-20).join('\n')}`)), timeoutMs);
      waiters.push({ predicate, resolve: (e) => (clearTimeout(timer), resolve(e)) });
    });
  };
  // Generous: under a heavily loaded CI machine a cold start (node, proto loading) can take tens of seconds.
  const ready = waitForLog((e) => e.msg === 'berth serving', 60000);
  const early = exited.then((code) => {
    throw new Error(`berth exited with ${code} before serving:\n${logs.join('\n')}`);
  });
  try {
    await Promise.race([ready, early]);
  } catch (err) {
    // A berth that never said it serves (slow under load, or stuck) must not outlive the test that started it.
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
    // A restart (opts.dir) keeps the test's state for its own cleanup; a fresh berth's is ours to remove.
    if (!opts.dir) {
      if (net) await removeTestNet(net).catch(() => undefined);
      await fs.rm(dir, { recursive: true, force: true }).catch(() => undefined);
    }
    throw err;
  } finally {
    early.catch(() => undefined);
  }

  const cri = loadCri();
  const target = `unix://${socket}`;
  const rawRuntime = new cri.runtime.v1.RuntimeService(target, grpc.credentials.createInsecure()) as unknown as RuntimeServiceClient;
  const rawImages = new cri.runtime.v1.ImageService(target, grpc.credentials.createInsecure()) as unknown as ImageServiceClient;

  const proc: BerthProcess = {
    dir,
    socket,
    root,
    stateDir,
    child,
    logs,
    runtime: promisify(rawRuntime),
    images: promisify(rawImages),
    rawRuntime,
    rawImages,
    exited,
    waitForLog,
    async stop(signal = 'SIGTERM') {
      rawRuntime.close();
      rawImages.close();
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const timer = setTimeout(() => child.kill('SIGKILL'), 30000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    async restart() {
      await proc.stop();
      return startBerth({ ...opts, dir });
    },
    async cleanup() {
      // Containers outlive berth by design, so a test's pods are removed through berth before it stops.
      if (child.exitCode === null && child.signalCode === null) {
        try {
          const pods = await proc.runtime.ListPodSandbox({});
          for (const pod of pods.items) await proc.runtime.RemovePodSandbox({ pod_sandbox_id: pod.id }).catch(() => undefined);
        } catch {
          /* berth not answering: nothing more to do through it */
        }
      }
      await proc.stop();
      if (net) await removeTestNet(net);
      if (!opts.keepDir) await fs.rm(dir, { recursive: true, force: true });
      if (opts.stateDir && !opts.keepDir) await fs.rm(opts.stateDir, { recursive: true, force: true });
    },
  };
  return proc;
}
