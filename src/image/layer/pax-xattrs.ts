// tar-stream decodes PAX values as UTF-8, which corrupts binary xattrs such as security.capability.
// This tracker follows the same byte stream as tar-stream, just the headers, and keeps the raw
// SCHILY.xattr.* values keyed by the stream offset of the entry's data (tar-stream's
// header.byteOffset), so the extractor can pick them up exactly for the matching entry.

/** The PAX record prefix of an extended attribute: SCHILY.xattr.<name>=<raw value>. */
export const PAX_XATTR = 'SCHILY.xattr.';
const MAX_PAX_SIZE = 4 * 1024 * 1024; // tar-stream's own limit
const USTAR_MAGIC = Buffer.from('ustar\0', 'latin1');

export class PaxXattrTracker {
  private pos = 0;
  private skip = 0;
  private readonly header = Buffer.alloc(512);
  private headerFill = 0;
  private body: Buffer | null = null;
  private bodyFill = 0;
  private bodyGlobal = false;
  private local: Map<string, Buffer> | null = null;
  private global: Map<string, Buffer> | null = null;
  private dead = false;
  private readonly found = new Map<number, Map<string, Buffer>>();

  feed(chunk: Buffer): void {
    const n = chunk.length;
    let i = 0;
    while (i < n && !this.dead) {
      if (this.skip > 0) {
        const k = Math.min(this.skip, n - i);
        this.skip -= k;
        i += k;
      } else if (this.body) {
        const k = Math.min(this.body.length - this.bodyFill, n - i);
        chunk.copy(this.body, this.bodyFill, i, i + k);
        this.bodyFill += k;
        i += k;
        if (this.bodyFill === this.body.length) this.endBody();
      } else {
        const k = Math.min(512 - this.headerFill, n - i);
        chunk.copy(this.header, this.headerFill, i, i + k);
        this.headerFill += k;
        i += k;
        if (this.headerFill === 512) {
          this.headerFill = 0;
          this.onHeader(this.pos + i);
        }
      }
    }
    this.pos += n;
  }

  /** The raw xattrs of the entry whose data starts at `byteOffset`, if its PAX header had any. */
  take(byteOffset: number): Map<string, Buffer> | undefined {
    const found = this.found.get(byteOffset);
    if (found) this.found.delete(byteOffset);
    return found;
  }

  private onHeader(dataOffset: number): void {
    const h = this.header;
    let sum = 8 * 32;
    for (let j = 0; j < 148; j++) sum += h[j];
    for (let j = 156; j < 512; j++) sum += h[j];
    if (sum === 8 * 32) return; // an all-zero block (end of archive or padding)
    if (sum !== readNumber(h, 148, 8)) {
      this.dead = true; // tar-stream rejects this header too
      return;
    }
    const typeflag = h[156] === 0 ? 0 : h[156] - 48;
    const size = readNumber(h, 124, 12);
    switch (typeflag) {
      case 72: // 'x' PAX header
      case 55: // 'g' PAX global header
        if (!(size >= 0) || size > MAX_PAX_SIZE) {
          this.dead = true;
          return;
        }
        this.body = Buffer.alloc(size);
        this.bodyFill = 0;
        this.bodyGlobal = typeflag === 55;
        if (size === 0) this.endBody();
        return;
      case 27: // 'K' GNU long link name
      case 28: // 'L' GNU long name
      case 30: // 'N' old GNU long name
        this.skip = size + pad(size);
        return;
    }
    let effective = size;
    const paxSize = this.local?.get('size');
    if (paxSize && paxSize.length) effective = parseInt(paxSize.toString('utf8'), 10);
    if (this.local) {
      let xattrs: Map<string, Buffer> | undefined;
      for (const [key, value] of this.local) {
        if (!key.startsWith(PAX_XATTR)) continue;
        xattrs ??= new Map();
        xattrs.set(key, value);
      }
      if (xattrs) this.found.set(dataOffset, xattrs);
      this.local = null;
    }
    const isDir = typeflag === 5 || (typeflag === 0 && ustarNameEndsWithSlash(h));
    if (!(effective >= 0)) {
      this.dead = true;
      return;
    }
    this.skip = isDir || effective === 0 ? 0 : effective + pad(effective);
  }

  private endBody(): void {
    const body = this.body!;
    this.body = null;
    const records = parsePax(body);
    if (this.bodyGlobal) {
      this.global = records;
    } else {
      this.local = this.global ? new Map([...this.global, ...records]) : records;
    }
    this.skip = pad(body.length);
  }
}

function pad(size: number): number {
  const rem = size % 512;
  return rem === 0 ? 0 : 512 - rem;
}

// Same rules as tar-stream's decodePax: "<len> <key>=<value>\n" records, raw values.
function parsePax(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let off = 0;
  while (off < buf.length) {
    let sp = off;
    while (sp < buf.length && buf[sp] !== 0x20) sp++;
    const len = parseInt(buf.toString('latin1', off, sp), 10);
    if (!len) break;
    const rec = buf.subarray(sp + 1, off + len - 1);
    const eq = rec.indexOf(0x3d);
    if (eq === -1) break;
    out.set(rec.toString('utf8', 0, eq), rec.subarray(eq + 1));
    off += len;
  }
  return out;
}

// Octal (optionally space/NUL padded) or base-256 numeric header field, as tar-stream reads it.
function readNumber(buf: Buffer, offset: number, length: number): number {
  const field = buf.subarray(offset, offset + length);
  if (field[0] & 0x80) {
    const positive = field[0] === 0x80;
    if (!positive && field[0] !== 0xff) return NaN;
    let sum = 0;
    for (let i = 1; i < field.length; i++) {
      const byte = positive ? field[i] : 0xff - field[i];
      sum = sum * 256 + byte;
    }
    return positive ? sum : -sum;
  }
  let i = 0;
  while (i < field.length && field[i] === 0x20) i++;
  let end = field.indexOf(0x20, i);
  if (end === -1) end = field.length;
  while (i < end && field[i] === 0) i++;
  if (i === end) return 0;
  return parseInt(field.toString('latin1', i, end), 8);
}

function ustarNameEndsWithSlash(h: Buffer): boolean {
  let nameEnd = h.indexOf(0, 0);
  if (nameEnd === -1 || nameEnd > 100) nameEnd = 100;
  const ustar = h.subarray(257, 263).equals(USTAR_MAGIC);
  if (ustar && h[345] !== 0 && nameEnd === 0) return true; // "<prefix>/" + ""
  return nameEnd > 0 && h[nameEnd - 1] === 0x2f;
}

