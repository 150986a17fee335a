// The image of the pull phases: 5 gzip layers of ~12 MiB each (~60 MiB compressed, ~90 MiB unpacked), built with
// the tests' layer fixtures from seeded content, so every run (and both runtimes) pull the very same bytes. Each
// layer mixes what real images hold: a few large incompressible files (binaries, already-compressed assets), a few
// hundred small compressible ones (text, scripts), directories, symlinks and a hardlink.

import { createCipheriv, createHash } from 'node:crypto';
import { layer, pushImage, DEFAULT_PATH_ENV, type LayerEntry, type PushedImage } from '../test/helpers/images.js';

export const BIG_IMAGE_LAYERS = 5;
const RANDOM_FILES_PER_LAYER = 5;
const RANDOM_FILE_BYTES = 2 * 1024 * 1024;
const TEXT_FILES_PER_LAYER = 400;

/** Deterministic incompressible bytes: AES-256-CTR keystream under a key derived from `seed`. */
export function seededBytes(seed: string, length: number): Buffer {
  const key = createHash('sha256').update(`berth-bench:${seed}`).digest();
  const cipher = createCipheriv('aes-256-ctr', key, Buffer.alloc(16));
  return Buffer.concat([cipher.update(Buffer.alloc(length)), cipher.final()]);
}

const WORDS = 'the of container layer image pull runtime kernel socket pod node overlay registry digest config mount namespace cgroup process signal'.split(' ');

/** Deterministic compressible text (words picked by seeded bytes), `length` bytes. */
export function seededText(seed: string, length: number): Buffer {
  const pick = seededBytes(seed, length);
  const parts: string[] = [];
  let size = 0;
  for (let i = 0; size < length; i++) {
    const w = WORDS[pick[i % pick.length]! % WORDS.length]!;
    const sep = i % 12 === 11 ? '\n' : ' ';
    parts.push(w, sep);
    size += w.length + 1;
  }
  return Buffer.from(parts.join('')).subarray(0, length);
}

export function bigLayerEntries(index: number): LayerEntry[] {
  const root = `opt/bench${index}`;
  const entries: LayerEntry[] = [
    { type: 'dir', path: root, mode: 0o755 },
    { type: 'dir', path: `${root}/bin`, mode: 0o755 },
    { type: 'dir', path: `${root}/share`, mode: 0o755 },
  ];
  for (let f = 0; f < RANDOM_FILES_PER_LAYER; f++) {
    entries.push({ type: 'file', path: `${root}/bin/blob${f}`, content: seededBytes(`${index}/blob${f}`, RANDOM_FILE_BYTES), mode: 0o755 });
  }
  const sizes = seededBytes(`${index}/sizes`, TEXT_FILES_PER_LAYER * 2);
  for (let f = 0; f < TEXT_FILES_PER_LAYER; f++) {
    const dir = `${root}/share/d${f % 20}`;
    if (f < 20) entries.push({ type: 'dir', path: dir, mode: 0o755 });
    // 1–40 KiB, the spread of a package's text files.
    const length = 1024 + (sizes.readUInt16LE(f * 2) % (39 * 1024));
    entries.push({ type: 'file', path: `${dir}/f${f}.txt`, content: seededText(`${index}/f${f}`, length), mode: 0o644 });
  }
  entries.push({ type: 'symlink', path: `${root}/current`, target: 'bin/blob0' });
  entries.push({ type: 'hardlink', path: `${root}/bin/blob0.link`, target: `${root}/bin/blob0` });
  return entries;
}

/** Builds and pushes the image as `bench/big:v1`; the caller reports its size from the result. */
export async function pushBigImage(registryUrl: string): Promise<PushedImage> {
  const layers = [];
  for (let i = 0; i < BIG_IMAGE_LAYERS; i++) layers.push(await layer(bigLayerEntries(i), 'gzip'));
  return pushImage({ url: registryUrl }, 'bench/big', 'v1', { layers, config: { Env: [DEFAULT_PATH_ENV], Cmd: ['sh'] } });
}
