// What tar-stream hands the extractor for each entry, and the ownership, mode and times read from its header
// (with the PAX records that override them).
import type tar from 'tar-stream';

export type EntryHeader = Omit<tar.Header, 'pax' | 'type'> & {
  type: tar.Header['type'] | null;
  pax?: Record<string, string> | null;
  byteOffset?: number;
};

export interface EntryData extends AsyncIterable<unknown> {
  resume(): unknown;
  on(event: 'error', listener: (err: unknown) => void): unknown;
}

export interface Meta {
  mode: number;
  uid: number;
  gid: number;
  atime: number;
  mtime: number;
}

/** The entry's owner, mode and times; tar-stream applies only path, linkpath and size from PAX, so the rest is here. */
export function entryMeta(h: EntryHeader): Meta {
  const meta: Meta = {
    mode: (h.mode ?? 0) & 0o7777,
    // Ids too big for the header are in PAX.
    uid: paxId(h.pax?.uid) ?? h.uid ?? 0,
    gid: paxId(h.pax?.gid) ?? h.gid ?? 0,
    mtime: paxTime(h.pax?.mtime) ?? (h.mtime ? h.mtime.getTime() / 1000 : 0),
    atime: 0,
  };
  meta.atime = paxTime(h.pax?.atime) ?? meta.mtime;
  return meta;
}

function paxId(value: string | undefined): number | undefined {
  if (!value || !/^\d+$/.test(value)) return undefined;
  const id = Number(value);
  return id <= 0xffffffff ? id : undefined;
}

function paxTime(value: string | undefined): number | undefined {
  if (!value) return undefined;
  const t = Number(value);
  return Number.isFinite(t) ? t : undefined;
}
