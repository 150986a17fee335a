import path from 'node:path';
import os from 'node:os';
import { readFileSync } from 'node:fs';
import { BerthConfig, ConfigError, RegistryConfig } from './config/schema.js';
import { hostDeviceProbe, resolveBlockioClasses } from './config/blockio.js';
import { checkPodBlockioClasses } from './container/blockio-class.js';
import { podPidsLimit } from './container/pids-limit.js';
import { IdleCompactor, exposedGc } from './memory.js';
import { Logger } from './log.js';
import { ImageStore, LayerHolds } from './image/store.js';
import { ImageService } from './image/service.js';
import { LimitedLayers, upperDirOf } from './kernel/writable-layer.js';
import { Cgroups, discoverCgroups } from './kernel/cgroups.js';
import { mallocTrim, mountSetattrSupported } from './kernel/libc.js';
import { NET_SYSFS, sealedShim } from './kernel/shim.js';
import { SandboxHooks, SandboxService } from './sandbox/service.js';
import { kernelSandboxRuntime } from './sandbox/runtime.js';
import { createPodNetwork } from './network/index.js';
import { ContainerService, MONITOR_CHECK_MS } from './container/service.js';
import { shimContainerRuntime } from './container/runtime.js';
import { imageHandlers } from './cri/image.js';
import { podHandlers } from './cri/pods.js';
import { containerHandlers } from './cri/containers.js';
import { runtimeHandlers, RuntimeInfo, RUNTIME_NAME } from './cri/runtime.js';
import { statsHandlers } from './cri/stats.js';
import { CgroupStatsReader } from './kernel/cgroup-stats.js';
import { InterfaceCountersReader } from './kernel/netdev-stats.js';
import { KernelFiles, maxOpenFor } from './kernel/kernel-files.js';
import { dirUsage } from './kernel/dir-usage.js';
import { StatsService, type StatsContainer, type StatsPod } from './stats/service.js';
import { WritableLayers } from './stats/writable-layers.js';
import type { ContainerRecord } from './container/types.js';
import type { SandboxRecord } from './sandbox/types.js';
import { claimSocket, CriServer, drain, forceClose, serveCri } from './cri/server.js';
import { streamingHandlers } from './cri/streaming.js';
import { failedPrecondition } from './errors.js';
import { StreamingServer } from './streaming/server.js';
import { StreamingService } from './streaming/service.js';
import { TokenCache } from './streaming/tokens.js';
import type { StreamingBackend, StreamingTargets } from './streaming/types.js';
import { lazyUpgradeHandler } from './streaming/lazy.js';
import { ServiceStreamingBackend } from './streaming/backend.js';
import type { RpcObserver } from './cri/grpc.js';
import { containerStatusTranslator } from './cri/containers.js';
import { containerEventsHandler } from './cri/events.js';
import { LifecycleEvents } from './events/lifecycle.js';
import { listenMetrics, MetricsServer } from './metrics/server.js';
import type { BerthMetrics } from './metrics/berth.js';
import type { UsageSource } from './stats/types.js';
import { errorMessage } from './errors.js';
import { LxcfsLookup, LxcfsProbe } from './kernel/lxcfs.js';
import { ensureReserve, RESERVE_BYTES } from './store/reserve.js';
import { status as grpcStatus } from '@grpc/grpc-js';
import { bandwidthLimits } from './network/bandwidth.js';
import { checkWritableLayerAnnotations } from './container/writable-layer-limit.js';

// Wires config, stores, services and the gRPC server together. Everything the process owns starts and stops here.

export interface DaemonPaths {
  socket: string;
  root: string;
  stateDir: string;
}

export interface Daemon {
  images: ImageService;
  /** Drains in-flight RPCs, then releases everything. */
  stop(): Promise<void>;
  /** Drops every connection at once (a second signal). */
  kill(): void;
  /** Takes the registry section of a reloaded config (SIGHUP): pulls that start from now on use it. */
  reloadRegistry(registry: RegistryConfig): void;
}

function countBy<T>(items: T[], key: (item: T) => string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const item of items) counts[key(item)] = (counts[key(item)] ?? 0) + 1;
  return counts;
}

/** User namespaces with id-mapped layers need Linux 5.19+ and user namespaces enabled. */
function userNamespacesSupported(): boolean {
  const [major, minor] = os.release().split('.').map(Number);
  if (major < 5 || (major === 5 && minor < 19)) return false;
  try {
    return Number(readFileSync('/proc/sys/user/max_user_namespaces', 'utf8')) > 0;
  } catch {
    return false;
  }
}

/** Whether the kernel can filter system calls (berth-shim loads the containers' filters with libseccomp). */
function seccompSupported(): boolean {
  try {
    return readFileSync('/proc/sys/kernel/seccomp/actions_avail', 'utf8').split(/\s+/).includes('errno');
  } catch {
    return false;
  }
}

/** What runs exec, attach and port-forward sessions, and what the RPCs check before handing out a URL. */
function streamingDomain(containers: ContainerService, sandboxes: SandboxService, log: Logger): { backend: StreamingBackend; targets: StreamingTargets } {
  const backend = new ServiceStreamingBackend(
    {
      runningContainer: async (id) => {
        const record = containers.get(id);
        if (record.state !== 'RUNNING') throw failedPrecondition(`container "${record.id}" is not running (${record.state})`);
        return record.id;
      },
      execInteractive: (id, cmd, opts) => containers.execInteractive(id, cmd, opts),
      attach: (id) => containers.attach(id),
    },
    {
      readyPod: async (id) => {
        const record = sandboxes.get(id);
        if (record.state !== 'READY') throw failedPrecondition(`pod sandbox "${record.id}" is not ready`);
        return record.id;
      },
      dial: (id, port, signal, reads) => sandboxes.dial(id, port, signal, reads),
    },
    log.child({ component: 'streaming' }),
  );
  return { backend, targets: backend };
}

export async function startDaemon(config: BerthConfig, paths: DaemonPaths, log: Logger): Promise<Daemon> {
  // Once per berth process, before anything else: every shim runs from this sealed copy (no fallback).
  const shim = await sealedShim();
  log.debug('berth-shim sealed copy ready', { path: shim });
  await claimSocket(paths.socket);
  // Bound before berth touches the node, so a taken address or a bad certificate changes nothing. The backend
  // is read per session, and exists once the services do (below).
  const tokens = new TokenCache();
  let streamingBackend: StreamingBackend | undefined;
  const lateBackend: StreamingBackend = {
    exec: (target, io) => streamingBackend!.exec(target, io),
    attach: (target, io) => streamingBackend!.attach(target, io),
    portForward: (pod, port, signal, reads) => streamingBackend!.portForward(pod, port, signal, reads),
  };
  const streamingServer = await StreamingServer.start({
    config: config.streaming,
    tokens,
    backend: lateBackend,
    protocols: {
      websocket: lazyUpgradeHandler(async () => (await import('./streaming/websocket.js')).websocketUpgradeHandler),
      spdy: lazyUpgradeHandler(async () => (await import('./streaming/spdy/index.js')).spdyUpgradeHandler),
    },
    log: log.child({ component: 'streaming' }),
  });
  // Bound before berth touches the node too: a taken address stops berth with nothing changed.
  const metricsServer: MetricsServer | undefined = config.metrics.address
    ? await listenMetrics(config.metrics.address, (err) => log.warn('metrics endpoint error', { error: errorMessage(err) }))
    : undefined;
  // The stats service (made below) reads container and pod usage when a scrape asks.
  let usageSource: UsageSource | undefined;
  // prom-client is loaded only when metrics are served: a node that disables them does not pay its memory.
  const metrics: BerthMetrics | undefined = metricsServer
    ? new (await import('./metrics/berth.js')).BerthMetrics({
        usage: () => usageSource,
        counts: () => ({ pods: countBy(sandboxes.list(), (p) => p.state), containers: countBy(containers.list(), (c) => c.state) }),
        onUsageError: (err) => log.warn('metrics: reading container usage failed; this scrape has no container series', { error: errorMessage(err) }),
      })
    : undefined;
  const events = new LifecycleEvents((err) => log.error('lifecycle listener failed', { error: errorMessage(err) }));
  if (metrics) events.listen(metrics.transition);
  // Containers hold the layers under their rootfs (the container service is made below; the store asks only
  // once containers are loaded, so layers under a live rootfs are never deleted).
  const layerHolds: LayerHolds = () => containers.heldLayers();
  const store = new ImageStore(path.join(paths.root, 'images'), log.child({ component: 'image-store' }), layerHolds);
  const images = new ImageService({
    store,
    registry: config.registry,
    log: log.child({ component: 'images' }),
    observer: metrics && { pulled: (s) => metrics.pullFinished(s), received: (b) => metrics.bytesPulled(b) },
  });
  const cgroups = new Cgroups(discoverCgroups(), log.child({ component: 'cgroups' }));
  // Checked by loadConfig already; resolved again here to keep the device numbers (a device gone since is named).
  const blockioClasses = await resolveBlockioClasses(config.blockio, hostDeviceProbe(cgroups.layout));
  if (Object.keys(blockioClasses).length > 0 && !cgroups.layout.controllers.blkio && !cgroups.layout.controllers.io) {
    throw new ConfigError('blockio.classes', 'this host has neither a v1 blkio nor a v2 io cgroup controller: block I/O classes cannot be enforced');
  }
  if (!cgroups.layout.controllers.devices && !cgroups.layout.unified) {
    log.error('neither a v1 devices controller nor cgroup2 is mounted: no device policy can be enforced, so only privileged containers can be created');
  }
  const network = await createPodNetwork(config, paths, log.child({ component: 'network' }));
  // The two services need each other: the pod's containers are reached through a closure over the container
  // service, which is made next (nothing calls these before startDaemon returns).
  const podContainers: SandboxHooks = {
    stopContainers: (id) => containers.stopAllInSandbox(id),
    removeContainers: (id) => containers.removeAllInSandbox(id),
  };
  const sandboxes = new SandboxService({
    network,
    runtime: kernelSandboxRuntime,
    containers: podContainers,
    root: paths.root,
    stateDir: paths.stateDir,
    cgroups,
    log: log.child({ component: 'sandboxes' }),
    shmSizeBytes: config.runtime.shmSizeBytes,
    checkAnnotations: (annotations) => {
      podPidsLimit(config.runtime.pidsLimit, annotations, 'config.annotations');
      checkPodBlockioClasses(annotations, blockioClasses);
      // Refused before the pod's name, directories and namespaces exist, not in the network step that undoes them.
      bandwidthLimits(annotations);
      checkWritableLayerAnnotations(annotations, config.runtime.writableLayerMaxBytes);
    },
    onRecordChange: events.sandboxChanged,
  });
  const lxcfsLog = log.child({ component: 'lxcfs' });
  // What the probe saw last (at start, then at each container create), for Status' summary.
  let lxcfsSeen: LxcfsLookup | undefined;
  const lxcfsProbe = new LxcfsProbe({
    dir: config.runtime.lxcfsDir,
    onChange: (found) => {
      lxcfsSeen = found;
      if (found.view) lxcfsLog.info("lxcfs found: containers get its /proc files", { dir: found.view.dir, files: found.view.procFiles });
      else if (config.runtime.lxcfs === 'on') lxcfsLog.error('lxcfs is not usable: containers cannot be created ([runtime] lxcfs = "on")', { dir: config.runtime.lxcfsDir, reason: found.reason });
      else lxcfsLog.info('lxcfs is not usable: containers see the node\'s /proc files', { dir: config.runtime.lxcfsDir, reason: found.reason });
    },
  });
  const limitedLayers = new LimitedLayers({ root: paths.root, log: log.child({ component: 'writable-layers' }), defaultBytes: config.runtime.writableLayerMaxBytes });
  await limitedLayers.start();
  const containers = new ContainerService({
    root: paths.root,
    writableLayers: limitedLayers,
    writableLayerMaxBytes: config.runtime.writableLayerMaxBytes,
    runtime: shimContainerRuntime,
    cgroups,
    images,
    sandboxes,
    log: log.child({ component: 'containers' }),
    rlimits: Object.entries(config.runtime.rlimits).map(([name, [soft, hard]]) => ({ type: `RLIMIT_${name.toUpperCase()}`, soft, hard })),
    maxLogLineBytes: config.runtime.logMaxLineBytes,
    shmSizeBytes: config.runtime.shmSizeBytes,
    pidsLimit: config.runtime.pidsLimit,
    blockioClasses,
    cdiSpecDirs: config.cdi.specDirs,
    apparmorProfile: config.runtime.apparmorProfile,
    lxcfs: { mode: config.runtime.lxcfs, dir: config.runtime.lxcfsDir, find: () => lxcfsProbe.find() },
    monitorCheckMs: MONITOR_CHECK_MS,
    onRecordChange: events.containerChanged,
  });
  events.attach({ pod: (id) => sandboxes.find(id), containersOf: (podId) => containers.list({ sandboxId: podId }) });
  // Containers are loaded before images collect garbage, so layers under a live rootfs are never deleted.
  await sandboxes.load();
  await containers.load();
  await network.start(sandboxes.networkedPods());
  await sandboxes.releaseInterrupted();
  await store.load();
  if (!(await ensureReserve(paths.root))) {
    log.warn('no room under the root for the space reserve: on a full disk, pods may not be stoppable', { root: paths.root, bytes: RESERVE_BYTES });
  }

  // Once: the kernel does not change under a running berth, and Status is polled every few seconds.
  const recursiveReadOnlyMounts = mountSetattrSupported();
  if (!recursiveReadOnlyMounts) log.warn('this kernel has no mount_setattr (Linux 5.12+): recursive read-only mounts are not offered');

  let podCidr = '';
  // What berth found on this host, said once at start and again in verbose Status.
  const summary = () => {
    const { mode, bridge, subnet } = config.network;
    const readiness = network.readiness();
    return {
      cgroups: cgroups.layout.mode,
      userNamespaces: userNamespacesSupported(),
      seccomp: seccompSupported(),
      network: {
        mode,
        ...(mode !== 'cni' ? { bridge, subnet: podCidr || subnet } : {}),
        ...(mode !== 'embedded' ? { cniConfDir: config.cni.confDir, cniBinDirs: config.cni.binDirs } : {}),
        ready: readiness.ready,
        ...(readiness.ready ? {} : { notReady: readiness.message }),
      },
      socket: paths.socket,
      streaming: streamingServer.baseUrl,
      lxcfs: {
        mode: config.runtime.lxcfs,
        dir: config.runtime.lxcfsDir,
        ...(lxcfsSeen?.view ? { files: lxcfsSeen.view.procFiles } : lxcfsSeen ? { notUsable: lxcfsSeen.reason } : {}),
      },
    };
  };
  const info: RuntimeInfo = {
    summary,
    runtimeReady: () => ({ ready: true, reason: '', message: '' }),
    networkReady: () => {
      const r = network.readiness();
      return { ready: r.ready, reason: r.reason, message: r.message };
    },
    effectiveConfig: () => ({ ...config, paths, podCidr, cgroups: cgroups.layout }),
    setPodCidr: (cidr) => {
      podCidr = cidr;
      network.setPodCidr(cidr);
      log.info('pod CIDR set by kubelet', { podCidr });
    },
    // The names RunPodSandbox accepts: kubelet looks a RuntimeClass's handler up here (for user namespace support).
    handlers: () => {
      const userNamespaces = userNamespacesSupported();
      return ['', RUNTIME_NAME].map((name) => ({ name, recursiveReadOnlyMounts, userNamespaces }));
    },
  };

  const streamingWiring = streamingDomain(containers, sandboxes, log);
  streamingBackend = streamingWiring.backend;
  const streaming = new StreamingService(tokens, streamingWiring.targets, streamingServer.baseUrl);
  const statsLog = log.child({ component: 'stats' });
  const layers = new WritableLayers({
    layers: () => containers.list().map((c) => ({ id: c.id, upperDir: upperDirOf(c) })),
    walk: (dir) => dirUsage(dir),
    intervalMs: config.runtime.writableLayerIntervalSeconds * 1000,
    log: statsLog,
  });
  layers.start();
  // Every stats list maps every record: records are frozen and replaced on change, so each one's view is made once.
  const views = new WeakMap<object, StatsContainer | StatsPod>();
  const viewOf = <R extends object, V extends StatsContainer | StatsPod>(record: R, make: (r: R) => V): V => {
    let view = views.get(record) as V | undefined;
    if (!view) views.set(record, (view = make(record)));
    return view;
  };
  const statsContainer = (c: Readonly<ContainerRecord>): StatsContainer => viewOf(c, containerView);
  const statsPod = (p: Readonly<SandboxRecord>): StatsPod => viewOf(p, podView);
  const containerView = (c: Readonly<ContainerRecord>): StatsContainer => ({
    id: c.id,
    podSandboxId: c.sandboxId,
    name: c.config.metadata.name,
    attempt: c.config.metadata.attempt,
    labels: c.config.labels,
    annotations: c.config.annotations,
    cgroupPath: c.cgroup.path,
  });
  const podView = (p: Readonly<SandboxRecord>): StatsPod => ({
    id: p.id,
    name: p.config.metadata.name,
    namespace: p.config.metadata.namespace,
    uid: p.config.metadata.uid,
    labels: p.config.labels,
    annotations: p.config.annotations,
    cgroupPath: p.cgroup.path,
    // berth-shim sandbox mounts the pod netns's sysfs beside the netns pin.
    ...(p.namespacePaths.network ? { netSysDir: path.join(path.dirname(p.namespacePaths.network), NET_SYSFS) } : {}),
  });
  const statsFiles = new KernelFiles(maxOpenFor(readFileSync('/proc/self/limits', 'utf8')));
  const cgroupStats = new CgroupStatsReader(cgroups.layout, statsFiles);
  const interfaceCounters = new InterfaceCountersReader(statsFiles);
  const stats = new StatsService({
    containers: () => containers.list().map(statsContainer),
    pods: () => sandboxes.list().map(statsPod),
    findContainer: (id) => {
      const c = containers.find(id);
      return c && statsContainer(c);
    },
    findPod: (id) => {
      const p = sandboxes.find(id);
      return p && statsPod(p);
    },
    readCgroup: (cgPath, parts) => cgroupStats.read(cgPath, parts),
    readInterfaces: async (sysDir) => interfaceCounters.read(sysDir),
    release: ({ cgroupPath, netSysDir }) => {
      cgroupStats.release(cgroupPath);
      if (netSysDir) interfaceCounters.release(netSysDir);
    },
    writableLayer: (id) => layers.usage(id),
    layerMountpoint: path.join(paths.root, 'containers'),
    log: statsLog,
  });
  usageSource = stats;
  events.listen((t) => {
    if (t.kind === 'DELETED' || (t.kind === 'STOPPED' && t.subject === 'pod')) stats.release(t.id);
  });
  const statsLookups = {
    podAttempt: (id: string) => sandboxes.find(id)?.config.metadata.attempt ?? 0,
    imageOf: (id: string) => containers.find(id)?.imageName ?? '',
  };

  const criLog = log.child({ component: 'cri' });
  const compactor = new IdleCompactor({ quietMs: 1000, gc: exposedGc(), trim: mallocTrim, log: log.child({ component: 'memory' }) });
  const observe: RpcObserver = metrics
    ? (rpc, seconds, code) => {
        compactor.observe(rpc);
        metrics.rpcFinished(rpc, seconds, grpcStatus[code] ?? String(code));
      }
    : compactor.observe;
  const containerStatus = containerStatusTranslator(images);
  const lifecycle = {
    ...podHandlers(sandboxes, (podId) => ({ statuses: containers.list({ sandboxId: podId }).map(containerStatus), timestampNs: events.stamp() }), criLog, observe),
    ...containerHandlers(containers, images, criLog, observe),
    ...streamingHandlers(streaming, criLog, observe),
    ...statsHandlers(stats, statsLookups, criLog, observe),
    GetContainerEvents: containerEventsHandler(events, containerStatus, criLog),
  };
  const cri: CriServer = await serveCri(paths.socket, runtimeHandlers(info, criLog, lifecycle, observe), imageHandlers(images, criLog, observe), (err, dropped) =>
    criLog.error('accepting CRI connections failed; the clients retry', { error: errorMessage(err), code: err.code, dropped }),
  );
  if (metricsServer && metrics) metricsServer.serve(metrics);
  if (config.runtime.lxcfs !== 'off') await lxcfsProbe.find();
  log.info('berth serving', { ...summary(), root: paths.root, stateDir: paths.stateDir, metrics: metricsServer?.address ?? 'disabled' });

  return {
    images,
    stop: async () => {
      // Event streams never end by themselves: ended first, so that the drain waits only for real work. Streaming
      // sessions can last hours: they are ended (not waited for) beside the RPC drain.
      events.close();
      await Promise.all([drain(cri), streamingServer.close()]);
      await metricsServer?.close();
      compactor.close();
      cgroups.stopWarming();
      layers.close();
      await containers.close();
      await network.close();
    },
    kill: () => {
      forceClose(cri);
      void streamingServer.close();
      void metricsServer?.close();
    },
    // The image service reads this object at every pull, so replacing its fields is the whole reload.
    reloadRegistry: (registry) => Object.assign(config.registry, registry),
  };
}
