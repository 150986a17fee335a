import type { TerminalSize } from './types.js';

// The resize stream of remotecommand v3+ carries a sequence of JSON objects ({"Width":80,"Height":24}, written by
// Go's json.Encoder, so newline separated, though only the object boundaries matter). Go decodes field names
// case-insensitively; so does this. A value that is not a terminal size ends the stream's processing, as the Go
// decoder's loop does: from then on bytes are ignored.

const MAX_OBJECT_BYTES = 4096;

export class ResizeDecoder {
  private text = '';
  private depth = 0;
  private inString = false;
  private escaped = false;
  private scanned = 0;
  private broken = false;

  /** Feeds bytes; returns the sizes they complete. */
  push(chunk: Buffer): TerminalSize[] {
    if (this.broken) return [];
    this.text += chunk.toString('utf8');
    const sizes: TerminalSize[] = [];
    for (let i = this.scanned; i < this.text.length; i++) {
      const c = this.text[i]!;
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (c === '\\') this.escaped = true;
        else if (c === '"') this.inString = false;
        continue;
      }
      if (c === '"') this.inString = true;
      else if (c === '{') this.depth++;
      else if (c === '}') {
        this.depth--;
        if (this.depth === 0) {
          const size = parseSize(this.text.slice(0, i + 1));
          if (!size) return this.stop(sizes);
          sizes.push(size);
          this.text = this.text.slice(i + 1);
          i = -1;
          continue;
        }
        if (this.depth < 0) return this.stop(sizes);
      } else if (this.depth === 0 && !/\s/.test(c)) {
        return this.stop(sizes);
      }
    }
    this.scanned = this.text.length;
    if (this.text.length > MAX_OBJECT_BYTES) return this.stop(sizes);
    return sizes;
  }

  private stop(sizes: TerminalSize[]): TerminalSize[] {
    this.broken = true;
    this.text = '';
    return sizes;
  }
}

function parseSize(json: string): TerminalSize | null {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return null;
  let width = 0;
  let height = 0;
  for (const [key, v] of Object.entries(value)) {
    const k = key.toLowerCase();
    if (k !== 'width' && k !== 'height') continue;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > 0xffff) return null;
    if (k === 'width') width = v;
    else height = v;
  }
  return { width, height };
}

/**
 * The terminal sizes of one session, for SessionIO.onResize: a listener that arrives after the client sent its
 * first size (it usually does so before the backend has had a chance to listen) gets the latest one at once.
 */
export class ResizeEvents {
  private readonly listeners: ((size: TerminalSize) => void)[] = [];
  private latest: TerminalSize | undefined;

  emit(size: TerminalSize): void {
    this.latest = size;
    for (const listener of this.listeners) listener(size);
  }

  listen(listener: (size: TerminalSize) => void): void {
    this.listeners.push(listener);
    if (this.latest) listener(this.latest);
  }
}
