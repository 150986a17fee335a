import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { BerthError, errnoError, exhaustedResource, internal, invalidArgument, unavailable, writeFailure } from '../../src/errors.js';
import { toServiceError } from '../../src/cri/grpc.js';

// How a full disk or file table reaches a client: RESOURCE_EXHAUSTED naming what ran out, whichever layer met it.

const errno = (code: string, message = `${code}: something, write`) => Object.assign(new Error(message), { code });

test('ENOSPC, EDQUOT, EMFILE and ENFILE are found behind any depth of causes; other errnos are not exhaustion', (t) => {
  t.is(exhaustedResource(errno('ENOSPC')), 'ENOSPC');
  t.is(exhaustedResource(internal('outer', unavailable('middle', errno('EMFILE')))), 'EMFILE');
  t.is(exhaustedResource(errno('EDQUOT')), 'EDQUOT');
  t.is(exhaustedResource(errno('ENFILE')), 'ENFILE');
  t.is(exhaustedResource(errno('EIO')), undefined);
  t.is(exhaustedResource('ENOSPC'), undefined);
});

test('an unclassified error over a full disk or file table maps to RESOURCE_EXHAUSTED saying what ran out', (t) => {
  const raw = toServiceError(errno('EMFILE', "EMFILE: too many open files, open '/x'"));
  t.is(raw.code, grpc.status.RESOURCE_EXHAUSTED);
  t.is(raw.details, "EMFILE: too many open files, open '/x': berth's open-files limit (RLIMIT_NOFILE) is reached (EMFILE)");
  const wrapped = toServiceError(internal('unpacking layer entry a into /r', errno('ENOSPC')));
  t.is(wrapped.code, grpc.status.RESOURCE_EXHAUSTED);
  t.regex(wrapped.details!, /^unpacking layer entry a into \/r: no space left on the filesystem \(ENOSPC\)$/);
});

test("a service's own verdict stands: INVALID_ARGUMENT or NOT_FOUND over an ENOSPC cause is not turned into exhaustion", (t) => {
  const e = new BerthError('invalid_argument', 'config.x is bad', { cause: errno('ENOSPC') });
  t.is(toServiceError(e).code, grpc.status.INVALID_ARGUMENT);
  t.is(toServiceError(invalidArgument('y')).code, grpc.status.INVALID_ARGUMENT);
  t.is(toServiceError(errno('EIO')).code, grpc.status.INTERNAL);
});

test('errnoError: libc errnos of a limit are RESOURCE_EXHAUSTED with the errno name kept; others internal', (t) => {
  const e = errnoError('pipe2', 24);
  t.is(e.kind, 'resource_exhausted');
  t.is(e.message, "pipe2: berth's open-files limit (RLIMIT_NOFILE) is reached (EMFILE)");
  t.is(exhaustedResource(e), 'EMFILE');
  t.is(errnoError('posix_spawn x', 23).kind, 'resource_exhausted');
  const other = errnoError('posix_spawn x', 2);
  t.is(other.kind, 'internal');
  t.is(other.message, 'posix_spawn x: errno 2');
});

test('writeFailure names the file of a full-disk write and leaves other failures as they were', (t) => {
  const full = writeFailure('/var/lib/berth/containers/c/container.json', errno('ENOSPC')) as BerthError;
  t.is(full.kind, 'resource_exhausted');
  t.is(full.message, 'writing /var/lib/berth/containers/c/container.json: no space left on the filesystem (ENOSPC)');
  const eio = errno('EIO');
  t.is(writeFailure('/f', eio), eio);
});
