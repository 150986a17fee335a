import type { TerminalSize } from './types.js';

// The resize stream of remotecommand carries a sequence of JSON objects, {"Width":80,"Height":24}, with no
// delimiter between them and no promise that one object arrives in one frame (client-go writes them with a JSON
// encoder onto a byte stream; Go's decoder matches the keys without regard to case).

/** Longer than any sane size object: a client sending more without closing its object is sending garbage. */
const MAX_PENDING = 4096;

export class ResizeDecoder {
  private pending = '';

  constructor(private readonly onSize: (size: TerminalSize) => void) {}

  /** Feeds bytes of the stream; calls onSize for each complete object that is a valid size. */
  write(chunk: Buffer | string): void {
    this.pending += chunk.toString();
    let start = this.pending.indexOf('{');
    while (start >= 0) {
      const end = objectEnd(this.pending, start);
      if (end < 0) break;
      const size = parseSize(this.pending.slice(start, end + 1));
      if (size) this.onSize(size);
      this.pending = this.pending.slice(end + 1);
      start = this.pending.indexOf('{');
    }
    if (start < 0) this.pending = '';
    else if (this.pending.length - start > MAX_PENDING) this.pending = '';
    else this.pending = this.pending.slice(start);
  }
}

/** The index of the brace closing the object opened at start, or -1 while it is incomplete. */
function objectEnd(text: string, start: number): number {
  let depth = 0;
  let inString = false;
  for (let i = start; i < text.length; i++) {
    const c = text[i];
    if (inString) {
      if (c === '\\') i++;
      else if (c === '"') inString = false;
    } else if (c === '"') inString = true;
    else if (c === '{') depth++;
    else if (c === '}' && --depth === 0) return i;
  }
  return -1;
}

function parseSize(json: string): TerminalSize | undefined {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const fields = Object.fromEntries(Object.entries(value).map(([k, v]) => [k.toLowerCase(), v]));
  const dimension = (v: unknown) => (Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 0xffff ? (v as number) : undefined);
  const width = dimension(fields.width);
  const height = dimension(fields.height);
  return width === undefined || height === undefined ? undefined : { width, height };
}
