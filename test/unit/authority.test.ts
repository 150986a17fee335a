import test from 'ava';
import { createRequire } from 'node:module';
import { AuthorityRewriter } from '../../src/cri/authority.js';

const require = createRequire(import.meta.url);
const hpack = require('hpack.js');

const PREFACE = Buffer.from('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n');

function headersFrame(block: Buffer, streamId: number, flags = 0x4): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(block.length, 0, 3);
  h[3] = 0x1;
  h[4] = flags;
  h.writeUInt32BE(streamId, 5);
  return Buffer.concat([h, block]);
}

function decodeFrames(bytes: Buffer, decoder: any): { name: string; value: string }[][] {
  const blocks: { name: string; value: string }[][] = [];
  let fragments: Buffer[] = [];
  for (let off = 0; off < bytes.length; ) {
    const len = bytes.readUIntBE(off, 3);
    const type = bytes[off + 3];
    const flags = bytes[off + 4];
    if (type === 0x1 || type === 0x9) fragments.push(bytes.subarray(off + 9, off + 9 + len));
    if ((type === 0x1 || type === 0x9) && flags & 0x4) {
      decoder.write(Buffer.concat(fragments));
      decoder.execute();
      const out = [];
      for (let h = decoder.read(); h; h = decoder.read()) out.push({ name: h.name, value: h.value });
      blocks.push(out);
      fragments = [];
    }
    off += 9 + len;
  }
  return blocks;
}

test('a socket path as :authority is rewritten to localhost, on every request of the connection', (t) => {
  const client = hpack.compressor.create({ table: { size: 4096 } });
  const server = hpack.decompressor.create({ table: { size: 4096 } });
  const rewriter = new AuthorityRewriter();
  const out: Buffer[] = [rewriter.push(PREFACE)];
  for (const stream of [1, 3]) {
    client.write([{ name: ':method', value: 'POST' }, { name: ':authority', value: '/run/berth/berth.sock' }, { name: ':path', value: '/runtime.v1.RuntimeService/Version' }, { name: 'te', value: 'trailers' }]);
    out.push(rewriter.push(headersFrame(client.read(), stream)));
  }
  t.is(rewriter.decided, 'rewrite');
  const all = Buffer.concat(out);
  t.deepEqual(all.subarray(0, 24), PREFACE);
  const blocks = decodeFrames(all.subarray(24), server);
  t.is(blocks.length, 2);
  for (const b of blocks) {
    t.is(b.find((h) => h.name === ':authority')?.value, 'localhost');
    t.is(b.find((h) => h.name === ':path')?.value, '/runtime.v1.RuntimeService/Version');
  }
});

test('a connection whose first request has a valid authority passes through byte for byte', (t) => {
  const client = hpack.compressor.create({ table: { size: 4096 } });
  const rewriter = new AuthorityRewriter();
  client.write([{ name: ':authority', value: 'localhost' }, { name: ':path', value: '/x' }]);
  const frame = headersFrame(client.read(), 1);
  const data = Buffer.from([0, 0, 2, 0, 1, 0, 0, 0, 1, 0xaa, 0xbb]);
  const input = Buffer.concat([PREFACE, frame, data]);
  // Split at awkward points: frames arrive in pieces on a real socket.
  const out = Buffer.concat([rewriter.push(input.subarray(0, 10)), rewriter.push(input.subarray(10, 40)), rewriter.push(input.subarray(40))]);
  t.is(rewriter.decided, 'passthrough');
  t.deepEqual(out, input);
});

const SETTINGS = Buffer.from([0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
const SETTINGS_ACK = Buffer.from([0, 0, 0, 0x4, 0x1, 0, 0, 0, 0]);

test("with berth's own SETTINGS sent, the client's first SETTINGS ACK is taken out wherever it comes, and only that one", (t) => {
  for (const authority of ['localhost', '/run/berth/berth.sock']) {
    for (const ackFirst of [true, false]) {
      const client = hpack.compressor.create({ table: { size: 4096 } });
      const rewriter = new AuthorityRewriter({ ownSettings: true });
      client.write([{ name: ':authority', value: authority }, { name: ':path', value: '/x' }]);
      const headers = headersFrame(client.read(), 1);
      const frames = ackFirst ? [SETTINGS, SETTINGS_ACK, headers, SETTINGS_ACK] : [SETTINGS, headers, SETTINGS_ACK, SETTINGS_ACK];
      const input = Buffer.concat([PREFACE, ...frames]);
      const out: Buffer[] = [];
      // One byte at a time: the ACK is found across chunk boundaries too.
      for (let i = 0; i < input.length; i++) out.push(rewriter.push(input.subarray(i, i + 1)));
      const all = Buffer.concat(out);
      t.true(rewriter.ownSettingsAcknowledged);
      const types: string[] = [];
      for (let off = 24; off < all.length; off += 9 + all.readUIntBE(off, 3)) types.push(`${all[off + 3]}/${all[off + 4]}`);
      t.deepEqual(types, ['4/0', '1/4', '4/1'], `${authority}, ack ${ackFirst ? 'before' : 'after'} the request: one ACK left, the session's`);
      if (authority === 'localhost') t.deepEqual(all, Buffer.concat([PREFACE, SETTINGS, headers, SETTINGS_ACK]));
    }
  }
});

test('without its own SETTINGS sent, the rewriter keeps every SETTINGS ACK', (t) => {
  const rewriter = new AuthorityRewriter();
  const input = Buffer.concat([PREFACE, SETTINGS, SETTINGS_ACK]);
  t.deepEqual(rewriter.push(input), input);
});
