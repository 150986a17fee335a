import { promises as fs } from 'node:fs';
import path from 'node:path';
import { DnsConfig } from './types.js';
import { writeFileNamed } from '../store/atomic.js';

// The per-pod /etc/hosts, /etc/hostname and /etc/resolv.conf that every container of the pod bind-mounts.

export function resolvConf(dns: DnsConfig): string {
  const lines: string[] = [];
  if (dns.searches.length > 0) lines.push(`search ${dns.searches.join(' ')}`);
  for (const server of dns.servers) lines.push(`nameserver ${server}`);
  if (dns.options.length > 0) lines.push(`options ${dns.options.join(' ')}`);
  return lines.join('\n') + '\n';
}

export function hostsFile(hostname: string, ip?: string): string {
  const lines = [
    '127.0.0.1\tlocalhost',
    '::1\tlocalhost ip6-localhost ip6-loopback',
    'fe00::0\tip6-localnet',
    'fe00::0\tip6-mcastprefix',
    'fe00::1\tip6-allnodes',
    'fe00::2\tip6-allrouters',
  ];
  if (hostname) lines.push(`${ip ?? '127.0.1.1'}\t${hostname}`);
  return lines.join('\n') + '\n';
}

/** Only /etc/hosts depends on the pod's address, so only it is rewritten once the network has given one. */
export async function writeHostsFile(dir: string, hostname: string, ip: string): Promise<void> {
  await writeFileNamed(path.join(dir, 'hosts'), hostsFile(hostname, ip));
}

export async function writePodFiles(dir: string, opts: { hostname: string; dns?: DnsConfig; hostNetwork: boolean; ip?: string }): Promise<void> {
  await fs.mkdir(dir, { recursive: true, mode: 0o755 });
  const hasDns = opts.dns && (opts.dns.servers.length > 0 || opts.dns.searches.length > 0 || opts.dns.options.length > 0);
  const resolv = hasDns ? resolvConf(opts.dns!) : await fs.readFile('/etc/resolv.conf', 'utf8').catch(() => '');
  const hosts = opts.hostNetwork ? await fs.readFile('/etc/hosts', 'utf8').catch(() => hostsFile(opts.hostname)) : hostsFile(opts.hostname, opts.ip);
  // Derived from the pod config and rewritten whenever needed: plain writes, without an atomic write's fsyncs.
  await Promise.all([
    writeFileNamed(path.join(dir, 'resolv.conf'), resolv),
    writeFileNamed(path.join(dir, 'hosts'), hosts),
    writeFileNamed(path.join(dir, 'hostname'), `${opts.hostname}\n`),
  ]);
}
