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
