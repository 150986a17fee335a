import test from 'ava';
import { NetworkManager } from '../../src/network/index.js';
import type { CniNetwork } from '../../src/network/cni/network.js';
import type { EmbeddedNetwork } from '../../src/network/embedded.js';
import type { PodNetworkRequest } from '../../src/network/types.js';
import { recordingLog } from './fakes/sandbox.js';

// Which backend a pod's network goes to and comes back from, with recording stand-ins for both backends.

const req: PodNetworkRequest = { podId: 'a'.repeat(64), name: 'p', namespace: 'default', uid: 'u', netnsPath: '/run/x/net', portMappings: [], annotations: {} };

function manager(mode: 'cni' | 'auto') {
  const calls: string[] = [];
  const cni = {
    refresh: async () => undefined,
    hasConfig: () => true,
    teardown: async () => void calls.push('cni teardown'),
  } as unknown as CniNetwork;
  const embedded = { teardown: async () => void calls.push('embedded teardown') } as unknown as EmbeddedNetwork;
  return { mgr: new NetworkManager(mode, embedded, cni, recordingLog([])), calls };
}

for (const mode of ['cni', 'auto'] as const) {
  test(`${mode}: a CNI plan's state alone (what a crash during the ADD leaves in the pod's note) tears down through CNI`, async (t) => {
    const { mgr, calls } = manager(mode);
    const plan = await mgr.prepare(req);
    t.is(plan.backend, 'cni');
    await mgr.teardown(req, JSON.parse(JSON.stringify(plan.state)));
    t.deepEqual(calls, ['cni teardown']);
  });
}

test('a CNI setup that failed (and DELeted the list itself) leaves nothing for the plan\'s teardown to DEL again', async (t) => {
  const { mgr, calls } = manager('cni');
  const cni = (mgr as unknown as { cni: { setup: () => Promise<never> } }).cni;
  cni.setup = async () => {
    throw new Error('plugin says no');
  };
  const plan = await mgr.prepare(req);
  const noted = JSON.parse(JSON.stringify(plan.state));
  await t.throwsAsync(mgr.setup(req, plan), { message: 'plugin says no' });
  await mgr.teardown(req, plan.state);
  t.deepEqual(calls, [], 'the undo of the pod start does not DEL a second time');
  await mgr.teardown(req, noted);
  t.deepEqual(calls, ['cni teardown'], 'the plan as noted before the ADD (what a crash leaves) still tears down');
});
