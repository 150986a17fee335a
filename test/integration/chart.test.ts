import test from 'ava';
import { promises as fs } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { CONFIG_SCHEMA, ConfigError, fieldOf, validateConfig } from '../../src/config/schema.js';
import { parse as parseToml } from 'smol-toml';
import { BerthMetrics } from '../../src/metrics/berth.js';
import { CHART, documents, helm, K8sObject } from '../helpers/chart.js';

// The Helm chart rendered by the real helm (3.17): lint, every document parsed and checked, berth's config in the
// ConfigMap read by berth's own loader, and values.schema.json refusing bad values. No cluster is contacted.

const KINDS = ['ServiceAccount', 'ConfigMap', 'DaemonSet', 'ClusterRole', 'ClusterRoleBinding', 'Role', 'RoleBinding', 'Job', 'Service', 'ServiceMonitor'];
const HOST_PATHS = ['/opt', '/usr/local/bin', '/etc', '/var/lib/berth-installer'];

let tmp: string;
test.before(async () => {
  tmp = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-chart-'));
});
test.after.always(async () => {
  await fs.rm(tmp, { recursive: true, force: true });
});

async function valuesFile(name: string, values: unknown): Promise<string> {
  const file = path.join(tmp, `${name}.yaml`);
  // YAML 1.1 as helm reads it: a bare off or yes would be a boolean there.
  await fs.writeFile(file, stringify(values, { version: '1.1' }));
  return file;
}

async function render(...args: string[]): Promise<K8sObject[]> {
  const r = await helm('template', 'rel', CHART, '--namespace', 'kube-system', ...args);
  if (r.code !== 0) throw new Error(`helm template failed: ${r.stderr}`);
  const docs = documents(r.stdout);
  for (const d of docs) if (!KINDS.includes(d.kind)) throw new Error(`unexpected kind ${d.kind} (${d.metadata.name})`);
  return docs;
}

const isHook = (d: K8sObject) => d.metadata.annotations?.['helm.sh/hook'] !== undefined;
const one = (docs: K8sObject[], kind: string, pred: (d: K8sObject) => boolean = () => true) => {
  const found = docs.filter((d) => d.kind === kind && pred(d));
  if (found.length !== 1) throw new Error(`${found.length} ${kind} documents, expected 1`);
  return found[0];
};
const installer = (docs: K8sObject[]) => one(docs, 'DaemonSet', (d) => !isHook(d));

/** berth's loader on the ConfigMap's config.toml, as berth on a node would read it. */
async function configOf(docs: K8sObject[], name: string) {
  const cm = one(docs, 'ConfigMap', (d) => d.metadata.name.endsWith('-config'));
  const file = path.join(tmp, `${name}.toml`);
  await fs.writeFile(file, cm.data['config.toml']);
  return { text: cm.data['config.toml'] as string, config: await loadConfig(file, true) };
}

// A PEM marker is all berth's loader checks a CA or key file for.
async function pem(name: string, what: string): Promise<string> {
  const file = path.join(tmp, name);
  await fs.writeFile(file, `-----BEGIN ${what}-----\nMIIB\n-----END ${what}-----\n`);
  return file;
}

/**
 * A whole disk of this host: the loader resolves a [blockio] class's devices to major:minor, refusing a path that is
 * not a whole-disk block device (loop devices count, so every Linux test host has one).
 */
async function wholeDisk(): Promise<string> {
  for (const name of (await fs.readdir('/sys/block')).sort()) {
    const partition = await fs.access(`/sys/block/${name}/partition`).then(() => true, () => false);
    const st = await fs.stat(`/dev/${name}`).catch(() => undefined);
    if (!partition && st?.isBlockDevice()) return `/dev/${name}`;
  }
  throw new Error('no whole-disk block device in /sys/block with a node in /dev');
}

/** Every key of berth's config set to a value other than its default ([metrics] is the chart's own, see allOn). */
async function everyConfigKey() {
  return {
    log: { level: 'debug' },
    registry: {
      insecure: ['registry.lan:5000', '10.0.0.5'],
      loopback_plain_http: false,
      mirrors: { 'docker.io': ['http://127.0.0.1:5000', 'mirror.example:443'] },
      ca_files: [await pem('corp.pem', 'CERTIFICATE')],
      hosts: { 'registry.corp.example:5443': { ca_file: await pem('reg.pem', 'CERTIFICATE') } },
      max_concurrent_downloads: 8,
      request_timeout_seconds: 120,
    },
    runtime: {
      rlimits: { nofile: [4096, 16384], core: [0, 0] },
      shm_size_bytes: 1099511627776,
      log_max_line_bytes: 32768,
      writable_layer_interval_seconds: 30,
      apparmor_profile: 'cri-default',
      lxcfs: 'off',
      lxcfs_dir: '/run/lxcfs',
      writable_layer_max_bytes: 1073741824,
      pids_limit: 512,
    },
    // No weight here: it needs BFQ or iocost on the device, which a test host's disk may lack (see the blockio test).
    blockio: { classes: { gold: { devices: [{ path: await wholeDisk(), read_bps: '10Mi', write_bps: 5242880, read_iops: 1000, write_iops: '2k' }] } } },
    network: { mode: 'embedded', subnet: '10.200.0.0/24', bridge: 'cni-br0' },
    cni: { conf_dir: '/etc/cni/other', bin_dirs: ['/opt/cni/bin'] },
    cdi: { spec_dirs: ['/etc/cdi'] },
    streaming: {
      address: '0.0.0.0:10010',
      tls_cert_file: await pem('tls.crt', 'CERTIFICATE'),
      tls_key_file: await pem('tls.key', 'PRIVATE KEY'),
      stream_idle_timeout_seconds: 3600,
      stream_creation_timeout_seconds: 60,
    },
  };
}

async function allOn() {
  return valuesFile('all-on', {
    image: { repository: 'registry.example/berth-installer', tag: '0.1.0-rc1', pullPolicy: 'Always' },
    imagePullSecrets: [{ name: 'regcred' }],
    priorityClassName: 'berth-critical',
    kubeletSwitch: { enabled: true, previousRuntimeEndpoint: 'unix:///run/containerd/containerd.sock', drainTimeoutSeconds: 120 },
    metrics: { enabled: true, port: 9400, serviceMonitor: { enabled: true, interval: '15s', labels: { release: 'prom' } }, dashboard: { enabled: true } },
    config: await everyConfigKey(),
  });
}

test('helm lint --strict passes with the default values and with every option on', async (t) => {
  const defaults = await helm('lint', '--strict', CHART);
  t.is(defaults.code, 0, defaults.stdout + defaults.stderr);
  const on = await helm('lint', '--strict', CHART, '-f', await allOn());
  t.is(on.code, 0, on.stdout + on.stderr);
});

test('defaults: one privileged hostPID installer DaemonSet on every node, one node at a time, with only its host paths', async (t) => {
  const docs = await render();
  const ds = installer(docs);
  const pod = ds.spec.template.spec;
  const [container] = pod.containers;
  t.is(pod.containers.length, 1);
  t.true(container.securityContext.privileged);
  t.true(pod.hostPID);
  t.falsy(pod.hostNetwork, 'no host network without metrics');
  t.deepEqual(pod.tolerations, [{ operator: 'Exists' }], 'every taint tolerated');
  t.deepEqual(pod.nodeSelector, { 'kubernetes.io/os': 'linux' });
  t.deepEqual(ds.spec.updateStrategy, { type: 'RollingUpdate', rollingUpdate: { maxUnavailable: 1 } });
  t.is(pod.priorityClassName, 'system-node-critical');
  t.is(container.image, 'ghcr.io/berth-runtime/berth-installer:0.1.0', 'tag defaults to appVersion');
  t.deepEqual(container.args, ['install']);
  t.deepEqual(container.readinessProbe.exec.command, ['test', '-f', '/tmp/berth-ready']);
  t.deepEqual(Object.keys(container.resources).sort(), ['limits', 'requests']);

  const hostVolumes = pod.volumes.filter((v: K8sObject) => v.hostPath);
  t.deepEqual(hostVolumes.map((v: K8sObject) => v.hostPath.path).sort(), [...HOST_PATHS].sort());
  for (const v of hostVolumes) {
    const mount = container.volumeMounts.find((m: K8sObject) => m.name === v.name);
    t.is(mount.mountPath, `/host${v.hostPath.path}`, v.name);
  }
  t.false(hostVolumes.some((v: K8sObject) => ['/', '/run', '/run/berth', '/var/lib/berth', '/var/lib/kubelet'].includes(v.hostPath.path)));
  const configMount = container.volumeMounts.find((m: K8sObject) => m.mountPath === '/etc/berth-chart');
  t.true(configMount.readOnly);
  const env = Object.fromEntries(container.env.map((e: K8sObject) => [e.name, e.value ?? e.valueFrom.fieldRef.fieldPath]));
  t.is(env.NODE_NAME, 'spec.nodeName');
  t.is(env.NODE_IP, 'status.hostIP');
  t.is(env.BERTH_KUBELET_SWITCH, 'false');
  t.is(env.BERTH_METRICS_ON_NODE_IP, 'false');

  // Off by default: no API token, no node RBAC, no metrics objects.
  t.is(one(docs, 'ServiceAccount', (d) => !isHook(d)).automountServiceAccountToken, false);
  t.false(pod.automountServiceAccountToken);
  t.deepEqual(docs.filter((d) => !isHook(d) && ['ClusterRole', 'ClusterRoleBinding', 'Service', 'ServiceMonitor'].includes(d.kind)), []);
  t.false(docs.some((d) => d.metadata.labels?.grafana_dashboard === '1'));
});

test("defaults: the ConfigMap's TOML is accepted by berth's loader", async (t) => {
  const { config } = await configOf(await render(), 'defaults');
  t.is(config.network.mode, 'cni');
  t.is(config.metrics.address, '127.0.0.1:9325', "berth's default: loopback");
});

test("every option on: berth's loader reads back every config key the values set", async (t) => {
  const values = await everyConfigKey();
  const docs = await render('-f', await allOn());
  const { text, config } = await configOf(docs, 'all-on');
  const sections = config as unknown as Record<string, Record<string, unknown>>;
  // A key added to berth's config must be added here (and so to the chart's schema, values and README) too.
  const setHere = Object.entries(values).flatMap(([section, keys]) => Object.keys(keys).map((k) => `${section}.${k}`));
  const berthKeys = CONFIG_SCHEMA.filter((s) => s.name !== 'metrics').flatMap((s) => s.keys.map((k) => `${s.name}.${k.key}`));
  t.deepEqual(setHere.sort(), berthKeys.sort());
  const quantities: Record<string, number> = { '10Mi': 10 * 1024 * 1024, '2k': 2000 };
  const wantOf = (key: string, value: unknown) => {
    if (key === 'hosts') return { 'registry.corp.example:5443': { caFile: values.registry.hosts['registry.corp.example:5443'].ca_file } };
    if (key !== 'classes') return value;
    const [device] = values.blockio.classes.gold.devices;
    const n = (v: string | number) => (typeof v === 'string' ? quantities[v] : v);
    return { gold: { devices: [{ path: device.path, readBps: n(device.read_bps), writeBps: n(device.write_bps), readIops: n(device.read_iops), writeIops: n(device.write_iops) }] } };
  };
  for (const [section, keys] of Object.entries(values)) {
    for (const [key, value] of Object.entries(keys)) t.deepEqual(sections[section][fieldOf(key)], wantOf(key, value), `${section}.${key}`);
  }
  t.is(config.metrics.address, '127.0.0.1:9400', 'the placeholder the installer replaces with the node address');
  t.regex(text, /\[metrics\]\naddress = "127\.0\.0\.1:9400"\n$/, '[metrics] last, its address alone on its line');
  t.true(text.includes('shm_size_bytes = 1099511627776'), 'integers stay integers');
});

test('every option on: metrics Service, ServiceMonitor, dashboard, kubelet-switch RBAC, host network', async (t) => {
  const docs = await render('-f', await allOn());
  const ds = installer(docs);
  const pod = ds.spec.template.spec;
  const [container] = pod.containers;
  t.true(pod.hostNetwork);
  t.is(pod.dnsPolicy, 'ClusterFirstWithHostNet');
  t.is(container.image, 'registry.example/berth-installer:0.1.0-rc1');
  t.is(container.imagePullPolicy, 'Always');
  t.deepEqual(pod.imagePullSecrets, [{ name: 'regcred' }]);
  t.is(pod.priorityClassName, 'berth-critical');
  t.true(pod.automountServiceAccountToken);
  const env = Object.fromEntries(container.env.map((e: K8sObject) => [e.name, e.value ?? e.valueFrom.fieldRef.fieldPath]));
  t.is(env.BERTH_METRICS_ON_NODE_IP, 'true');
  t.is(env.BERTH_KUBELET_SWITCH, 'true');
  t.is(env.BERTH_PREVIOUS_RUNTIME_ENDPOINT, 'unix:///run/containerd/containerd.sock');
  t.is(env.BERTH_DRAIN_TIMEOUT_SECONDS, '120');

  const svc = one(docs, 'Service');
  t.deepEqual(svc.spec.selector, ds.spec.selector.matchLabels, 'the Service selects the installer pods');
  t.deepEqual(svc.spec.ports, [{ name: 'metrics', port: 9400, targetPort: 9400, protocol: 'TCP' }]);
  const sm = one(docs, 'ServiceMonitor');
  t.is(sm.apiVersion, 'monitoring.coreos.com/v1');
  t.is(sm.metadata.labels!.release, 'prom');
  for (const [k, v] of Object.entries(sm.spec.selector.matchLabels as Record<string, string>)) t.is(svc.metadata.labels![k], v, `ServiceMonitor selects the Service (${k})`);
  t.deepEqual(sm.spec.endpoints.map((e: K8sObject) => [e.port, e.path, e.interval]), [['metrics', '/metrics', '15s']]);

  const role = one(docs, 'ClusterRole', (d) => !isHook(d));
  const allows = (r: K8sObject, resource: string, verb: string) => r.rules.some((rule: K8sObject) => rule.resources.includes(resource) && rule.verbs.includes(verb));
  t.true(allows(role, 'nodes', 'patch'), 'cordon/uncordon');
  t.true(allows(role, 'pods/eviction', 'create'), 'drain');
  t.false(allows(role, 'nodes', 'delete'));
  const binding = one(docs, 'ClusterRoleBinding', (d) => !isHook(d));
  t.is(binding.roleRef.name, role.metadata.name);
  t.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: pod.serviceAccountName, namespace: 'kube-system' }]);
});

/** Series names /metrics serves, from berth's own scrape text: each family's name, a histogram's three series. */
async function servedSeries(): Promise<Set<string>> {
  const metrics = new BerthMetrics({ usage: () => undefined, counts: () => ({ pods: {}, containers: {} }), onUsageError: () => undefined });
  const text = await metrics.scrape();
  const names = new Set<string>();
  for (const [, name, type] of text.matchAll(/^# TYPE (\S+) (\S+)$/gm)) {
    if (type === 'histogram') for (const suffix of ['_bucket', '_sum', '_count']) names.add(name + suffix);
    else names.add(name);
  }
  return names;
}

test('the Grafana dashboard is labelled for the sidecar and queries only metrics berth serves', async (t) => {
  const docs = await render('--set', 'metrics.dashboard.enabled=true');
  const cm = one(docs, 'ConfigMap', (d) => d.metadata.labels?.grafana_dashboard === '1');
  const dashboard = JSON.parse(cm.data['berth.json']);
  const exprs: string[] = dashboard.panels.flatMap((p: K8sObject) => (p.targets ?? []).map((x: K8sObject) => x.expr));
  const variables: string[] = dashboard.templating.list.filter((v: K8sObject) => v.type === 'query').map((v: K8sObject) => v.query.query);
  // A metric in PromQL is a name before a selector's brace; label_values() names one as its first argument.
  const used = new Set([
    ...exprs.flatMap((e) => [...e.matchAll(/\b([a-zA-Z_:][a-zA-Z0-9_:]*)\{/g)].map((m) => m[1])),
    ...variables.flatMap((q) => [...q.matchAll(/label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)/g)].map((m) => m[1])),
  ]);
  t.true(used.size >= 10, [...used].join(' '));
  // The scrape text berth's /metrics serves (with no pods: every family's header, no series).
  const served = await servedSeries();
  for (const name of used) t.true(served.has(name), `${name} is one of berth's metrics`);
  for (const needed of ['container_memory_usage_to_limit_ratio', 'container_cpu_usage_to_limit_ratio', 'container_memory_limit_bytes', 'pod_memory_usage_to_limit_ratio', 'berth_pod_start_seconds_bucket', 'berth_rpc_errors_total']) {
    t.true(used.has(needed), `a panel shows ${needed}`);
  }
});

test('the pre-delete hook: RBAC, the installer DaemonSet retired, then a cleanup DaemonSet, then a Job waiting for it; removed once it succeeds', async (t) => {
  const docs = await render();
  const hooks = docs.filter(isHook);
  t.deepEqual(hooks.map((h) => h.kind).sort(), ['ClusterRole', 'ClusterRoleBinding', 'DaemonSet', 'Job', 'Job', 'Role', 'RoleBinding', 'ServiceAccount']);
  for (const h of hooks) {
    t.is(h.metadata.annotations!['helm.sh/hook'], 'pre-delete', h.kind);
    t.deepEqual(h.metadata.annotations!['helm.sh/hook-delete-policy'].split(',').sort(), ['before-hook-creation', 'hook-succeeded'], h.kind);
  }
  const weightOf = (d: K8sObject) => Number(d.metadata.annotations!['helm.sh/hook-weight']);
  const weight = (kind: string) => weightOf(one(hooks, kind));
  const jobs = hooks.filter((h) => h.kind === 'Job');
  const retire = jobs.find((j) => j.spec.template.spec.containers[0].args[0] === 'retire')!;
  const wait = jobs.find((j) => j.spec.template.spec.containers[0].args[0] === 'wait-cleanup')!;
  t.truthy(retire);
  t.truthy(wait);
  for (const rbac of ['ServiceAccount', 'ClusterRole', 'ClusterRoleBinding', 'Role', 'RoleBinding']) t.true(weight(rbac) < weightOf(retire), rbac);
  // helm runs a weight's Job to completion before the next weight: no installer pod is left when the cleanup starts.
  t.true(weightOf(retire) < weight('DaemonSet'), 'the installer DaemonSet is gone before the cleanup DaemonSet is made');
  t.true(weight('DaemonSet') < weightOf(wait), 'helm creates the DaemonSet, then the Job it waits for');

  const cleanup = one(hooks, 'DaemonSet');
  const pod = cleanup.spec.template.spec;
  const [container] = pod.containers;
  t.deepEqual(container.args, ['uninstall']);
  t.true(container.securityContext.privileged);
  t.true(pod.hostPID);
  t.deepEqual(pod.tolerations, [{ operator: 'Exists' }]);
  t.deepEqual(container.readinessProbe.exec.command, ['test', '-f', '/tmp/berth-cleaned'], 'ready means clean');
  t.deepEqual(pod.volumes.filter((v: K8sObject) => v.hostPath).map((v: K8sObject) => v.hostPath.path).sort(), [...HOST_PATHS].sort());
  t.notDeepEqual(cleanup.spec.selector.matchLabels, installer(docs).spec.selector.matchLabels, 'the two DaemonSets do not select each other');
  t.is(pod.serviceAccountName, one(hooks, 'ServiceAccount').metadata.name);

  // The retire step may delete the installer DaemonSet of this release and nothing else.
  t.deepEqual(retire.spec.template.spec.containers[0].args, ['retire', installer(docs).metadata.name, '900']);
  const role = one(hooks, 'Role');
  t.is(role.metadata.namespace, installer(docs).metadata.namespace);
  t.deepEqual(role.rules, [{ apiGroups: ['apps'], resources: ['daemonsets'], resourceNames: [installer(docs).metadata.name], verbs: ['get', 'list', 'watch', 'delete'] }]);
  const binding = one(hooks, 'RoleBinding');
  t.deepEqual(binding.roleRef, { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: role.metadata.name });
  t.deepEqual(binding.subjects, [{ kind: 'ServiceAccount', name: one(hooks, 'ServiceAccount').metadata.name, namespace: role.metadata.namespace }]);
  t.false(one(hooks, 'ClusterRole').rules.some((r: K8sObject) => r.verbs.includes('delete') && r.resources.includes('daemonsets')), 'no cluster-wide DaemonSet delete');

  t.deepEqual(wait.spec.template.spec.containers[0].args, ['wait-cleanup', cleanup.metadata.name, '900']);
  for (const job of [retire, wait]) {
    t.is(job.spec.activeDeadlineSeconds, 900);
    t.is(job.spec.template.spec.restartPolicy, 'Never');
    t.is(job.spec.template.spec.serviceAccountName, one(hooks, 'ServiceAccount').metadata.name);
    // A drain of its node (the switch back drains) evicts the pod: that is not a failure of the step.
    t.deepEqual(job.spec.podFailurePolicy, { rules: [{ action: 'Ignore', onPodConditions: [{ type: 'DisruptionTarget' }] }] });
    t.false(job.spec.template.spec.containers[0].securityContext.allowPrivilegeEscalation);
  }

  const off = await render('--set', 'cleanup.enabled=false');
  t.deepEqual(off.filter(isHook), []);
});

test('values.schema.json types every key of berth config, and nothing berth lacks', async (t) => {
  const schema = JSON.parse(await fs.readFile(path.join(CHART, 'values.schema.json'), 'utf8'));
  const config = schema.properties.config;
  t.false(config.additionalProperties);
  t.deepEqual(Object.keys(config.properties).sort(), CONFIG_SCHEMA.map((s) => s.name).sort());
  for (const section of CONFIG_SCHEMA) {
    const s = config.properties[section.name];
    t.false(s.additionalProperties, section.name);
    t.deepEqual(Object.keys(s.properties).sort(), section.keys.map((k) => k.key).sort(), section.name);
  }
});

test("the chart README's table has a row for every value of values.yaml", async (t) => {
  const values = parse(await fs.readFile(path.join(CHART, 'values.yaml'), 'utf8')) as Record<string, unknown>;
  const readme = await fs.readFile(path.join(CHART, 'README.md'), 'utf8');
  const leaves = (o: Record<string, unknown>, prefix: string): string[] =>
    Object.entries(o).flatMap(([k, v]) =>
      // config and the free-form maps are documented as one row each.
      v && typeof v === 'object' && !Array.isArray(v) && !['config', 'nodeSelector', 'resources', 'labels'].includes(k) ? leaves(v as Record<string, unknown>, `${prefix}${k}.`) : [`${prefix}${k}`],
    );
  for (const key of leaves(values, '')) t.true(readme.includes(`| \`${key}\` |`), key);
});

const REFUSED: [string[], RegExp][] = [
  [['--set', 'config.network.mode=bridge'], /config\.network\.mode.*must be one of/],
  [['--set', 'config.registry.max_concurrent_downloads=0'], /config\.registry\.max_concurrent_downloads/],
  [['--set', 'config.registry.max_concurrent_downloads=2.5'], /config\.registry\.max_concurrent_downloads.*integer/],
  [['--set', 'config.nosuch.key=1'], /config.*nosuch/],
  [['--set', 'config.network.colour=red'], /config\.network.*colour/],
  [['--set', 'config.network.subnet=10.0.0.0/33'], /config\.network\.subnet/],
  [['--set', 'config.cni.conf_dir=etc/cni'], /config\.cni\.conf_dir/],
  [['--set-json', 'config.runtime.rlimits={"files":[1,2]}'], /config\.runtime\.rlimits/],
  [['--set-json', 'config.runtime.rlimits={"nofile":[1]}'], /config\.runtime\.rlimits\.nofile/],
  [['--set', 'config.runtime.apparmor_profile=unconfined'], /config\.runtime\.apparmor_profile/],
  [['--set', 'config.registry.insecure[0]=http://r:5000'], /config\.registry\.insecure\.0/],
  [['--set', 'config.runtime.writable_layer_max_bytes=4096'], /config\.runtime\.writable_layer_max_bytes/],
  [['--set', 'config.runtime.pids_limit=5000000'], /config\.runtime\.pids_limit/],
  [['--set', 'config.blockio.classes.gold.devices[0].path=/dev/sda'], /config\.blockio\.classes\.gold\.devices\.0/],
  [['--set', 'config.blockio.classes.gold.devices[0].path=sda', '--set', 'config.blockio.classes.gold.devices[0].weight=10'], /config\.blockio\.classes\.gold\.devices\.0\.path/],
  [['--set', 'config.blockio.classes.gold.devices[0].path=/dev/sda', '--set', 'config.blockio.classes.gold.devices[0].read_bps=1.5Mi'], /config\.blockio\.classes\.gold\.devices\.0\.read_bps/],
  [['--set', 'config.blockio.classes.gold.devices[0].path=/dev/sda', '--set', 'config.blockio.classes.gold.devices[0].weight=1001'], /config\.blockio\.classes\.gold\.devices\.0\.weight/],
  [['--set', 'config.blockio.classes.gold.devices[0].path=/dev/sda', '--set', 'config.blockio.classes.gold.devices[0].iops=5'], /config\.blockio\.classes\.gold\.devices\.0.*iops/],
  [['--set-json', 'config.blockio.classes={"a/b":{"devices":[{"path":"/dev/sda","weight":10}]}}'], /config\.blockio\.classes.*a\/b/],
  [['--set-json', 'config.blockio.classes={"gold":{"devices":[]}}'], /config\.blockio\.classes\.gold\.devices/],
  [['--set', 'image.pullPolicy=Sometimes'], /image\.pullPolicy/],
  [['--set', 'kubeletSwitch.enabled=yes'], /kubeletSwitch\.enabled.*boolean/],
  [['--set', 'kubeletSwitch.previousRuntimeEndpoint=/run/containerd.sock'], /kubeletSwitch\.previousRuntimeEndpoint/],
  [['--set', 'metrics.port=70000'], /metrics\.port/],
  [['--set', 'tolerations[0].operator=Maybe'], /tolerations\.0\.operator/],
  [['--set', 'cleanup.timeoutSeconds=5'], /cleanup\.timeoutSeconds/],
  [['--set', 'surprise=1'], /surprise/],
  [['--set', 'metrics.serviceMonitor.enabled=true'], /metrics\.serviceMonitor\.enabled needs metrics\.enabled/],
  [['--set', 'metrics.enabled=true', '--set', 'config.metrics.address=0.0.0.0:9325'], /config\.metrics\.address and metrics\.enabled exclude each other/],
];

for (const [args, message] of REFUSED) {
  test(`bad values fail helm template with a message: ${args.join(' ')}`, async (t) => {
    const r = await helm('template', 'rel', CHART, ...args);
    t.not(r.code, 0);
    t.regex(r.stderr, message);
  });
}

test('[blockio] classes render as TOML berth reads: weights and rates as integers, quantities as strings', async (t) => {
  const docs = await render('--set-json', 'config.blockio.classes={"fast":{"devices":[{"path":"/dev/vda","weight":500,"read_bps":"1Gi"},{"path":"/dev/vdb","write_iops":20000}]}}');
  const text = one(docs, 'ConfigMap', (d) => d.metadata.name.endsWith('-config')).data['config.toml'] as string;
  t.true(text.includes('"weight" = 500'), text);
  // The device paths are resolved by the node's loader (below); the keys and values are checked by its schema here.
  const config = validateConfig(parseToml(text) as Record<string, unknown>);
  t.deepEqual(config.blockio.classes, { fast: { devices: [{ path: '/dev/vda', weight: 500, readBps: 1024 ** 3 }, { path: '/dev/vdb', writeIops: 20000 }] } });
});

test("what the schema cannot see (a blockio device that is no whole disk) berth's loader catches, naming the key", async (t) => {
  const docs = await render('--set', 'config.blockio.classes.gold.devices[0].path=/dev/null', '--set', 'config.blockio.classes.gold.devices[0].write_bps=1Mi');
  const err = await t.throwsAsync(configOf(docs, 'not-a-disk'), { instanceOf: ConfigError });
  t.is(err!.key, 'blockio.classes.gold.devices[0].path');
});

test("what the schema cannot see (a subnet's host bits) berth's loader catches, naming the key", async (t) => {
  // The installer runs `berth config check` on the node before replacing the file; this is the same loader.
  const docs = await render('--set', 'config.network.subnet=10.86.0.1/16');
  const err = await t.throwsAsync(configOf(docs, 'host-bits'), { instanceOf: ConfigError });
  t.is(err!.key, 'network.subnet');
});
