import { invalidArgument } from '../errors.js';

// Registry authentication: Basic, and the bearer-token challenge of the distribution token spec.

export interface Credentials {
  username?: string;
  password?: string;
  /** OAuth2 refresh token (CRI identity_token). */
  identityToken?: string;
  /** A bearer token handed over as is (CRI registry_token). */
  registryToken?: string;
  /** The registry these credentials belong to (CRI server_address, as kubelet fills it from a pull secret). */
  serverAddress?: string;
}

const DOCKER_HUB_HOSTS = new Set(['docker.io', 'index.docker.io', 'registry-1.docker.io', 'registry.hub.docker.com']);

function registryHost(address: string): string {
  const host = address.trim().replace(/^[a-z][a-z0-9+.-]*:\/\//i, '').split('/')[0]!.toLowerCase();
  return DOCKER_HUB_HOSTS.has(host) ? 'docker.io' : host;
}

/**
 * Whether credentials may be sent to `host` (an endpoint's host[:port]). With a server_address they go only to that
 * registry; without one only to the image's own registry, never to a mirror: a pull secret is not the mirror's to see.
 */
export function credentialsApply(creds: Credentials, host: string, mirror: boolean): boolean {
  if (creds.serverAddress) return registryHost(creds.serverAddress) === registryHost(host);
  return !mirror;
}

export interface Challenge {
  scheme: string;
  params: Record<string, string>;
}

/** Parses a WWW-Authenticate header: `Bearer realm="…",service="…",scope="…"`. Multiple challenges are rare; first wins. */
export function parseChallenge(header: string | null): Challenge | undefined {
  if (!header) return undefined;
  const match = /^\s*([A-Za-z]+)\s*(.*)$/s.exec(header);
  if (!match) return undefined;
  const params: Record<string, string> = {};
  const paramRe = /([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?/g;
  let m: RegExpExecArray | null;
  while ((m = paramRe.exec(match[2])) !== null) {
    params[m[1].toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : m[3];
  }
  return { scheme: match[1].toLowerCase(), params };
}

/** Expands the CRI `auth` field (base64 "user:password") into username/password; a malformed one is INVALID_ARGUMENT. */
export function credentialsFromAuthConfig(auth: {
  username?: string;
  password?: string;
  auth?: string;
  identity_token?: string;
  registry_token?: string;
  server_address?: string;
}): Credentials | undefined {
  const creds: Credentials = {};
  if (auth.username) creds.username = auth.username;
  if (auth.password) creds.password = auth.password;
  if (auth.auth && !creds.username) {
    // Dropping a malformed value would turn a typo in a pull secret into an anonymous pull and a misleading 401.
    const decoded = /^[A-Za-z0-9+/_-]+={0,2}$/.test(auth.auth.trim()) ? Buffer.from(auth.auth, 'base64').toString('utf8') : '';
    const colon = decoded.indexOf(':');
    if (colon <= 0) throw invalidArgument('AuthConfig field auth is not base64 of "user:password"');
    creds.username = decoded.slice(0, colon);
    creds.password = decoded.slice(colon + 1);
  }
  if (auth.identity_token) creds.identityToken = auth.identity_token;
  if (auth.registry_token) creds.registryToken = auth.registry_token;
  if (Object.keys(creds).length === 0) return undefined;
  if (auth.server_address) creds.serverAddress = auth.server_address;
  return creds;
}

export function basicHeader(creds: Credentials): string | undefined {
  if (creds.username === undefined) return undefined;
  return 'Basic ' + Buffer.from(`${creds.username}:${creds.password ?? ''}`).toString('base64');
}
