import test from 'ava';
import { setTimeout as sleep } from 'node:timers/promises';
import { logger, setLogLevel } from '../../src/log.js';
import { IdleCompactor } from '../../src/memory.js';

setLogLevel('error');

function compactor(quietMs: number, withGc = true) {
  const calls: string[] = [];
  const c = new IdleCompactor({
    quietMs,
    gc: withGc ? () => calls.push('gc') : undefined,
    trim: () => calls.push('trim'),
    log: logger(),
  });
  return { c, calls };
}

test('a burst of work RPCs is followed by one collection and trim once it has been quiet', async (t) => {
  const { c, calls } = compactor(60);
  for (const rpc of ['RunPodSandbox', 'CreateContainer', 'StartContainer']) {
    c.observe(rpc);
    await sleep(20);
  }
  t.deepEqual(calls, [], 'nothing while the burst goes on');
  await sleep(150);
  t.deepEqual(calls, ['gc', 'trim']);
  c.observe('PullImage');
  await sleep(150);
  t.deepEqual(calls, ['gc', 'trim', 'gc', 'trim'], 'the next burst gets its own');
  c.close();
});

test('polls alone never trigger a collection, and do not postpone one', async (t) => {
  const { c, calls } = compactor(60);
  c.observe('StopContainer');
  for (let i = 0; i < 8; i++) {
    c.observe('ListPodSandbox');
    c.observe('ContainerStatus');
    await sleep(15);
  }
  t.deepEqual(calls, ['gc', 'trim']);
  for (const rpc of ['ListContainers', 'PodSandboxStatus', 'ImageFsInfo', 'Version', 'Status']) c.observe(rpc);
  await sleep(150);
  t.deepEqual(calls, ['gc', 'trim']);
  c.close();
});

test('exec probes alone never trigger a collection: kubelet sends them periodically', async (t) => {
  const { c, calls } = compactor(30);
  for (let i = 0; i < 3; i++) {
    c.observe('ExecSync');
    await sleep(50);
  }
  await sleep(100);
  t.deepEqual(calls, []);
  c.close();
});

test('without an exposed collector nothing is scheduled; close cancels a pending one', async (t) => {
  const none = compactor(10, false);
  none.c.observe('RunPodSandbox');
  await sleep(50);
  t.deepEqual(none.calls, []);
  const pending = compactor(30);
  pending.c.observe('RunPodSandbox');
  pending.c.close();
  await sleep(80);
  t.deepEqual(pending.calls, []);
});
