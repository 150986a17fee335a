import test from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Logger } from '../../src/log.js';
import { EmbeddedNetwork } from '../../src/network/embedded.js';
import { linuxEmbeddedHost } from '../../src/network/embedded-host.js';
import { HostPortTable } from '../../src/network/hostports.js';

// EmbeddedNetwork's bookkeeping, without a bridge: iptables is a stand-in that fails (first in PATH).

const lines: { level: string; msg: string }[] = [];
const quiet: Logger = {
  debug: (msg) => lines.push({ level: 'debug', msg }),
  info: (msg) => lines.push({ level: 'info', msg }),
  warn: (msg) => lines.push({ level: 'warn', msg }),
  error: (msg) => lines.push({ level: 'error', msg }),
  child: () => quiet,
};

let tmp: string;
test.before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-embedded-'));
  const bin = path.join(tmp, 'bin');
  await fs.mkdir(bin);
  for (const cmd of ['iptables-restore', 'iptables-save']) await fs.writeFile(path.join(bin, cmd), '#!/bin/sh\necho "stand-in fails" >&2\nexit 1\n', { mode: 0o755 });
  process.env.PATH = `${bin}:${process.env.PATH}`;
});
test.after.always(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

const network = (dataDir: string) => new EmbeddedNetwork({ bridge: 'berthtest0', subnet: '10.251.0.0/16', chainPrefix: 'BERTH-UNIT', dataDir, log: quiet, host: linuxEmbeddedHost });

test('a pod CIDR that cannot be recorded leaves NetworkReady false with the reason, and rejects nothing', async (t) => {
  const net = network(path.join(tmp, 'missing', 'network'));
  t.true(net.readiness().ready);
  net.setPodCidr('10.244.1.0/24');
  await net.close();
  const r = net.readiness();
  t.false(r.ready);
  t.regex(r.message, /cannot follow the pod CIDR 10\.244\.1\.0\/24 from kubelet: cannot record it in /);

  // One that can be recorded clears it.
  const dir = path.join(tmp, 'ok');
  await fs.mkdir(dir);
  const ok = network(dir);
  ok.setPodCidr('10.244.1.0/29');
  await ok.close();
  t.true(ok.readiness().ready);
  t.is(JSON.parse(await fs.readFile(path.join(dir, 'ipam.json'), 'utf8')).podCidr, '10.244.1.0/29');
  ok.setPodCidr('10.244.1.0/31');
  await ok.close();
  t.regex(ok.readiness().message, /too small/);
});

test('teardown releases the address, the hostPorts and the pod even when its rules cannot be deleted, and still fails', async (t) => {
  const dir = path.join(tmp, 'teardown');
  await fs.mkdir(dir);
  const net = network(dir);
  const podId = 'a'.repeat(64);
  const state = {
    backend: 'embedded',
    ip: '10.251.0.2',
    subnet: '10.251.0.0/16',
    bridge: 'berthtest0',
    veth: 'bertha',
    chainPrefix: 'BERTH-UNIT',
    hostPorts: [{ protocol: 'tcp', hostPort: 8080, containerPort: 80, hostIp: '' }],
    pod: 'default/web',
  };
  await net.load([{ podId, state }]);
  const table = (net as unknown as { hostPorts: HostPortTable }).hostPorts;
  t.deepEqual(table.holders(), [podId]);
  const req = { podId, name: 'web', namespace: 'default', uid: 'u', netnsPath: '', portMappings: [], annotations: {} };
  await t.throwsAsync(net.teardown(req, state), { message: /stand-in fails/ });
  t.deepEqual(table.holders(), []);
  await net.close();
  t.deepEqual(JSON.parse(await fs.readFile(path.join(dir, 'ipam.json'), 'utf8')).allocations, {});
});
