import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { BerthConfig } from './config/schema.js';
import { Logger } from './log.js';
import { ImageStore } from './image/store.js';
import { ImageService } from './image/service.js';
import { imageHandlers } from './cri/image.js';
import { runtimeHandlers, RuntimeInfo } from './cri/runtime.js';
import { drain, serveCri } from './cri/server.js';

// Wires config, stores, services and the gRPC server together. Everything the process owns starts and stops here.

export interface DaemonPaths {
  socket: string;
  root: string;
  stateDir: string;
}

export interface Daemon {
  images: ImageService;
  server: grpc.Server;
  /** Drains in-flight RPCs, then releases everything. */
  stop(): Promise<void>;
}

export async function startDaemon(config: BerthConfig, paths: DaemonPaths, log: Logger): Promise<Daemon> {
  const store = new ImageStore(path.join(paths.root, 'images'), log.child({ component: 'image-store' }));
  await store.load();
  const images = new ImageService({ store, registry: config.registry, log: log.child({ component: 'images' }) });

  let podCidr = '';
  const info: RuntimeInfo = {
    runtimeReady: () => ({ ready: true, reason: '', message: '' }),
    networkReady: () => ({
      ready: false,
      reason: 'NetworkPluginNotReady',
      message: 'berth: pod networking is not implemented yet',
    }),
    effectiveConfig: () => ({ ...config, paths, podCidr }),
    setPodCidr: (cidr) => {
      podCidr = cidr;
      log.info('pod CIDR set by kubelet', { podCidr });
    },
    handlers: () => [{ name: '', recursiveReadOnlyMounts: false, userNamespaces: false }],
  };

  const server = await serveCri(
    paths.socket,
    runtimeHandlers(info, log.child({ component: 'cri' })),
    imageHandlers(images, log.child({ component: 'cri' })),
  );
  log.info('berth serving', { socket: paths.socket, root: paths.root, stateDir: paths.stateDir });

  return {
    images,
    server,
    stop: async () => {
      await drain(server);
    },
  };
}
