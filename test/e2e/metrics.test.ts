import test, { ExecutionContext } from 'ava';
import http from 'node:http';
import path from 'node:path';
import { startRegistry, Registry } from '../helpers/registry.js';
import { busyboxLayer, pushImage, PushedImage } from '../helpers/images.js';
import { startBerth, BerthProcess } from '../helpers/berth.js';
import { cleanUpAndCheck, containerConfig, podConfig } from '../helpers/cri.js';
import { promtoolCheckMetrics } from '../helpers/promtool.js';
import { waitFor } from '../helpers/util.js';
import type { ContainerConfig } from '../../src/gen/runtime/v1/ContainerConfig.js';

// /metrics against real containers: what a container uses against its limits, read from its cgroups when
// Prometheus scrapes, agrees with the stats RPCs, and an OOM kill is counted.

let registry: Registry;
let image: PushedImage;

test.before(async () => {
  registry = await startRegistry();
  image = await pushImage(registry, 'berth/metricsbox', 'v1', { layers: [await busyboxLayer()], config: { Cmd: ['sh'] } });
});
test.after.always(async () => {
  await registry?.stop();
});

const MiB = 1024 * 1024;
const SLEEPER = "trap 'exit 0' TERM; while :; do sleep 1 & wait; done";

interface Env {
  berth: BerthProcess;
  pod(): Promise<string>;
  run(podId: string, script: string, overrides?: Partial<ContainerConfig>): Promise<string>;
  scrape(): Promise<Sample[]>;
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

async function env(t: ExecutionContext): Promise<Env> {
  const berth = await startBerth({ config: `[registry]\ninsecure = ["${registry.host}"]\n` });
  const address = String((await berth.waitForLog((e) => e.msg === 'berth serving')).metrics);
  const logDir = path.join(berth.dir, 'logs');
  const cgroups: string[] = [];
  cleanUpAndCheck(t, berth, cgroups);
  await berth.images.PullImage({ image: { image: image.ref } });
  return {
    berth,
    async pod() {
      const { pod_sandbox_id } = await berth.runtime.RunPodSandbox({ config: podConfig({ log_directory: logDir }) });
      const status = await berth.runtime.PodSandboxStatus({ pod_sandbox_id, verbose: true });
      cgroups.push(JSON.parse(status.info.info).cgroup.path);
      return pod_sandbox_id;
    },
    async run(podId, script, overrides = {}) {
      const { container_id } = await berth.runtime.CreateContainer({
        pod_sandbox_id: podId,
        config: containerConfig(image.ref, { command: ['/bin/sh', '-c', script], log_path: `${Math.random().toString(36).slice(2)}.log`, ...overrides }),
        sandbox_config: podConfig({ log_directory: logDir }),
      });
      await berth.runtime.StartContainer({ container_id });
      return container_id;
    },
    async scrape() {
      const text = await get(`http://${address}/metrics`);
      // Prometheus's own parser and linter first: only a valid exposition is read for values.
      const check = await promtoolCheckMetrics(text);
      if (check.code !== 0) throw new Error(`promtool check metrics failed:\n${check.output}`);
      return parseSamples(text);
    },
  };
}

function get(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (body += c));
        res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`GET ${url}: ${res.statusCode} ${body}`))));
      })
      .on('error', reject);
  });
}

/** Samples of a text exposition that promtool has accepted: `name{k="v",...} value`. */
function parseSamples(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const brace = line.indexOf('{');
    const space = line.lastIndexOf(' ');
    const name = brace >= 0 && brace < space ? line.slice(0, brace) : line.slice(0, space);
    const labels: Record<string, string> = {};
    if (brace >= 0 && brace < space) {
      for (const m of line.slice(brace + 1, line.lastIndexOf('}')).matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[m[1]!] = m[2]!;
    }
    samples.push({ name, labels, value: Number(line.slice(space + 1)) });
  }
  return samples;
}

function sampleOf(samples: Sample[], name: string, containerId: string): number | undefined {
  return samples.find((s) => s.name === name && s.labels.container_id === containerId)?.value;
}

test('/metrics: 40 MiB a memory-limited container holds show as its working set, its limit and the ratio between them', async (t) => {
  const e = await env(t);
  const pod = await e.pod();
  const limit = 128 * MiB;
  const id = await e.run(pod, `dd if=/dev/zero of=/dev/shm/fill bs=1M count=40 2>/dev/null; ${SLEEPER}`, { linux: { resources: { memory_limit_in_bytes: String(limit) } } });
  const stats = await waitFor('the 40 MiB to be charged', async () => {
    const s = (await e.berth.runtime.ContainerStats({ container_id: id })).stats!;
    return Number(s.memory?.working_set_bytes?.value) >= 40 * MiB && s;
  });
  const samples = await e.scrape();
  const workingSet = sampleOf(samples, 'container_memory_working_set_bytes', id)!;
  t.true(Math.abs(workingSet - Number(stats.memory!.working_set_bytes!.value)) <= 0.1 * 40 * MiB, `working set ${workingSet} vs ContainerStats ${stats.memory!.working_set_bytes!.value}`);
  t.true(workingSet >= 40 * MiB && workingSet <= 44 * MiB, `working set ${workingSet}`);
  t.is(sampleOf(samples, 'container_memory_limit_bytes', id), limit);
  const ratio = sampleOf(samples, 'container_memory_usage_to_limit_ratio', id)!;
  t.true(Math.abs(ratio - workingSet / limit) < 0.01, `ratio ${ratio} against ${workingSet / limit}`);
  const labels = samples.find((s) => s.name === 'container_memory_working_set_bytes' && s.labels.container_id === id)!.labels;
  t.is(labels.namespace, 'default');
  t.truthy(labels.container);
  t.truthy(labels.pod);
  t.true(samples.some((s) => s.name === 'pod_memory_working_set_bytes' && s.labels.pod_id === pod && s.value >= 40 * MiB), 'the pod series has it too');
});

test('/metrics: a container without a memory limit has no limit or ratio series', async (t) => {
  const e = await env(t);
  const id = await e.run(await e.pod(), SLEEPER);
  const samples = await waitFor('its series', async () => {
    const s = await e.scrape();
    return sampleOf(s, 'container_memory_working_set_bytes', id) !== undefined && s;
  });
  t.is(sampleOf(samples, 'container_memory_limit_bytes', id), undefined);
  t.is(sampleOf(samples, 'container_memory_usage_to_limit_ratio', id), undefined);
});

test('/metrics: an OOM kill in a container raises its OOM counter', async (t) => {
  const e = await env(t);
  const pod = await e.pod();
  // 64 MiB into the pod's /dev/shm (tmpfs, charged to the writer, not reclaimable without swap) under a 32 MiB
  // limit: the kernel's OOM killer ends dd, and the container goes on.
  const id = await e.run(pod, `while [ ! -e /tmp/go ]; do sleep 0.1; done; dd if=/dev/zero of=/dev/shm/fill bs=1M count=64 2>/dev/null; rm -f /dev/shm/fill; ${SLEEPER}`, {
    linux: { resources: { memory_limit_in_bytes: String(32 * MiB) } },
  });
  const { before } = await waitFor('its series', async () => {
    const v = sampleOf(await e.scrape(), 'container_oom_events_total', id);
    return v !== undefined && { before: v };
  });
  t.is(before, 0);
  await e.berth.runtime.ExecSync({ container_id: id, cmd: ['touch', '/tmp/go'], timeout: 10 });
  const after = await waitFor('the OOM kill to be counted', async () => {
    const v = sampleOf(await e.scrape(), 'container_oom_events_total', id);
    return v !== undefined && v > before && v;
  }, { timeoutMs: 30000 });
  t.true(after >= 1);
  t.is((await e.berth.runtime.ContainerStatus({ container_id: id })).status?.state, 'CONTAINER_RUNNING', 'only dd was killed');
});
