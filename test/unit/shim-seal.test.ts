import test from 'ava';
import { closeSync, openSync, readFileSync, readlinkSync, writeSync } from 'node:fs';
import { SHIM_PATH, sealedShim } from '../../src/kernel/shim.js';
import { F_SEAL_GROW, F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_WRITE, getSeals } from '../../src/kernel/libc.js';

// The copy of berth-shim that berth runs (issue 10, finding 2): a memfd, byte-identical to the binary, made once,
// sealed so that no one can write, grow, shrink or unseal it.

test('the sealed copy is one memfd per process, identical to the binary, and refuses every write', async (t) => {
  const exe = await sealedShim();
  t.is(await sealedShim(), exe, 'made once and reused');
  t.regex(readlinkSync(exe), /^\/memfd:berth-shim/);
  t.true(readFileSync(exe).equals(readFileSync(SHIM_PATH)));
  const fd = Number(/\/fd\/(\d+)$/.exec(exe)![1]);
  const all = F_SEAL_SEAL | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE;
  t.is(getSeals(fd) & all, all);
  t.throws(() => writeSync(fd, 'x', 0), { code: 'EPERM' });
  t.throws(() => openSync(exe, 'w'), { code: 'EPERM' }, 'O_TRUNC is a shrink');
  const rw = openSync(exe, 'r+');
  try {
    t.throws(() => writeSync(rw, 'x', 0), { code: 'EPERM' });
  } finally {
    closeSync(rw);
  }
});
