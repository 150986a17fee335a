// Writes of a file's data that finish what a short write(2) leaves, on the thread pool or synchronously.
import fsCb, { writeSync, writevSync } from 'node:fs';

const writevFd = (fd: number, buffers: Buffer[]) =>
  new Promise<number>((resolve, reject) => fsCb.writev(fd, buffers, (err, n) => (err ? reject(err) : resolve(n))));
const writeFd = (fd: number, buffer: Buffer) =>
  new Promise<number>((resolve, reject) => fsCb.write(fd, buffer, (err, n) => (err ? reject(err) : resolve(n))));

export async function writeAll(fd: number, chunks: Buffer[], total: number): Promise<void> {
  const n = chunks.length === 1 ? await writeFd(fd, chunks[0]) : await writevFd(fd, chunks);
  if (n === total) return;
  // Short write: finish the rest.
  let rest = Buffer.concat(chunks, total).subarray(n);
  while (rest.length > 0) rest = rest.subarray(await writeFd(fd, rest));
}

export function writeAllSync(fd: number, chunks: Buffer[], total: number): void {
  const n = chunks.length === 1 ? writeSync(fd, chunks[0]) : writevSync(fd, chunks);
  if (n === total) return;
  let rest = Buffer.concat(chunks, total).subarray(n);
  while (rest.length > 0) rest = rest.subarray(writeSync(fd, rest));
}
