// A tiny Docker-registry token server (distribution "token" auth) for e2e tests.
//
// GET  /token?service=…&scope=…&scope=…[&account=…]   with Basic credentials
// POST /token  (OAuth2 form: grant_type=password, username, password, service, scope)
// answers {token, access_token, expires_in, issued_at} with an RS256 JWT whose
// header carries x5c = [self-signed cert]; the registry trusts that cert through
// its rootcertbundle.
import http from 'node:http';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createPrivateKey, randomBytes, sign, X509Certificate, type KeyObject } from 'node:crypto';
import type { AddressInfo } from 'node:net';

const execFileP = promisify(execFile);

export interface TokenAccess {
  type: string;
  name: string;
  actions: string[];
}

export interface TokenAuthOptions {
  /** username → password accepted with Basic auth at the token endpoint. */
  users: Record<string, string>;
  /** `service` / `aud`; default 'berth-registry'. */
  service?: string;
  /** `iss`; default 'berth-token-issuer'. */
  issuer?: string;
  /** Token lifetime (`exp - iat`, also `expires_in`); default 300s. */
  expiresInSec?: number;
  /** Issue tokens without credentials (pull-only by default); default false. */
  anonymous?: boolean;
  /**
   * Decide which of the requested actions to grant. Default: authenticated users get
   * everything they ask for, anonymous users (if allowed) get only `pull`.
   */
  grant?: (user: string | null, requested: TokenAccess) => string[];
}

export interface TokenRequestRecord {
  method: string;
  /** Full request URL (path + query). */
  url: string;
  /** Authenticated user; null if anonymous or credentials were rejected. */
  user: string | null;
  scopes: string[];
  service: string | null;
  status: number;
}

export interface TokenServer {
  /** e.g. 'http://127.0.0.1:PORT' */
  url: string;
  /** The realm to put in the registry config: `${url}/token`. */
  realm: string;
  service: string;
  issuer: string;
  /** PEM of the self-signed signing certificate (the registry's rootcertbundle). */
  certPem: string;
  /** Every request received, in order. */
  requests: TokenRequestRecord[];
  /** Number of requests (optionally only those matching a predicate). */
  count(pred?: (r: TokenRequestRecord) => boolean): number;
  /** Forget recorded requests. */
  reset(): void;
  /** Mint a token directly (no HTTP), e.g. to test expired/foreign tokens. */
  mint(user: string | null, scopes: string[], opts?: { expiresInSec?: number; nbfOffsetSec?: number }): string;
  stop(): Promise<void>;
}

interface KeyMaterial {
  key: KeyObject;
  certPem: string;
  certDerB64: string;
}

let keyMaterial: Promise<KeyMaterial> | undefined;

/** Generate (once per process) an RSA key + self-signed cert with the openssl CLI. */
export function tokenSigningKey(): Promise<KeyMaterial> {
  keyMaterial ??= (async () => {
    const dir = await mkdtemp(path.join(tmpdir(), 'berth-token-key-'));
    try {
      const keyPath = path.join(dir, 'key.pem');
      const certPath = path.join(dir, 'cert.pem');
      await execFileP('openssl', [
        'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-sha256',
        '-keyout', keyPath, '-out', certPath,
        '-subj', '/CN=berth-token-issuer', '-days', '3650',
      ]);
      const keyPem = await readFile(keyPath, 'utf8');
      const certPem = await readFile(certPath, 'utf8');
      const cert = new X509Certificate(certPem);
      return { key: createPrivateKey(keyPem), certPem, certDerB64: cert.raw.toString('base64') };
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  })();
  return keyMaterial;
}

function b64url(data: Buffer | string): string {
  return Buffer.from(data).toString('base64url');
}

/** Parse "repository:berth/x:pull,push" (names may not contain ':' but be lenient). */
export function parseScope(scope: string): TokenAccess | null {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first < 0 || last <= first) return null;
  const actions = scope.slice(last + 1).split(',').filter((a) => a !== '');
  return { type: scope.slice(0, first), name: scope.slice(first + 1, last), actions };
}

export async function startTokenServer(opts: TokenAuthOptions): Promise<TokenServer> {
  const km = await tokenSigningKey();
  const service = opts.service ?? 'berth-registry';
  const issuer = opts.issuer ?? 'berth-token-issuer';
  const lifetime = opts.expiresInSec ?? 300;
  const grant =
    opts.grant ??
    ((user: string | null, req: TokenAccess) => (user === null ? req.actions.filter((a) => a === 'pull') : req.actions));
  const requests: TokenRequestRecord[] = [];

  const mint = (user: string | null, scopes: string[], m?: { expiresInSec?: number; nbfOffsetSec?: number }): string => {
    const now = Math.floor(Date.now() / 1000);
    const access: TokenAccess[] = [];
    for (const s of scopes) {
      const req = parseScope(s);
      if (!req) continue;
      const actions = grant(user, req);
      access.push({ type: req.type, name: req.name, actions });
    }
    const header = { typ: 'JWT', alg: 'RS256', x5c: [km.certDerB64] };
    const claims = {
      iss: issuer,
      sub: user ?? '',
      aud: service,
      exp: now + (m?.expiresInSec ?? lifetime),
      nbf: now + (m?.nbfOffsetSec ?? -10),
      iat: now,
      jti: randomBytes(16).toString('hex'),
      access,
    };
    const signingInput = b64url(JSON.stringify(header)) + '.' + b64url(JSON.stringify(claims));
    const sig = sign('sha256', Buffer.from(signingInput), km.key);
    return signingInput + '.' + b64url(sig);
  };

  const checkBasic = (authz: string | undefined): { ok: boolean; user: string | null; present: boolean } => {
    if (!authz || !/^basic /i.test(authz)) return { ok: false, user: null, present: false };
    const decoded = Buffer.from(authz.slice(6).trim(), 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const u = colon < 0 ? decoded : decoded.slice(0, colon);
    const p = colon < 0 ? '' : decoded.slice(colon + 1);
    const ok = Object.prototype.hasOwnProperty.call(opts.users, u) && opts.users[u] === p;
    return { ok, user: ok ? u : null, present: true };
  };

  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const u = new URL(req.url ?? '/', 'http://x');
      const rec: TokenRequestRecord = {
        method: req.method ?? 'GET',
        url: req.url ?? '/',
        user: null,
        scopes: [],
        service: null,
        status: 0,
      };
      requests.push(rec);
      const reply = (status: number, body: unknown, headers: Record<string, string> = {}) => {
        rec.status = status;
        const text = JSON.stringify(body);
        res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
        res.end(text);
      };
      if (u.pathname !== '/token') return reply(404, { errors: [{ code: 'NOT_FOUND' }] });

      let user: string | null = null;
      let scopes: string[] = [];
      let svc: string | null = null;
      if (req.method === 'GET') {
        const b = checkBasic(req.headers.authorization);
        if (b.present && !b.ok) {
          return reply(401, { errors: [{ code: 'UNAUTHORIZED', message: 'bad credentials' }] }, {
            'WWW-Authenticate': 'Basic realm="berth-token"',
          });
        }
        if (!b.present && !opts.anonymous) {
          return reply(401, { errors: [{ code: 'UNAUTHORIZED', message: 'credentials required' }] }, {
            'WWW-Authenticate': 'Basic realm="berth-token"',
          });
        }
        user = b.user;
        scopes = u.searchParams.getAll('scope').flatMap((s) => s.split(' ')).filter((s) => s !== '');
        svc = u.searchParams.get('service');
      } else if (req.method === 'POST') {
        const form = new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
        if (form.get('grant_type') !== 'password') {
          return reply(400, { error: 'unsupported_grant_type' });
        }
        const name = form.get('username') ?? '';
        const pw = form.get('password') ?? '';
        if (!(Object.prototype.hasOwnProperty.call(opts.users, name) && opts.users[name] === pw)) {
          return reply(401, { error: 'invalid_grant' });
        }
        user = name;
        scopes = (form.get('scope') ?? '').split(' ').filter((s) => s !== '');
        svc = form.get('service');
      } else {
        return reply(405, { error: 'method not allowed' });
      }
      rec.user = user;
      rec.scopes = scopes;
      rec.service = svc;
      if (svc !== null && svc !== service) return reply(400, { errors: [{ code: 'DENIED', message: 'unknown service' }] });
      const token = mint(user, scopes);
      return reply(200, {
        token,
        access_token: token,
        expires_in: lifetime,
        issued_at: new Date().toISOString(),
      });
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const port = (server.address() as AddressInfo).port;
  const url = `http://127.0.0.1:${port}`;
  return {
    url,
    realm: `${url}/token`,
    service,
    issuer,
    certPem: km.certPem,
    requests,
    count: (pred) => (pred ? requests.filter(pred).length : requests.length),
    mint,
    reset: () => {
      requests.length = 0;
    },
    stop: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
