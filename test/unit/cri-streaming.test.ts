import test, { ExecutionContext } from 'ava';
import * as grpc from '@grpc/grpc-js';
import { notFound } from '../../src/errors.js';
import { logger, setLogSink } from '../../src/log.js';
import { streamingHandlers } from '../../src/cri/streaming.js';
import { StreamingService } from '../../src/streaming/service.js';
import { TokenCache } from '../../src/streaming/tokens.js';
import type { StreamingTargets } from '../../src/streaming/types.js';

// The Exec, Attach and PortForward handlers: kubelet's request rules as INVALID_ARGUMENT naming the field, the
// targets' NOT_FOUND passed through, and a URL that redeems the request as sent.

setLogSink(() => {});

const targets: StreamingTargets = {
  runningContainer: async (id) => {
    if (id.startsWith('gone')) throw notFound(`container "${id}" not found`);
    return `${id}-full`;
  },
  readyPod: async (id) => `${id}-full`,
};

function setup() {
  const tokens = new TokenCache();
  const handlers = streamingHandlers(new StreamingService(tokens, targets, 'http://127.0.0.1:4242'), logger({ test: 'cri-streaming' }));
  const call = (rpc: 'Exec' | 'Attach' | 'PortForward', request: Record<string, unknown>) =>
    new Promise<{ url: string }>((resolve, reject) => {
      const handler = handlers[rpc] as unknown as (call: unknown, cb: (err: grpc.ServiceError | null, res?: { url: string }) => void) => void;
      handler({ request }, (err, res) => (err ? reject(err) : resolve(res!)));
    });
  return { tokens, call };
}

const exec = (over: Record<string, unknown> = {}) => ({ container_id: 'c1', cmd: ['sh'], tty: false, stdin: false, stdout: true, stderr: false, ...over });
const attach = (over: Record<string, unknown> = {}) => ({ container_id: 'c1', tty: false, stdin: false, stdout: true, stderr: false, ...over });

async function refused(t: ExecutionContext, p: Promise<unknown>, code: grpc.status, field: RegExp): Promise<void> {
  const err = await p.then(
    () => ({ code: grpc.status.OK, details: 'the call succeeded' }),
    (e: grpc.ServiceError) => e,
  );
  t.is(err.code, code, err.details);
  t.regex(err.details, field);
}

test('Exec and Attach answer a URL whose token redeems the request, with the full container id', async (t) => {
  const { tokens, call } = setup();
  const { url } = await call('Exec', exec({ cmd: ['ls', '-l'], stdin: true, tty: true }));
  t.regex(url, /^http:\/\/127\.0\.0\.1:4242\/exec\/[A-Za-z0-9_-]{22}$/);
  t.deepEqual(tokens.consume(url.split('/').pop()!), { kind: 'exec', containerId: 'c1-full', cmd: ['ls', '-l'], stdin: true, stdout: true, stderr: false, tty: true });
  const a = await call('Attach', attach({ stderr: true }));
  t.deepEqual(tokens.consume(a.url.split('/').pop()!), { kind: 'attach', containerId: 'c1-full', stdin: false, stdout: true, stderr: true, tty: false });
  const pf = await call('PortForward', { pod_sandbox_id: 'p1', port: [80, 65535] });
  t.deepEqual(tokens.consume(pf.url.split('/').pop()!), { kind: 'portforward', podSandboxId: 'p1-full', ports: [80, 65535] });
});

test("kubelet's rules: empty ids and cmd, no stdio at all, tty with stderr, ports outside 1-65535 are INVALID_ARGUMENT naming the field", async (t) => {
  const { tokens, call } = setup();
  const invalid = grpc.status.INVALID_ARGUMENT;
  await refused(t, call('Exec', exec({ container_id: '' })), invalid, /container_id/);
  await refused(t, call('Exec', exec({ cmd: [] })), invalid, /^cmd/);
  await refused(t, call('Exec', exec({ cmd: ['sh', 'a\u0000b'] })), invalid, /cmd\[1\]/);
  await refused(t, call('Exec', exec({ stdout: false })), invalid, /stdin, stdout or stderr/);
  await refused(t, call('Exec', exec({ tty: true, stderr: true })), invalid, /tty and stderr/);
  await refused(t, call('Attach', attach({ container_id: '' })), invalid, /container_id/);
  await refused(t, call('Attach', attach({ stdout: false })), invalid, /stdin, stdout or stderr/);
  await refused(t, call('Attach', attach({ tty: true, stderr: true })), invalid, /tty and stderr/);
  await refused(t, call('PortForward', { pod_sandbox_id: '', port: [80] }), invalid, /pod_sandbox_id/);
  await refused(t, call('PortForward', { pod_sandbox_id: 'p', port: [80, 0] }), invalid, /port\[1\]/);
  await refused(t, call('PortForward', { pod_sandbox_id: 'p', port: [65536] }), invalid, /port\[0\]/);
  t.is(tokens.size, 0, 'no token for a refused request');
});

test('an unknown container is NOT_FOUND from the targets; the 1001st outstanding URL is RESOURCE_EXHAUSTED', async (t) => {
  const { call } = setup();
  await refused(t, call('Exec', exec({ container_id: 'gone1' })), grpc.status.NOT_FOUND, /gone1/);
  await refused(t, call('Attach', attach({ container_id: 'gone2' })), grpc.status.NOT_FOUND, /gone2/);
  for (let i = 0; i < 1000; i++) await call('Exec', exec());
  await refused(t, call('Exec', exec()), grpc.status.RESOURCE_EXHAUSTED, /outstanding/);
});
