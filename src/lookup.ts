import { invalidArgument } from './errors.js';

/** A Map by id, or a RecordStore. */
export interface ById<T> {
  get(id: string): T | undefined;
  values(): Iterable<T>;
}

/**
 * An object by its full id or by a unique prefix of it, as crictl accepts. An empty id finds nothing; a prefix
 * shared by several objects is the caller's mistake (INVALID_ARGUMENT), not a missing object.
 */
export function findByIdOrPrefix<T extends { id: string }>(items: ById<T>, id: string, what: string): T | undefined {
  if (id === '') return undefined;
  const exact = items.get(id);
  if (exact) return exact;
  const matches = [...items.values()].filter((x) => x.id.startsWith(id));
  if (matches.length > 1) throw invalidArgument(`${what} id prefix "${id}" is ambiguous: it matches ${matches.length} ${what}s`);
  return matches[0];
}

/** What pods and containers are listed by: an id prefix, a state, and labels that must all be present. */
export interface RecordFilter<S extends string> {
  id?: string;
  state?: S;
  labels?: Record<string, string>;
}

interface Listable<S extends string> {
  id: string;
  state: S;
  config: { labels: Record<string, string> };
}

/** The records that pass every part of the filter (an absent part passes all). */
export function filterRecords<S extends string, T extends Listable<S>>(records: T[], filter: RecordFilter<S>): T[] {
  const wanted = Object.entries(filter.labels ?? {});
  return records.filter(
    (r) =>
      (!filter.id || r.id.startsWith(filter.id)) &&
      (!filter.state || r.state === filter.state) &&
      wanted.every(([k, v]) => r.config.labels[k] === v),
  );
}

/**
 * The unique names of live objects (a pod's name/namespace/uid/attempt, a container's pod/name/attempt) and the
 * id holding each: CRI refuses a second object with the same name while the first exists.
 */
export class NameIndex {
  private readonly ids = new Map<string, string>();

  holder(key: string): string | undefined {
    return this.ids.get(key);
  }

  reserve(key: string, id: string): void {
    this.ids.set(key, id);
  }

  release(key: string): void {
    this.ids.delete(key);
  }
}
