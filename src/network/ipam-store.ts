import { promises as fs } from 'node:fs';
import path from 'node:path';
import { readJson, writeJsonAtomic } from '../store/atomic.js';
import { emptyIpam, IpamState, parseIpamState } from './ipam.js';

// The IPAM state on disk: read once at start, written atomically after every change. Writes are serialized and
// coalesced: a save() resolves once a write that began after the call has finished, so concurrent pod starts
// never let an older snapshot land last.

export class IpamStore {
  state: IpamState = emptyIpam();
  private writing: Promise<void> | undefined;
  private queued: Promise<void> | undefined;

  constructor(readonly file: string) {}

  async load(): Promise<IpamState> {
    await fs.mkdir(path.dirname(this.file), { recursive: true, mode: 0o700 });
    const raw = await readJson<unknown>(this.file);
    this.state = raw === undefined ? emptyIpam() : parseIpamState(raw);
    return this.state;
  }

  save(): Promise<void> {
    if (this.queued) return this.queued;
    if (!this.writing) {
      this.writing = this.write().finally(() => (this.writing = undefined));
      return this.writing;
    }
    const after = this.writing;
    this.queued = after
      .catch(() => undefined)
      .then(() => {
        this.queued = undefined;
        return this.save();
      });
    return this.queued;
  }

  /** Waits for writes already started or queued; starts none. */
  async flush(): Promise<void> {
    await (this.queued ?? this.writing)?.catch(() => undefined);
  }

  private async write(): Promise<void> {
    await writeJsonAtomic(this.file, this.state);
  }
}
