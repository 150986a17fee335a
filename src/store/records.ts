import { promises as fs } from 'node:fs';
import path from 'node:path';
import { BerthError, exhaustedResource, failedPrecondition, internal, notFound } from '../errors.js';
import { KeyedMutex } from './locks.js';
import { jsonText, readJson, replaceFileUnsynced, syncFile, writeJsonAtomic } from './atomic.js';
import { releaseReserve, restoreReserve } from './reserve.js';

// The one path by which a pod's or container's record changes: compute the new record from a snapshot, write it
// (temp + fsync + rename), then swap it into memory. Readers only ever get frozen snapshots, so no caller can
// change a live record behind the store's back, and a failed write leaves memory as it was on disk.
//
// Durability classes:
// - 'durable' (the default): the write is on disk before the new record is visible or the caller goes on.
// - 'synced-behind': written (temp + rename) before the new record is visible or the caller goes on, so a berth
//   that crashes or is killed finds it on start (the page cache outlives the process); its fsync runs behind the
//   answer. For records whose loss in a power cut is harmless because the host takes what they describe with it:
//   a container's processes die with the host, and on the next start a lost or empty record leaves its directory
//   an orphan that the owner releases (a container record lost before its CREATED -> RUNNING change reads as a
//   container whose monitor is gone). `flush()` waits for these syncs too.
// - 'recoverable': for a change that berth can rebuild on start from another durable file (a container's exit,
//   rebuilt from the monitor's exit.json). The new record is swapped in at once and written behind the answer,
//   its fsync behind that; `flush()` waits for both (shutdown, tests). A failed write is reported through
//   `onWriteError`.

/** The record format this code writes; a record without a version is version 1. */
export const RECORD_VERSION = 1;

export interface StoredRecord {
  id: string;
  version?: number;
}

export type Durability = 'durable' | 'synced-behind' | 'recoverable';

export interface RecordStoreOptions<T> {
  /** The state field, checked against `transitions` on every update that changes it. */
  stateOf?: (record: T) => string;
  /** state -> states it may move to (a missing entry: none). */
  transitions?: Readonly<Record<string, readonly string[]>>;
  onWriteError?: (id: string, err: unknown) => void;
  /**
   * Hears every change once it is visible in memory: `before` absent for a create, `after` absent for a delete.
   * Called synchronously, under the id's lock, so listeners see the changes of one id in order; it must not throw
   * nor block (the event stream and metrics listen here: every state change of a pod or container passes by).
   */
  onChange?: (before: Readonly<T> | undefined, after: Readonly<T> | undefined) => void;
}

export class RecordStore<T extends StoredRecord> {
  private readonly live = new Map<string, Readonly<T>>();
  private readonly locks = new KeyedMutex();
  /** The newest write-behind of each id; later writes and the delete of that id wait for it. */
  private readonly behind = new Map<string, Promise<void>>();
  /** fsyncs of 'synced-behind' writes still running. */
  private readonly syncing = new Set<Promise<void>>();
  /** Directories of deleteBehind still being removed. */
  private readonly removing = new Set<Promise<void>>();

  constructor(
    readonly dir: string,
    private readonly file: string,
    private readonly opts: RecordStoreOptions<T> = {},
  ) {}

  /**
   * Reads every record into memory. A directory without a readable record is an orphan (the caller removes it);
   * a record written by a newer berth fails the load, naming its file, so that nothing it holds is lost.
   */
  async loadAll(): Promise<{ records: Readonly<T>[]; orphans: string[] }> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const records: Readonly<T>[] = [];
    const orphans: string[] = [];
    for (const id of await fs.readdir(this.dir)) {
      const file = path.join(this.dir, id, this.file);
      const record = await readJson<T>(file).catch(() => undefined);
      if (!record || record.id !== id) {
        orphans.push(path.join(this.dir, id));
        continue;
      }
      const version = record.version ?? 1;
      // Refused, not skipped: a skipped record's directory would be an orphan, and orphans are removed.
      if (Number.isInteger(version) && version > RECORD_VERSION) {
        throw failedPrecondition(`${file}: record version ${version} is newer than this berth knows (${RECORD_VERSION}); upgrade berth or restore the file`);
      }
      if (!Number.isInteger(version) || version < 1) {
        throw failedPrecondition(`${file}: record version ${JSON.stringify(record.version)} is not a version (1 to ${RECORD_VERSION}); restore the file`);
      }
      const loaded = deepFreeze({ ...record, version });
      this.live.set(id, loaded);
      records.push(loaded);
    }
    return { records, orphans };
  }

  pathOf(id: string): string {
    return path.join(this.dir, id);
  }

  get(id: string): Readonly<T> | undefined {
    return this.live.get(id);
  }

  has(id: string): boolean {
    return this.live.has(id);
  }

  values(): Readonly<T>[] {
    return [...this.live.values()];
  }

  get size(): number {
    return this.live.size;
  }

  /** Writes a new record, then makes it visible. */
  async create(record: T, durability: Exclude<Durability, 'recoverable'> = 'durable'): Promise<Readonly<T>> {
    return this.locks.run(record.id, async () => {
      if (this.live.has(record.id)) throw internal(`record ${record.id} already exists`);
      const next = deepFreeze({ ...record, version: RECORD_VERSION });
      await this.write(next, durability === 'durable');
      this.live.set(next.id, next);
      this.opts.onChange?.(undefined, next);
      return next;
    });
  }

  /**
   * Changes a record: `change` gets the current snapshot and returns the next record (or the same snapshot for
   * no change). Updates of one id run one at a time, each seeing the result of the one before.
   */
  async update(id: string, change: (current: Readonly<T>) => T | Readonly<T>, durability: Durability = 'durable'): Promise<Readonly<T>> {
    return this.locks.run(id, async () => {
      const current = this.live.get(id);
      if (!current) throw notFound(`record ${id} not found`);
      const proposed = change(current);
      if (proposed === current) return current;
      this.checkTransition(current, proposed as T);
      const next = deepFreeze({ ...proposed, id, version: RECORD_VERSION } as T);
      if (durability !== 'recoverable') {
        // An older record still being written behind must not land after this one.
        await this.behind.get(id);
        await this.write(next, durability === 'durable');
        this.live.set(id, next);
        this.opts.onChange?.(current, next);
        return next;
      }
      this.live.set(id, next);
      this.writeBehind(next);
      this.opts.onChange?.(current, next);
      return next;
    });
  }

  /** Removes the record file first, then its directory: a crash in between leaves an orphan dir, not a ghost. */
  async delete(id: string): Promise<void> {
    await this.deleteRecord(id);
    await this.removeDir(id);
  }

  /**
   * Removes the record file now and its directory behind the answer. From the record's removal on, the directory
   * is an orphan to a restarted berth, which the owner's load releases: so a crash before `removed` settles
   * leaves nothing that load does not finish. `removed` never rejects (onWriteError hears a failure); flush()
   * waits for it too.
   */
  async deleteBehind(id: string): Promise<{ removed: Promise<void> }> {
    const recordGone = this.deleteRecord(id);
    // Tracked from the call on, not from the record's removal: a flush() made meanwhile waits for it too. A failed
    // record removal is the caller's to hear (and leaves the directory).
    const removed: Promise<void> = recordGone
      .then(
        () => this.removeDir(id).catch((err) => this.opts.onWriteError?.(id, err)),
        () => undefined,
      )
      .finally(() => this.removing.delete(removed));
    this.removing.add(removed);
    await recordGone;
    return { removed };
  }

  private async deleteRecord(id: string): Promise<void> {
    await this.locks.run(id, async () => {
      // A write-behind landing after the delete would bring the record back on the next start.
      await this.behind.get(id);
      await fs.unlink(path.join(this.pathOf(id), this.file)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'ENOENT') throw err;
      });
      const gone = this.live.get(id);
      this.live.delete(id);
      if (gone) this.opts.onChange?.(gone, undefined);
    });
  }

  private async removeDir(id: string): Promise<void> {
    await fs.rm(this.pathOf(id), { recursive: true, force: true });
    await restoreReserve(this.dir);
  }

  /** Waits for every write-behind ('recoverable') change, sync behind and directory removal started so far. */
  async flush(): Promise<void> {
    // Until none is left: a write behind starts its sync only once it lands, and none of these ever rejects.
    for (;;) {
      const pending = [...this.behind.values(), ...this.syncing, ...this.removing];
      if (pending.length === 0) return;
      await Promise.all(pending);
    }
  }

  private checkTransition(current: Readonly<T>, next: T): void {
    const { stateOf, transitions } = this.opts;
    if (!stateOf || !transitions) return;
    const from = stateOf(current);
    const to = stateOf(next);
    if (from === to) return;
    if (!(transitions[from] ?? []).includes(to)) {
      throw new BerthError('failed_precondition', `record ${current.id}: state ${from} cannot become ${to}`);
    }
  }

  /** `sync`: on disk before it returns; else in the page cache at once and fsynced behind (see Durability). */
  private async write(record: Readonly<T>, sync = true): Promise<void> {
    await fs.mkdir(this.pathOf(record.id), { recursive: true, mode: 0o700 });
    const file = path.join(this.pathOf(record.id), this.file);
    const put = () => (sync ? writeJsonAtomic(file, record) : replaceFileUnsynced(file, jsonText(record)));
    try {
      await put();
    } catch (err) {
      // A record that exists already is being changed (started, stopped, torn down): on a full disk that must
      // still be possible, so the space reserve under berth's root is given up for it. A new record is not.
      const exists = this.live.has(record.id);
      if (!exists || exhaustedResource(err) !== 'ENOSPC' || !(await releaseReserve(this.dir))) throw err;
      await put();
    }
    if (!sync) this.syncBehind(record.id, file);
  }

  /** A sync that fails (an I/O error) is reported through onWriteError; the record stays as written. */
  private syncBehind(id: string, file: string): void {
    const done: Promise<void> = syncFile(file)
      .catch((err) => this.opts.onWriteError?.(id, err))
      .finally(() => this.syncing.delete(done));
    this.syncing.add(done);
  }

  /** Writes of one id land in the order they were made; a behind write never rejects (onWriteError hears it). */
  private writeBehind(record: Readonly<T>): void {
    const id = record.id;
    const done: Promise<void> = (this.behind.get(id) ?? Promise.resolve())
      // Its fsync runs behind too: a delete waiting for this write (it must not land after it) waits for a rename,
      // not a flush to disk.
      .then(() => this.write(record, false))
      .catch((err) => this.opts.onWriteError?.(id, err))
      .finally(() => {
        if (this.behind.get(id) === done) this.behind.delete(id);
      });
    this.behind.set(id, done);
  }
}

/** Freezes an object and everything reachable from it (records are plain JSON data). */
export function deepFreeze<T>(value: T): Readonly<T> {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as Record<string, unknown>)) deepFreeze(v);
  }
  return value;
}
