import { randomBytes } from 'node:crypto';
import { resourceExhausted } from '../errors.js';
import type { StreamTarget } from './types.js';

// The single-use tokens Exec, Attach and PortForward hand out (kubelet's request cache). A token is the only thing
// standing between whoever can reach the streaming port and a shell in a container, so it is 128 random bits, it
// works once, and it lapses soon.

export const TOKEN_TTL_MS = 60_000;
/** kubelet's limit: a client that asks for URLs and never uses them cannot grow berth's memory without bound. */
export const MAX_OUTSTANDING_TOKENS = 1000;

export interface TokenCacheOptions {
  ttlMs?: number;
  maxOutstanding?: number;
  /** Milliseconds, monotonic; tests pass a fake clock. */
  now?: () => number;
}

interface Entry {
  target: StreamTarget;
  expiresAt: number;
}

export class TokenCache {
  // Every token lives equally long, so insertion order is expiry order: expired tokens are always at the front of
  // the map and are dropped there, at each insert and consume, with no timer at all.
  private readonly entries = new Map<string, Entry>();
  private readonly ttlMs: number;
  private readonly maxOutstanding: number;
  private readonly now: () => number;

  constructor(opts: TokenCacheOptions = {}) {
    this.ttlMs = opts.ttlMs ?? TOKEN_TTL_MS;
    this.maxOutstanding = opts.maxOutstanding ?? MAX_OUTSTANDING_TOKENS;
    this.now = opts.now ?? (() => performance.now());
  }

  /** A new token for target; RESOURCE_EXHAUSTED while maxOutstanding unexpired tokens are waiting to be used. */
  insert(target: StreamTarget): string {
    this.sweep();
    if (this.entries.size >= this.maxOutstanding) {
      throw resourceExhausted(`${this.entries.size} streaming URLs are outstanding, berth's limit: use or let them expire (${this.ttlMs / 1000} s) first`);
    }
    const token = randomBytes(16).toString('base64url');
    this.entries.set(token, { target, expiresAt: this.now() + this.ttlMs });
    return token;
  }

  /** The target of a token that is known and unexpired, which it then no longer is; undefined otherwise. */
  consume(token: string): StreamTarget | undefined {
    this.sweep();
    const entry = this.entries.get(token);
    if (!entry) return undefined;
    this.entries.delete(token);
    return entry.target;
  }

  get size(): number {
    this.sweep();
    return this.entries.size;
  }

  private sweep(): void {
    const now = this.now();
    for (const [token, entry] of this.entries) {
      if (entry.expiresAt > now) break;
      this.entries.delete(token);
    }
  }
}
