// How unpacking shares the one JavaScript thread with the rest of the daemon. The quick metadata syscalls and
// small files are done synchronously, in slices of a few milliseconds between which the event loop runs; file
// data beyond that is written asynchronously.

/** The longest stretch of synchronous fs calls (or zstd decoding) before the event loop gets a turn. */
export const SYNC_SLICE_MS = 4;
/** File data is gathered up to this many bytes per write. */
export const WRITE_BATCH_BYTES = 1 << 20;
/** Files up to this size are written synchronously (their data is at most one batch anyway). */
export const SYNC_FILE_MAX = 256 * 1024;
/** Compressed bytes handed to the (synchronous, pure JS) zstd decoder at a time. */
export const ZSTD_SLICE = 64 * 1024;
