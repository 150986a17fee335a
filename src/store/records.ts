import { promises as fs } from 'node:fs';
import path from 'node:path';
import { readJson, writeJsonAtomic } from './atomic.js';

/** JSON records in `<dir>/<id>/<file>`, each written atomically, read back on start. */
export class RecordStore<T extends { id: string }> {
  constructor(
    readonly dir: string,
    private readonly file: string,
  ) {}

  async loadAll(): Promise<{ records: T[]; orphans: string[] }> {
    await fs.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const records: T[] = [];
    const orphans: string[] = [];
    for (const id of await fs.readdir(this.dir)) {
      const record = await readJson<T>(path.join(this.dir, id, this.file)).catch(() => undefined);
      if (record && record.id === id) records.push(record);
      else orphans.push(path.join(this.dir, id));
    }
    return { records, orphans };
  }

  pathOf(id: string): string {
    return path.join(this.dir, id);
  }

  async put(record: T): Promise<void> {
    await fs.mkdir(this.pathOf(record.id), { recursive: true, mode: 0o700 });
    await writeJsonAtomic(path.join(this.pathOf(record.id), this.file), record);
  }

  /** Removes the record first, then its directory, so a crash in between leaves an orphan dir, not a ghost record. */
  async delete(id: string): Promise<void> {
    await fs.rm(path.join(this.pathOf(id), this.file), { force: true });
    await fs.rm(this.pathOf(id), { recursive: true, force: true });
  }
}
