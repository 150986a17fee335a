import type { ImageServiceHandlers } from '../gen/runtime/v1/ImageService.js';
import type { Image } from '../gen/runtime/v1/Image.js';
import { invalidArgument } from '../errors.js';
import { Logger } from '../log.js';
import { ImageService } from '../image/service.js';
import { ImageRecord, imageUser } from '../image/types.js';
import { credentialsFromAuthConfig } from '../registry/auth.js';
import { RpcObserver, unary } from './grpc.js';
import { pagedStream } from './paging.js';

export function toCriImage(record: ImageRecord): Image {
  const user = imageUser(record.config.config?.User);
  const image: Image = {
    id: record.id,
    repo_tags: record.repoTags,
    repo_digests: record.repoDigests,
    size: String(record.size),
    username: user.username ?? '',
    spec: { image: record.id, annotations: {} },
    pinned: false,
  };
  if (user.uid !== undefined) image.uid = { value: String(user.uid) };
  return image;
}

export function imageHandlers(images: ImageService, log: Logger, observe?: RpcObserver): ImageServiceHandlers {
  const h = <Req, Res>(rpc: string, fn: (req: Req) => Promise<Res>) => unary<Req, Res>(rpc, log, (req) => fn(req), observe);
  return {
    // kubelet gives up on a pull by cancelling the call; without the signal the download would run on unobserved.
    PullImage: unary('PullImage', log, async (req, call) => {
      const image = req.image?.image ?? '';
      if (image === '') throw invalidArgument('image.image is empty: PullImage needs an image reference');
      const credentials = req.auth ? credentialsFromAuthConfig(req.auth) : undefined;
      const cancelled = new AbortController();
      const onCancel = () => cancelled.abort();
      call.on('cancelled', onCancel);
      try {
        if (call.cancelled) cancelled.abort();
        const record = await images.pull(image, credentials, cancelled.signal);
        return { image_ref: record.id };
      } finally {
        call.off('cancelled', onCancel);
      }
    }, observe),
    ListImages: h('ListImages', async (req) => ({ images: images.list(req.filter?.image?.image || undefined).map(toCriImage) })),
    StreamImages: pagedStream('StreamImages', log, (req) => images.list(req.filter?.image?.image || undefined).map(toCriImage), (page) => ({ images: page }), observe),
    ImageStatus: h('ImageStatus', async (req) => {
      const image = req.image?.image ?? '';
      if (image === '') throw invalidArgument('image.image is empty: ImageStatus needs an image reference or id');
      const record = images.resolve(image);
      if (!record) return { info: {} };
      const info: Record<string, string> = {};
      if (req.verbose) {
        info.info = JSON.stringify({ id: record.id, manifestDigest: record.manifestDigest, layers: record.layers, imageSpec: record.config });
      }
      return { image: toCriImage(record), info };
    }),
    RemoveImage: h('RemoveImage', async (req) => {
      const image = req.image?.image ?? '';
      if (image === '') throw invalidArgument('image.image is empty: RemoveImage needs an image reference or id');
      await images.remove(image);
      return {};
    }),
    ImageFsInfo: h('ImageFsInfo', async () => {
      const usage = images.fsUsage();
      const fs = {
        timestamp: String(BigInt(Date.now()) * 1_000_000n),
        fs_id: { mountpoint: usage.mountpoint },
        used_bytes: { value: String(usage.bytes) },
        inodes_used: { value: String(usage.inodes) },
      };
      return { image_filesystems: [fs], container_filesystems: [] };
    }),
  };
}
