import { invalidArgument } from '../errors.js';

// Docker-style image references, normalised the way kubelet and the docker CLI do:
// `busybox` → `docker.io/library/busybox:latest`.

export const DEFAULT_DOMAIN = 'docker.io';
const LEGACY_DOMAIN = 'index.docker.io';

export interface ImageReference {
  /** Registry host, with port if any: `docker.io`, `127.0.0.1:5000`. */
  domain: string;
  /** Repository path inside the registry: `library/busybox`. */
  path: string;
  tag?: string;
  digest?: string;
}

const componentRe = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const tagRe = /^[\w][\w.-]{0,127}$/;
const digestRe = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;
const sha256Re = /^sha256:[a-f0-9]{64}$/;
const domainRe = /^(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?$/;

export function isDigest(value: string): boolean {
  return sha256Re.test(value);
}

export function parseReference(input: string): ImageReference {
  const fail = (why: string) => invalidArgument(`image reference "${input}": ${why}`);
  if (input.trim() === '') throw invalidArgument('image reference is empty');
  if (input !== input.trim() || /\s/.test(input)) throw fail('contains whitespace');
  if (input.length > 255 * 2) throw fail('too long');

  let rest = input;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!digestRe.test(digest)) throw fail(`invalid digest "${digest}"`);
    if (!digest.startsWith('sha256:')) throw fail(`unsupported digest algorithm in "${digest}"`);
    if (!sha256Re.test(digest)) throw fail(`invalid sha256 digest "${digest}"`);
  }

  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!tagRe.test(tag)) throw fail(`invalid tag "${tag}"`);
  }

  let domain = DEFAULT_DOMAIN;
  let path = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()) {
      domain = first;
      path = rest.slice(slash + 1);
    }
  }
  if (!domainRe.test(domain)) throw fail(`invalid registry host "${domain}"`);
  if (domain === LEGACY_DOMAIN) domain = DEFAULT_DOMAIN;
  if (path === '') throw fail('missing repository name');
  for (const component of path.split('/')) {
    if (!componentRe.test(component)) {
      throw fail(`invalid repository name component "${component}" (lowercase letters, digits and . _ - only)`);
    }
  }
  if (domain === DEFAULT_DOMAIN && !path.includes('/')) path = `library/${path}`;
  if (tag === undefined && digest === undefined) tag = 'latest';
  return { domain, path, tag, digest };
}

/** `domain/path` — the name repo_tags and repo_digests are built from. */
export function repositoryName(ref: ImageReference): string {
  return `${ref.domain}/${ref.path}`;
}

export function formatReference(ref: ImageReference): string {
  let out = repositoryName(ref);
  if (ref.tag) out += `:${ref.tag}`;
  if (ref.digest) out += `@${ref.digest}`;
  return out;
}

/** `docker.io/library/busybox:latest`, or undefined for a digest-only reference. */
export function tagName(ref: ImageReference): string | undefined {
  return ref.tag ? `${repositoryName(ref)}:${ref.tag}` : undefined;
}

export function digestName(ref: ImageReference, digest: string): string {
  return `${repositoryName(ref)}@${digest}`;
}
