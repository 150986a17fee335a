import { isMap, parseDocument } from 'yaml';

// Pointing kubelet at a CRI endpoint by rewriting its two configuration sources: the KubeletConfiguration file
// (containerRuntimeEndpoint, imageServiceEndpoint) and kubeadm's flags file (--container-runtime-endpoint,
// --image-service-endpoint in KUBELET_KUBEADM_ARGS). A flag wins over the file in kubelet, so both are rewritten.
// Pure text in, text out: the caller keeps the originals, which is what makes switching back byte-identical.

/** kubelet's default since 1.27, when neither the file nor a flag names an endpoint. */
export const KUBELET_DEFAULT_ENDPOINT = 'unix:///run/containerd/containerd.sock';

export class KubeletConfigError extends Error {
  constructor(
    readonly file: string,
    message: string,
  ) {
    super(`${file}: ${message}`);
    this.name = 'KubeletConfigError';
  }
}

const CONFIG_FIELDS = ['containerRuntimeEndpoint', 'imageServiceEndpoint'] as const;

function kubeletDocument(text: string, file: string) {
  const doc = parseDocument(text);
  if (doc.errors.length > 0) throw new KubeletConfigError(file, `not YAML: ${doc.errors[0].message}`);
  if (!isMap(doc.contents)) throw new KubeletConfigError(file, 'not a KubeletConfiguration (no top-level mapping)');
  const kind = doc.get('kind');
  if (kind !== undefined && kind !== 'KubeletConfiguration') throw new KubeletConfigError(file, `kind is ${String(kind)}, not KubeletConfiguration`);
  return doc;
}

/** The endpoints a KubeletConfiguration names (absent fields are undefined). */
export function configEndpoints(text: string, file: string): { runtime?: string; image?: string } {
  const doc = kubeletDocument(text, file);
  const read = (field: string) => {
    const v = doc.get(field);
    return typeof v === 'string' && v !== '' ? v : undefined;
  };
  return { runtime: read('containerRuntimeEndpoint'), image: read('imageServiceEndpoint') };
}

/** The KubeletConfiguration with both endpoint fields set to `endpoint`; comments and other keys are kept. */
export function setConfigEndpoints(text: string, file: string, endpoint: string): string {
  const doc = kubeletDocument(text, file);
  for (const field of CONFIG_FIELDS) doc.set(field, endpoint);
  return doc.toString();
}

/**
 * The KubeletConfiguration with the endpoint fields as they were in `original` (removed where it had none): for a
 * file someone edited after the switch, so their other edits survive the switch back.
 */
export function restoreConfigEndpoints(text: string, original: string, file: string): string {
  const doc = kubeletDocument(text, file);
  const before = kubeletDocument(original, `${file} (saved original)`);
  for (const field of CONFIG_FIELDS) {
    if (before.has(field)) doc.set(field, before.get(field));
    else doc.delete(field);
  }
  return doc.toString();
}

const FLAGS = ['--container-runtime-endpoint', '--image-service-endpoint'] as const;

// A flag as kubeadm writes it (--name=value) or as an operator might (--name value), inside the quoted args.
function flagPattern(flag: string): RegExp {
  return new RegExp(`(^|[\\s"'])(${flag})(=|\\s+)([^\\s"']+)`, 'g');
}

/** The endpoints the flags file passes (flag absent: undefined). */
export function flagEndpoints(text: string): { runtime?: string; image?: string } {
  const read = (flag: string) => {
    const matches = [...text.matchAll(flagPattern(flag))];
    return matches.length > 0 ? matches[matches.length - 1][4] : undefined;
  };
  return { runtime: read(FLAGS[0]), image: read(FLAGS[1]) };
}

/** The flags file with every endpoint flag it has pointed at `endpoint`; flags it lacks are not added (the file sets them). */
export function setFlagEndpoints(text: string, endpoint: string): string {
  let out = text;
  for (const flag of FLAGS) out = out.replace(flagPattern(flag), (_m, lead: string, name: string, sep: string) => `${lead}${name}${sep}${endpoint}`);
  return out;
}

/** The flags file with each endpoint flag given back the value it had in `original`. */
export function restoreFlagEndpoints(text: string, original: string): string {
  const before = flagEndpoints(original);
  let out = text;
  FLAGS.forEach((flag, i) => {
    const value = i === 0 ? before.runtime : before.image;
    if (value !== undefined) out = out.replace(flagPattern(flag), (_m, lead: string, name: string, sep: string) => `${lead}${name}${sep}${value}`);
  });
  return out;
}

/** The runtime kubelet uses now: a flag, else the file's field, else kubelet's default. */
export function currentRuntimeEndpoint(configText: string | undefined, flagsText: string | undefined, configFile: string): string {
  const flag = flagsText === undefined ? undefined : flagEndpoints(flagsText).runtime;
  const field = configText === undefined ? undefined : configEndpoints(configText, configFile).runtime;
  return flag ?? field ?? KUBELET_DEFAULT_ENDPOINT;
}
