import { SpdyProtocolError } from './errors.js';

// SPDY/3 name/value header blocks (spec 2.6.10), before compression: a 32-bit pair count, then per pair a 32-bit
// length + name and a 32-bit length + value; several values of one name are joined by NUL. Names are lowercase and
// unique. Decoding is strict: the block comes from the peer, and a header is how a stream says what it is.

/** Header names to their values, in the order the block listed them. */
export type SpdyHeaders = Map<string, string[]>;

export interface HeaderBlockLimits {
  maxPairs: number;
  maxBlockBytes: number;
}

export function encodeHeaderBlock(headers: Iterable<[string, string | string[]]>): Buffer {
  const parts: Buffer[] = [];
  let count = 0;
  const seen = new Set<string>();
  for (const [rawName, rawValue] of headers) {
    const name = rawName.toLowerCase();
    if (name === '' || seen.has(name)) throw new RangeError(`spdy header name ${JSON.stringify(rawName)} is empty or repeated`);
    seen.add(name);
    const values = Array.isArray(rawValue) ? rawValue : [rawValue];
    const nameBytes = Buffer.from(name, 'utf8');
    const valueBytes = Buffer.from(values.join('\0'), 'utf8');
    const lens = Buffer.allocUnsafe(8);
    lens.writeUInt32BE(nameBytes.length, 0);
    lens.writeUInt32BE(valueBytes.length, 4);
    parts.push(lens.subarray(0, 4), nameBytes, lens.subarray(4), valueBytes);
    count++;
  }
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(count, 0);
  return Buffer.concat([head, ...parts]);
}

export function decodeHeaderBlock(block: Buffer, limits: HeaderBlockLimits): SpdyHeaders {
  if (block.length > limits.maxBlockBytes) throw new SpdyProtocolError(`header block of ${block.length} bytes exceeds ${limits.maxBlockBytes}`);
  let at = 0;
  const u32 = (what: string): number => {
    if (at + 4 > block.length) throw new SpdyProtocolError(`header block ends inside ${what}`);
    const v = block.readUInt32BE(at);
    at += 4;
    return v;
  };
  const bytes = (n: number, what: string): Buffer => {
    if (n > block.length - at) throw new SpdyProtocolError(`header block ${what} of ${n} bytes overruns the block`);
    const b = block.subarray(at, at + n);
    at += n;
    return b;
  };
  const count = u32('the pair count');
  if (count > limits.maxPairs) throw new SpdyProtocolError(`header block of ${count} pairs exceeds ${limits.maxPairs}`);
  const headers: SpdyHeaders = new Map();
  for (let i = 0; i < count; i++) {
    const nameBytes = bytes(u32('a name length'), 'name');
    if (nameBytes.length === 0) throw new SpdyProtocolError('empty header name');
    const name = nameBytes.toString('latin1');
    if (name !== name.toLowerCase() || /[\0\s:]/.test(name.slice(1)) || name.includes('\0')) {
      throw new SpdyProtocolError(`header name ${JSON.stringify(name)} is not a lowercase token`);
    }
    if (headers.has(name)) throw new SpdyProtocolError(`header ${JSON.stringify(name)} repeated`);
    const value = bytes(u32('a value length'), 'value').toString('utf8');
    headers.set(name, value.split('\0'));
  }
  if (at !== block.length) throw new SpdyProtocolError(`${block.length - at} stray bytes after the header block`);
  return headers;
}

/** The first value of a header, or undefined. */
export function headerValue(headers: SpdyHeaders, name: string): string | undefined {
  return headers.get(name)?.[0];
}
