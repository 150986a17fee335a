import test from 'ava';
import { PassThrough } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import { lazyUpgradeHandler } from '../../src/streaming/lazy.js';
import { logger } from '../../src/log.js';
import type { ProtocolContext, StreamTarget, UpgradeHandler } from '../../src/streaming/types.js';

// The protocol modules are imported at the first upgrade that needs them; every upgrade still reaches the handler.

const target = { kind: 'exec', containerId: 'c1' } as unknown as StreamTarget;
const ctx = { log: logger() } as unknown as ProtocolContext;
const req = {} as IncomingMessage;

function socket(): PassThrough & { written: () => string } {
  const s = new PassThrough() as PassThrough & { written: () => string };
  let out = '';
  s.on('data', (d: Buffer) => (out += d.toString()));
  s.written = () => out;
  return s;
}

const settle = () => new Promise((resolve) => setImmediate(resolve));

test('the real handler is loaded once, at the first upgrade, and gets every upgrade with its arguments', async (t) => {
  let loads = 0;
  const seen: unknown[][] = [];
  const real: UpgradeHandler = (...args) => void seen.push(args);
  const lazy = lazyUpgradeHandler(async () => {
    loads++;
    return real;
  });
  t.is(loads, 0, 'nothing is loaded before an upgrade');
  const [a, b] = [socket(), socket()];
  const head = Buffer.from('x');
  lazy(req, a, head, target, ctx);
  lazy(req, b, head, target, ctx);
  await settle();
  t.is(loads, 1);
  t.deepEqual(seen.map((args) => args[1]), [a, b]);
  t.is(seen[0][2], head);
  t.is(seen[0][3], target);
});

test('a failed import answers the upgrade with 500 and is tried again at the next upgrade', async (t) => {
  let loads = 0;
  const served: unknown[] = [];
  const lazy = lazyUpgradeHandler(async () => {
    loads++;
    if (loads === 1) throw new Error('module missing');
    return (_req, s) => void served.push(s);
  });
  const first = socket();
  lazy(req, first, Buffer.alloc(0), target, ctx);
  await settle();
  t.regex(first.written(), /^HTTP\/1\.1 500 /);
  const second = socket();
  lazy(req, second, Buffer.alloc(0), target, ctx);
  await settle();
  t.is(loads, 2);
  t.deepEqual(served, [second]);
});

test('a handler that throws ends the socket, as the streaming server does for its own handlers', async (t) => {
  const lazy = lazyUpgradeHandler(async () => () => {
    throw new Error('boom');
  });
  const s = socket();
  lazy(req, s, Buffer.alloc(0), target, ctx);
  await settle();
  t.true(s.destroyed);
});
