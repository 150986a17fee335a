import test from 'ava';
import { promises as fs, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { claimSocket, drain, serveCri } from '../../src/cri/server.js';

// The CRI socket is created with its final mode: berth sets the umask around the bind instead of chmod'ing after
// it, so the socket never exists with a wider mode. serveCri binds synchronously, before it first awaits: the
// socket's mode read right after the call returns (before any chmod could have run) is the mode it was born with.

test('the socket is born 0660 even under a umask of 0, and the umask is restored after the bind', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-sock-'));
  const socket = path.join(dir, 'run', 'berth.sock');
  await claimSocket(socket);
  const previous = process.umask(0);
  t.teardown(async () => {
    process.umask(previous);
    await fs.rm(dir, { recursive: true, force: true });
  });
  const serving = serveCri(socket, {} as never, {} as never);
  const born = statSync(socket, { throwIfNoEntry: false });
  const cri = await serving;
  try {
    t.truthy(born, 'the socket exists as soon as serveCri returns');
    t.is(born!.mode & 0o777, 0o660, 'mode at birth, before anything could chmod it');
    t.is((await fs.stat(socket)).mode & 0o777, 0o660);
    t.is(process.umask(), 0, 'the umask berth found is back in place');
    await fs.writeFile(path.join(dir, 'after'), '', { mode: 0o666 });
    t.is((await fs.stat(path.join(dir, 'after'))).mode & 0o777, 0o666, 'files made afterwards get the process umask');
  } finally {
    await drain(cri);
  }
});

test('shutdown ends a connection that never sent a request (not yet grpc-js\'s), instead of waiting for it', async (t) => {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-sock-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const socket = path.join(dir, 'run', 'berth.sock');
  await claimSocket(socket);
  const cri = await serveCri(socket, {} as never, {} as never);
  const { connect } = await import('node:net');
  const silent = connect(socket);
  const greeted = new Promise<Buffer>((resolve) => silent.once('data', resolve));
  const closed = new Promise<void>((resolve) => silent.once('close', () => resolve()));
  silent.on('error', () => undefined);
  // The server's connection preface arrives: the connection was accepted and is waiting for a first request.
  t.is((await greeted)[3], 0x4, 'a SETTINGS frame');
  await drain(cri);
  await closed;
  t.pass('drain resolved and the silent client was disconnected');
});
