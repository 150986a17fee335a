import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { readBounded, REGISTRY_LIMITS } from '../../src/registry/bounded.js';

// The capped reader every in-memory registry body goes through: it must stop reading at the limit, not after.

const CHUNK = 64 * 1024;

/** An endless body served in 64 KiB chunks, pulled only on demand; counts what was pulled and whether it was cancelled. */
function endless(headers: Record<string, string> = {}) {
  const seen = { pulled: 0, cancelled: false };
  const body = new ReadableStream<Uint8Array>(
    {
      pull(controller) {
        seen.pulled++;
        controller.enqueue(new Uint8Array(CHUNK).fill(0x61));
      },
      cancel() {
        seen.cancelled = true;
      },
    },
    { highWaterMark: 0 },
  );
  return { res: new Response(body, { headers }), seen };
}

test('a body within the limit is read whole', async (t) => {
  const res = new Response('{"schemaVersion":2}');
  const body = await readBounded(res, REGISTRY_LIMITS.manifest, 'manifest x');
  t.is(body.toString(), '{"schemaVersion":2}');
});

test('a body exactly at the limit is accepted', async (t) => {
  const res = new Response(new Uint8Array(REGISTRY_LIMITS.errorBody.bytes));
  t.is((await readBounded(res, REGISTRY_LIMITS.errorBody, 'error body')).length, REGISTRY_LIMITS.errorBody.bytes);
});

test('an endless chunked body is cut off right after the limit, cancelled and the connection aborted', async (t) => {
  const { res, seen } = endless();
  let aborted = 0;
  const err = await t.throwsAsync(readBounded(res, REGISTRY_LIMITS.manifest, 'manifest evil:v1 from http://x', () => aborted++));
  t.true(err instanceof BerthError);
  t.is((err as BerthError).kind, 'resource_exhausted');
  t.regex(err!.message, /^manifest evil:v1 from http:\/\/x: more than 4194304 bytes received, over berth's limit of 4 MiB \(4194304 bytes\) for manifests and indexes$/);
  t.is(seen.pulled, REGISTRY_LIMITS.manifest.bytes / CHUNK + 1, 'not one chunk more than needed to pass the limit');
  t.true(seen.cancelled);
  t.is(aborted, 1);
});

test('a Content-Length over the limit fails before any of the body is read', async (t) => {
  const { res, seen } = endless({ 'content-length': String(64 << 20) });
  const err = await t.throwsAsync(readBounded(res, REGISTRY_LIMITS.token, 'token service http://x'));
  t.is((err as BerthError).kind, 'resource_exhausted');
  t.regex(err!.message, /Content-Length 67108864, over berth's limit of 1 MiB \(1048576 bytes\) for token responses/);
  t.is(seen.pulled, 0);
  t.true(seen.cancelled);
});

test('a Content-Length under the limit is no licence: the bytes are still counted', async (t) => {
  const { res, seen } = endless({ 'content-length': '10' });
  const err = await t.throwsAsync(readBounded(res, REGISTRY_LIMITS.errorBody, 'error body'));
  t.regex(err!.message, /64 KiB \(65536 bytes\) for error bodies/);
  t.is(seen.pulled, 2);
});
