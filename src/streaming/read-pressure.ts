// Every read of a socket hands JS a new Buffer whose bytes V8 counts as external memory. A relay of a stream (an
// upload through port-forward, a large stdin) adds hundreds of MiB a second of them, and V8 frees such buffers in a
// scavenge only while they are young; scavenges come with JS allocation, which a relay hardly does. So the external
// memory piled up until V8 ran a mark-compact of the whole heap instead: 16 of them while 256 MiB went up through
// one port-forward connection of the daemon, each marking on four helper threads, 2.6 ms of CPU per MiB. A scavenge
// (the young generation only, ~0.1 ms here) every few MiB read frees the buffers first: with one per 4 MiB, 3
// mark-compacts, 1.35 ms per MiB, 847 MiB/s against 573 (npm run bench, streaming phase, 3 × 128 MiB); per 1, 2 and
// 4 MiB read the bench's upload ran at 846, 960 and 830 MiB/s (1.44, 1.25, 1.51 ms per MiB), within its noise.
// Without --expose-gc (berth run without its launcher) this does nothing.

/** Socket bytes read between two scavenges. */
const SCAVENGE_EVERY_BYTES = 2 * 1024 * 1024;

type Collector = (opts: { type: 'minor' }) => void;

/** A counter of bytes read that asks `collect` for a scavenge every `everyBytes`. */
export function scavenger(collect: Collector | undefined, everyBytes = SCAVENGE_EVERY_BYTES): (bytes: number) => void {
  if (!collect) return () => undefined;
  let since = 0;
  return (bytes) => {
    since += bytes;
    if (since < everyBytes) return;
    since %= everyBytes;
    collect({ type: 'minor' });
  };
}

/** Called with the size of each chunk a streaming session reads from its client (a socket read; a WebSocket message). */
const exposed = (globalThis as { gc?: unknown }).gc;
export const noteSocketRead = scavenger(typeof exposed === 'function' ? (exposed as Collector) : undefined);
