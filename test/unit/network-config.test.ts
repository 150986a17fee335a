import test from 'ava';
import { parse } from 'smol-toml';
import { ConfigError, defaultConfig, validateConfig } from '../../src/config/schema.js';
import {
  capabilityArgs,
  chooseConfigFile,
  cniArgs,
  CniConfigError,
  parseNetworkConfig,
  pluginInput,
  resultIps,
  versionAtLeast,
} from '../../src/network/cni/config.js';

const fromToml = (text: string) => validateConfig(parse(text) as Record<string, unknown>);

test('[network] and [cni] defaults', (t) => {
  const c = defaultConfig();
  t.deepEqual(c.network, { mode: 'auto', subnet: '10.86.0.0/16', bridge: 'berth0' });
  t.deepEqual(c.cni, { confDir: '/etc/cni/net.d', binDirs: ['/opt/cni/bin', '/usr/lib/cni'] });
});

test('[network] and [cni] keys are read', (t) => {
  const c = fromToml('[network]\nmode = "cni"\nsubnet = "10.200.0.0/24"\nbridge = "pods0"\n[cni]\nconf_dir = "/x/net.d"\nbin_dirs = ["/x/bin"]\n');
  t.deepEqual(c.network, { mode: 'cni', subnet: '10.200.0.0/24', bridge: 'pods0' });
  t.deepEqual(c.cni, { confDir: '/x/net.d', binDirs: ['/x/bin'] });
});

const bad: [string, string][] = [
  ['[network]\nmod = "auto"', 'network.mod'],
  ['[network]\nmode = "bridge"', 'network.mode'],
  ['[network]\nsubnet = "10.86.0.1/16"', 'network.subnet'],
  ['[network]\nsubnet = "10.86.0.0/31"', 'network.subnet'],
  ['[network]\nsubnet = "fd00::/64"', 'network.subnet'],
  ['[network]\nsubnet = 10', 'network.subnet'],
  ['[network]\nbridge = "a-name-that-is-too-long"', 'network.bridge'],
  ['[network]\nbridge = "br/0"', 'network.bridge'],
  ['[cni]\nconf_dir = "relative"', 'cni.conf_dir'],
  ['[cni]\nbin_dirs = []', 'cni.bin_dirs'],
  ['[cni]\nbin_dirs = ["/ok", "rel"]', 'cni.bin_dirs'],
  ['[cni]\nbin_dir = ["/x"]', 'cni.bin_dir'],
  ['network = 1', 'network'],
  ['cni = "x"', 'cni'],
];
for (const [text, key] of bad) {
  test(`bad network config ${JSON.stringify(text)} is refused naming ${key}`, (t) => {
    const err = t.throws(() => fromToml(text), { instanceOf: ConfigError }) as ConfigError;
    t.is(err.key, key);
  });
}

test('the lexically first config file is chosen; other files and hidden ones are ignored', (t) => {
  t.is(chooseConfigFile(['99-z.conf', '10-b.conflist', '10-a.json', 'README', '.00-hidden.conf']), '10-a.json');
  t.is(chooseConfigFile(['notes.txt']), undefined);
});

test('CNI configs: lists, single plugins, and what is wrong with a bad one (naming the file)', (t) => {
  const list = parseNetworkConfig('/d/10.conflist', JSON.stringify({ cniVersion: '1.0.0', name: 'net', plugins: [{ type: 'bridge' }, { type: 'portmap', capabilities: { portMappings: true } }] }));
  t.is(list.plugins.length, 2);
  t.false(list.disableCheck);
  const single = parseNetworkConfig('/d/10.conf', JSON.stringify({ cniVersion: '0.4.0', name: 'one', type: 'bridge', bridge: 'cni0' }));
  t.deepEqual(single.plugins, [{ cniVersion: '0.4.0', name: 'one', type: 'bridge', bridge: 'cni0' }]);
  const listInConf = parseNetworkConfig('/d/10.conf', JSON.stringify({ cniVersion: '1.0.0', name: 'n', plugins: [{ type: 'ptp' }] }));
  t.is(listInConf.plugins[0]!.type, 'ptp');

  const bad: [string, string][] = [
    ['{', 'invalid JSON'],
    ['[]', 'not a JSON object'],
    ['{"name":"n","plugins":[{"type":"x"}]}', 'cniVersion'],
    ['{"cniVersion":"9.9.9","name":"n","plugins":[{"type":"x"}]}', 'not supported'],
    ['{"cniVersion":"1.0.0","plugins":[{"type":"x"}]}', 'name'],
    ['{"cniVersion":"1.0.0","name":"n","plugins":[]}', 'non-empty'],
    ['{"cniVersion":"1.0.0","name":"n","plugins":[{"nope":1}]}', 'plugins[0] has no "type"'],
    ['{"cniVersion":"1.0.0","name":"n","plugins":[{"type":"../../bin/sh"}]}', 'not a plain name'],
  ];
  for (const [text, msg] of bad) {
    const err = t.throws(() => parseNetworkConfig('/d/10-x.conflist', text), { instanceOf: CniConfigError }) as CniConfigError;
    t.true(err.message.includes('/d/10-x.conflist') && err.message.includes(msg), `${text}: ${err.message}`);
  }
});

test('each plugin gets the list name and version, its own capabilities only, and prevResult', (t) => {
  const list = parseNetworkConfig('/d/x.conflist', JSON.stringify({
    cniVersion: '1.0.0',
    name: 'net',
    plugins: [{ type: 'bridge' }, { type: 'portmap', capabilities: { portMappings: true, bandwidth: false } }, { type: 'bandwidth', capabilities: { bandwidth: true } }],
  }));
  const caps = capabilityArgs({
    portMappings: [
      { protocol: 'TCP', containerPort: 80, hostPort: 8080, hostIp: '' },
      { protocol: 'UDP', containerPort: 53, hostPort: 5353, hostIp: '192.0.2.1' },
      { protocol: 'TCP', containerPort: 9, hostPort: 0, hostIp: '' },
    ],
    dns: { servers: ['10.0.0.10'], searches: ['svc.local'], options: ['ndots:5'] },
    annotations: { 'kubernetes.io/ingress-bandwidth': '10M', 'kubernetes.io/egress-bandwidth': '1Mi' },
  });
  t.deepEqual(caps.portMappings, [
    { hostPort: 8080, containerPort: 80, protocol: 'tcp' },
    { hostPort: 5353, containerPort: 53, protocol: 'udp', hostIP: '192.0.2.1' },
  ]);
  t.deepEqual(caps.bandwidth, { ingressRate: 10_000_000, ingressBurst: 2 ** 32 - 1, egressRate: 1_048_576, egressBurst: 2 ** 32 - 1 });
  t.deepEqual(caps.dns, { servers: ['10.0.0.10'], searches: ['svc.local'], options: ['ndots:5'] });

  const first = pluginInput(list, list.plugins[0]!, caps);
  t.deepEqual(first, { type: 'bridge', cniVersion: '1.0.0', name: 'net' });
  const prev = { cniVersion: '1.0.0', ips: [{ address: '10.1.0.2/24' }] };
  const second = pluginInput(list, list.plugins[1]!, caps, prev);
  t.deepEqual(second.runtimeConfig, { portMappings: caps.portMappings });
  t.deepEqual(second.prevResult, prev);
  t.deepEqual(pluginInput(list, list.plugins[2]!, caps).runtimeConfig, { bandwidth: caps.bandwidth });
  t.deepEqual(capabilityArgs({ portMappings: [], annotations: {} }), {});
});

test('CNI_ARGS as Kubernetes runtimes send them', (t) => {
  t.is(
    cniArgs({ namespace: 'ns', name: 'web', podId: 'abc', uid: 'u-1' }),
    'IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u-1',
  );
});

test('pod addresses from a result: the sandbox interface, IPv4 first, prefix dropped', (t) => {
  const result = {
    cniVersion: '1.0.0',
    interfaces: [{ name: 'cni0' }, { name: 'veth1' }, { name: 'eth0', sandbox: '/run/x/ns/net' }],
    ips: [
      { address: 'fd00::5/64', interface: 2 },
      { address: '10.1.0.5/24', interface: 2, gateway: '10.1.0.1' },
      { address: '10.1.0.1/24', interface: 0 },
    ],
  };
  t.deepEqual(resultIps(result), ['10.1.0.5', 'fd00::5']);
  t.deepEqual(resultIps({ ips: [{ version: '4', address: '10.2.0.3/16' }] }), ['10.2.0.3'], '0.3-style without interfaces');
  t.deepEqual(resultIps({}), []);
});

test('versions', (t) => {
  t.true(versionAtLeast('1.0.0', '0.4.0'));
  t.true(versionAtLeast('0.4.0', '0.4.0'));
  t.false(versionAtLeast('0.3.1', '0.4.0'));
});

test('bandwidth capability args: rates in bit/s from the annotations; a malformed one recorded before the check is left out, not fatal to DEL', (t) => {
  const args = capabilityArgs({ portMappings: [], annotations: { 'kubernetes.io/ingress-bandwidth': '1.5M', 'kubernetes.io/egress-bandwidth': '1Gi' } });
  t.deepEqual(args.bandwidth, { ingressRate: 1_500_000, ingressBurst: 2 ** 32 - 1, egressRate: 2 ** 30, egressBurst: 2 ** 32 - 1 });
  t.is(capabilityArgs({ portMappings: [], annotations: { 'kubernetes.io/ingress-bandwidth': 'ten' } }).bandwidth, undefined);
});
