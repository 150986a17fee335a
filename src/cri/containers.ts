import type { RuntimeServiceHandlers } from '../gen/runtime/v1/RuntimeService.js';
import type { ContainerStatus } from '../gen/runtime/v1/ContainerStatus.js';
import type { Container } from '../gen/runtime/v1/Container.js';
import { BerthError, invalidArgument } from '../errors.js';
import { Logger } from '../log.js';
import { ContainerService } from '../container/service.js';
import { ContainerRecord, ContainerState } from '../container/types.js';
import { ImageService } from '../image/service.js';
import { handlerFactory, loadCri, requireId, RpcObserver } from './grpc.js';
import { ItemBytes } from './encoded.js';
import { containerConfigFromProto, resourceUpdateFromProto, stopSignalToProto } from './translate.js';
import { pagedStream } from './paging.js';
import { noNul } from './names.js';
import type { ContainerFilter__Output } from '../gen/runtime/v1/ContainerFilter.js';

const stateToProto: Record<ContainerState, 'CONTAINER_CREATED' | 'CONTAINER_RUNNING' | 'CONTAINER_EXITED' | 'CONTAINER_UNKNOWN'> = {
  CREATED: 'CONTAINER_CREATED',
  RUNNING: 'CONTAINER_RUNNING',
  EXITED: 'CONTAINER_EXITED',
  UNKNOWN: 'CONTAINER_UNKNOWN',
};
const stateFromProto: Record<string, ContainerState> = {
  CONTAINER_CREATED: 'CREATED',
  CONTAINER_RUNNING: 'RUNNING',
  CONTAINER_EXITED: 'EXITED',
  CONTAINER_UNKNOWN: 'UNKNOWN',
};

const propagationToProto = {
  PRIVATE: 'PROPAGATION_PRIVATE',
  HOST_TO_CONTAINER: 'PROPAGATION_HOST_TO_CONTAINER',
  BIDIRECTIONAL: 'PROPAGATION_BIDIRECTIONAL',
} as const;

/** The image as the container was created from it, and as the user named it (kubelet 1.31+ shows that one). */
const imageSpec = (record: ContainerRecord) => ({
  image: record.imageName,
  annotations: {},
  user_specified_image: record.config.userSpecifiedImage ?? '',
});

/** kubelet shows image_ref as the digest it can pull again; the id stays in image_id. */
function imageRefOf(images: Pick<ImageService, 'byId'>): (record: ContainerRecord) => string {
  return (record) => images.byId(record.imageId)?.repoDigests[0] ?? record.imageId;
}

/** ContainerStatus of a record: for ContainerStatus, PodSandboxStatus's containers_statuses and the event stream. */
export function containerStatusTranslator(images: Pick<ImageService, 'byId'>): (record: ContainerRecord) => ContainerStatus {
  const imageRef = imageRefOf(images);
  return (record) => {
    const r = record.config.resources;
    return {
      id: record.id,
      metadata: { ...record.config.metadata },
      state: stateToProto[record.state],
      created_at: String(record.createdAt),
      started_at: String(record.startedAt ?? 0),
      finished_at: String(record.exit?.finishedAt ?? 0),
      exit_code: record.exit?.exitCode ?? 0,
      image: imageSpec(record),
      image_ref: imageRef(record),
      image_id: record.imageId,
      reason: record.exit?.reason ?? '',
      message: record.exit?.message ?? '',
      labels: record.config.labels,
      annotations: record.config.annotations,
      mounts: record.config.mounts.map((m) => ({
        container_path: m.containerPath,
        host_path: m.hostPath,
        readonly: m.readonly,
        selinux_relabel: m.selinuxRelabel,
        propagation: propagationToProto[m.propagation],
        recursive_read_only: m.recursiveReadOnly ?? false,
        mount_options: m.mountOptions ?? [],
        ...(m.image ? { image: { image: m.image.ref, annotations: {}, image_ref: m.image.imageId ?? '' }, image_sub_path: m.image.subPath === '.' ? '' : m.image.subPath } : {}),
      })),
      log_path: record.logPath,
      resources: {
        linux: {
          cpu_period: String(r.cpuPeriod ?? 0),
          cpu_quota: String(r.cpuQuota ?? 0),
          cpu_shares: String(r.cpuShares ?? 0),
          memory_limit_in_bytes: String(r.memoryLimitBytes ?? 0),
          oom_score_adj: String(r.oomScoreAdj ?? 0),
          cpuset_cpus: r.cpusetCpus ?? '',
          cpuset_mems: r.cpusetMems ?? '',
          hugepage_limits: r.hugepageLimits.map((l) => ({ page_size: l.pageSize, limit: String(l.limit) })),
          unified: r.unified,
          memory_swap_limit_in_bytes: String(r.memorySwapLimitBytes ?? 0),
        },
      },
      user: { linux: { uid: String(record.user.uid), gid: String(record.user.gid), supplemental_groups: record.user.additionalGids.map(String) } },
      stop_signal: stopSignalToProto(record.stopSignal) as ContainerStatus['stop_signal'],
    };
  };
}

export function containerHandlers(containers: ContainerService, images: ImageService, log: Logger, observe?: RpcObserver): Partial<RuntimeServiceHandlers> {
  const h = handlerFactory(log, observe);
  const imageRef = imageRefOf(images);

  const toContainer = (record: ContainerRecord): Container => ({
    id: record.id,
    pod_sandbox_id: record.sandboxId,
    metadata: { ...record.config.metadata },
    image: imageSpec(record),
    image_ref: imageRef(record),
    image_id: record.imageId,
    state: stateToProto[record.state],
    created_at: String(record.createdAt),
    labels: record.config.labels,
    annotations: record.config.annotations,
  });

  const toStatus = containerStatusTranslator(images);
  const containerBytes = new ItemBytes<Readonly<ContainerRecord>, Container>(
    'containers',
    loadCri().runtime.v1.RuntimeService.service.ListContainers.responseSerialize,
    toContainer,
  );

  // ListContainers and StreamContainers answer the same filter with the same items.
  const listContainers = (f: ContainerFilter__Output | null | undefined): Readonly<ContainerRecord>[] => {
    const state = f?.state ? stateFromProto[f.state.state] : undefined;
    // An unknown state (a newer client's, arriving as a number) is refused rather than guessed at.
    if (f?.state && !state) throw invalidArgument(`filter.state.state ${f.state.state} is not a container state`);
    const list = containers.list({
      id: f?.id || undefined,
      sandboxId: f?.pod_sandbox_id || undefined,
      state,
      labels: f?.label_selector,
    });
    return list;
  };

  return {
    CreateContainer: h('CreateContainer', async (req) => {
      const podId = requireId(req.pod_sandbox_id, 'pod_sandbox_id', 'CreateContainer');
      const record = await containers.create(podId, containerConfigFromProto(req.config));
      return { container_id: record.id };
    }),
    StartContainer: h('StartContainer', async (req) => {
      await containers.start(requireId(req.container_id, 'container_id', 'StartContainer'));
      return {};
    }),
    StopContainer: h('StopContainer', async (req) => {
      await containers.stop(requireId(req.container_id, 'container_id', 'StopContainer'), Number(req.timeout));
      return {};
    }),
    RemoveContainer: h('RemoveContainer', async (req) => {
      await containers.remove(requireId(req.container_id, 'container_id', 'RemoveContainer'));
      return {};
    }),
    // An item shows its image's pullable digest besides its record: a re-pulled or removed image changes it.
    ListContainers: h('ListContainers', async (req) => containerBytes.response(listContainers(req.filter), imageRef)),
    StreamContainers: pagedStream('StreamContainers', log, (req) => listContainers(req.filter).map(toContainer), (page) => ({ containers: page }), observe),
    ContainerStatus: h('ContainerStatus', async (req) => {
      const record = containers.get(requireId(req.container_id, 'container_id', 'ContainerStatus'));
      const info: Record<string, string> = {};
      if (req.verbose) {
        info.info = JSON.stringify({
          pid: record.pid, monitorPid: record.monitorPid, bundle: record.bundle, cgroup: record.cgroup, user: record.user,
          apparmorProfile: record.apparmorProfile ?? null, config: record.config,
        });
      }
      return { status: toStatus(record), info };
    }),
    UpdateContainerResources: h('UpdateContainerResources', async (req) => {
      const id = requireId(req.container_id, 'container_id', 'UpdateContainerResources');
      // The service merges only the fields an update defines, so what this request leaves out keeps its stored value.
      await containers.updateResources(id, resourceUpdateFromProto(req.linux, 'linux'));
      return {};
    }),
    ReopenContainerLog: h('ReopenContainerLog', async (req) => {
      await containers.reopenLog(requireId(req.container_id, 'container_id', 'ReopenContainerLog'));
      return {};
    }),
    ExecSync: h('ExecSync', async (req) => {
      req.cmd.forEach((word, i) => noNul(word, `cmd[${i}]`));
      const result = await containers.execSync(requireId(req.container_id, 'container_id', 'ExecSync'), [...req.cmd], Number(req.timeout));
      if (result.timedOut) {
        throw new BerthError('deadline_exceeded', `command ${JSON.stringify(req.cmd)} timed out after ${req.timeout}s`);
      }
      return { stdout: result.stdout, stderr: result.stderr, exit_code: result.exitCode };
    }),
  };
}
