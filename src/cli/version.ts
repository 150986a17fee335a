import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { RUNTIME_API_VERSION, RUNTIME_VERSION } from '../cri/runtime.js';

// What `berth --version` reports. The commit is written by the build (scripts/build-info.mjs) into
// dist/build-info.json, since a release bundle has no .git to ask at run time.

const distDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

function buildCommit(): string {
  try {
    const info = JSON.parse(readFileSync(path.join(distDir, 'build-info.json'), 'utf8')) as { commit?: unknown };
    return typeof info.commit === 'string' && info.commit ? info.commit : 'unknown';
  } catch {
    return 'unknown';
  }
}

/** The Kubernetes release whose cri-api proto/api.proto matches, as its header records it. */
function protoKubernetesVersion(): string | undefined {
  try {
    const header = readFileSync(path.resolve(distDir, '../proto/api.proto'), 'utf8').slice(0, 2000);
    return /shipped with Kubernetes (\d+\.\d+)/.exec(header)?.[1];
  } catch {
    return undefined;
  }
}

export function versionText(): string {
  const k8s = protoKubernetesVersion();
  return [
    `berth ${RUNTIME_VERSION}`,
    `commit: ${buildCommit()}`,
    `CRI API: runtime.${RUNTIME_API_VERSION}${k8s ? ` (k8s.io/cri-api of Kubernetes ${k8s})` : ''}`,
    `node: ${process.version}`,
    '',
  ].join('\n');
}
