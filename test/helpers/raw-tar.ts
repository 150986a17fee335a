import { Readable } from 'node:stream';
import tar from 'tar-stream';

// Tar streams written entry by entry, headers as given (names that climb out, PAX records, device nodes): the
// unpacker's tests need layers that images.ts's well-formed builder would not make.

export type RawTarHeader = Partial<tar.Header> & { name: string };
export type RawTarEntry = RawTarHeader & { pax?: Record<string, string>; body?: string | Buffer };

/** Every entry's mtime unless it gives one. */
export const RAW_TAR_MTIME = new Date('2021-03-04T05:06:07Z');

export async function rawTar(entries: RawTarEntry[]): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  const collected = (async () => {
    for await (const chunk of pack) chunks.push(chunk as Buffer);
  })();
  for (const { body, ...header } of entries) {
    const full = { mtime: RAW_TAR_MTIME, uid: 0, gid: 0, ...header } as tar.Header;
    await new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null) => (err ? reject(err) : resolve());
      if (body !== undefined) pack.entry(full, body, cb);
      else pack.entry(full, cb);
    });
  }
  pack.finalize();
  await collected;
  return Buffer.concat(chunks);
}

/** A Readable that hands `buf` over in chunks of `size` bytes (all at once by default). */
export function streamOf(buf: Buffer, size = buf.length || 1): Readable {
  const parts: Buffer[] = [];
  for (let i = 0; i < buf.length; i += size) parts.push(buf.subarray(i, i + size));
  return Readable.from(parts, { objectMode: false });
}
