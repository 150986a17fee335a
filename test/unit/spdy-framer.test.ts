import test from 'ava';
import { createHash } from 'node:crypto';
import zlib from 'node:zlib';
import { spdyHeaderDictionary } from '../../src/streaming/spdy/dictionary.js';
import { SpdyProtocolError } from '../../src/streaming/spdy/errors.js';
import {
  encodeDataHeader,
  encodeGoAway,
  encodePing,
  encodeRstStream,
  encodeSettings,
  encodeSynReply,
  encodeSynStream,
  encodeWindowUpdate,
  FrameReader,
  type FrameEvent,
} from '../../src/streaming/spdy/frames.js';
import { adler32, HeaderInflater, StoredZlibWriter } from '../../src/streaming/spdy/header-compression.js';
import { decodeHeaderBlock, encodeHeaderBlock } from '../../src/streaming/spdy/header-block.js';
import { ResizeDecoder } from '../../src/streaming/resize.js';

const limits = { maxPairs: 64, maxBlockBytes: 64 * 1024 };
const reader = () => new FrameReader({ maxControlPayload: 64 * 1024 });

test('the header dictionary is the 1423 bytes of the SPDY/3 spec (sha256 and Adler-32 as Go spdy has them)', (t) => {
  t.is(spdyHeaderDictionary.length, 1423);
  t.is(createHash('sha256').update(spdyHeaderDictionary).digest('hex'), '51d27341373f923f3cd88e1eb7162aeaa3723d7585ff2399201dc06498407f02');
  t.is(adler32(spdyHeaderDictionary), 0xe3c6a7c2);
  t.is(adler32(Buffer.from('Wikipedia')), 0x11e60398);
});

test('control frames have the byte layout of the spec', (t) => {
  t.deepEqual(encodePing(1), Buffer.from('80030006000000040000000' + '1', 'hex'));
  t.deepEqual(encodeRstStream(5, 3), Buffer.from('80030003000000080000000500000003', 'hex'));
  t.deepEqual(encodeGoAway(7, 0), Buffer.from('80030007000000080000000700000000', 'hex'));
  t.deepEqual(encodeWindowUpdate(1, 65536), Buffer.from('80030009000000080000000100010000', 'hex'));
  t.deepEqual(encodeSettings([{ id: 7, value: 65536, flags: 1 }]), Buffer.from('800300040000000c00000001010000070' + '0010000', 'hex'));
  // SYN_STREAM: FIN flag, length 10 + block, stream id, associated id, priority in the top 3 bits, slot.
  t.deepEqual(encodeSynStream(3, Buffer.from('ab', 'hex'), { fin: true, priority: 7 }), Buffer.from('800300010100000b0000000300000000e000ab', 'hex'));
  t.deepEqual(encodeSynReply(3, Buffer.alloc(0)), Buffer.from('80030002000000040000000' + '3', 'hex'));
  t.deepEqual(encodeDataHeader(3, 5, true), Buffer.from('000000030100000' + '5', 'hex'));
});

test('every control frame decodes back to what was encoded, whatever the chunking', (t) => {
  const wire = Buffer.concat([
    encodeSynStream(1, Buffer.from('xyz'), { priority: 2 }),
    encodeSynReply(2, Buffer.from('q'), true),
    encodeRstStream(1, 5),
    encodeSettings([{ id: 4, value: 100 }]),
    encodePing(7),
    encodeGoAway(9, 1),
    encodeWindowUpdate(1, 10),
    encodeDataHeader(1, 3, true),
    Buffer.from('abc'),
  ]);
  for (const step of [1, 3, 7, wire.length]) {
    const r = reader();
    const events: FrameEvent[] = [];
    for (let at = 0; at < wire.length; at += step) events.push(...r.push(wire.subarray(at, at + step)));
    const controls = events.filter((e) => e.kind === 'control').map((e) => (e.kind === 'control' ? e.frame : null));
    t.deepEqual(controls, [
      { type: 'syn_stream', streamId: 1, associatedId: 0, priority: 2, fin: false, unidirectional: false, headerBlock: Buffer.from('xyz') },
      { type: 'syn_reply', streamId: 2, fin: true, headerBlock: Buffer.from('q') },
      { type: 'rst_stream', streamId: 1, status: 5 },
      { type: 'settings', clear: false, entries: [{ flags: 0, id: 4, value: 100 }] },
      { type: 'ping', id: 7 },
      { type: 'goaway', lastGoodStreamId: 9, status: 1 },
      { type: 'window_update', streamId: 1, delta: 10 },
    ]);
    const data = events.filter((e) => e.kind === 'data');
    t.is(Buffer.concat(data.map((e) => (e.kind === 'data' ? e.chunk : Buffer.alloc(0)))).toString(), 'abc', `step ${step}`);
    t.true(data.at(-1)!.kind === 'data' && (data.at(-1) as { fin: boolean }).fin);
    t.is(data.filter((e) => (e as { fin: boolean }).fin).length, 1);
  }
});

test('an empty data frame with FIN is delivered as end of stream', (t) => {
  const events = reader().push(encodeDataHeader(9, 0, true));
  t.deepEqual(events, [{ kind: 'data', streamId: 9, chunk: Buffer.alloc(0), fin: true }]);
});

test('malformed frames are protocol errors', (t) => {
  const bad: [string, Buffer][] = [
    ['version 2', Buffer.from('80020006000000040000000' + '1', 'hex')],
    ['short PING', Buffer.from('8003000600000003000000', 'hex')],
    ['PING with flags', Buffer.from('80030006010000040000000' + '1', 'hex')],
    ['RST_STREAM status 0', Buffer.from('80030003000000080000000100000000', 'hex')],
    ['RST_STREAM stream 0', Buffer.from('80030003000000080000000000000001', 'hex')],
    ['long GOAWAY', Buffer.from('8003000700000009000000010000000000', 'hex')],
    ['SETTINGS count mismatch', Buffer.from('800300040000000c000000020000000400000001', 'hex')],
    ['WINDOW_UPDATE delta 0', Buffer.from('80030009000000080000000100000000', 'hex')],
    ['SYN_STREAM stream 0', Buffer.from('800300010000000a00000000000000000000', 'hex')],
    ['SYN_STREAM too short', Buffer.from('80030001000000060000000100000000', 'hex')],
    ['data for stream 0', Buffer.from('0000000000000001aa', 'hex')],
    ['control frame over the limit', Buffer.from('8003000100ffffff', 'hex')],
  ];
  for (const [name, bytes] of bad) t.throws(() => reader().push(bytes), { instanceOf: SpdyProtocolError }, name);
});

test('a control frame of an unknown type is skipped (spec 2.2.1)', (t) => {
  const events = reader().push(Buffer.concat([Buffer.from('8003000a00000002ffff', 'hex'), encodePing(3)]));
  t.deepEqual(events.map((e) => (e.kind === 'control' ? e.frame.type : e.kind)), ['unknown', 'ping']);
});

test('header blocks round-trip, with multiple values joined by NUL', (t) => {
  const block = encodeHeaderBlock([
    ['StreamType', 'stdout'],
    ['x', ['a', 'b']],
  ]);
  t.deepEqual(block, Buffer.from('00000002' + '0000000a' + Buffer.from('streamtype').toString('hex') + '00000006' + Buffer.from('stdout').toString('hex') + '00000001' + '78' + '00000003' + '610062', 'hex'));
  t.deepEqual([...decodeHeaderBlock(block, limits)], [
    ['streamtype', ['stdout']],
    ['x', ['a', 'b']],
  ]);
});

test('hostile header blocks are refused', (t) => {
  const pair = (name: string, value: string) => {
    const n = Buffer.from(name);
    const v = Buffer.from(value);
    const b = Buffer.alloc(8 + n.length + v.length);
    b.writeUInt32BE(n.length, 0);
    n.copy(b, 4);
    b.writeUInt32BE(v.length, 4 + n.length);
    v.copy(b, 8 + n.length);
    return b;
  };
  const count = (n: number) => Buffer.from(n.toString(16).padStart(8, '0'), 'hex');
  const cases: [string, Buffer][] = [
    ['uppercase name', Buffer.concat([count(1), pair('Port', '80')])],
    ['repeated name', Buffer.concat([count(2), pair('port', '80'), pair('port', '81')])],
    ['empty name', Buffer.concat([count(1), pair('', '80')])],
    ['count beyond the pairs present', Buffer.concat([count(2), pair('port', '80')])],
    ['length beyond the block', Buffer.from('0000000100001000', 'hex')],
    ['too many pairs', count(1000)],
    ['stray bytes', Buffer.concat([count(1), pair('port', '80'), Buffer.from('zz')])],
  ];
  for (const [name, block] of cases) t.throws(() => decodeHeaderBlock(block, limits), { instanceOf: SpdyProtocolError }, name);
});

test('stored-zlib header blocks inflate with the dictionary, one context across blocks', async (t) => {
  const writer = new StoredZlibWriter();
  const inflater = new HeaderInflater(64 * 1024);
  const first = encodeHeaderBlock([['streamtype', 'error']]);
  const second = encodeHeaderBlock([['streamtype', 'stdout'], ['port', '80']]);
  const w1 = writer.encode(first);
  t.deepEqual(w1.subarray(0, 6), Buffer.from('7820e3c6a7c2', 'hex'), 'zlib header names the SPDY dictionary');
  t.deepEqual(w1.subarray(6), Buffer.concat([Buffer.from('00' + '1b00' + 'e4ff', 'hex'), first, Buffer.from('000000ffff', 'hex')]), 'one stored block, then the sync-flush marker');
  t.deepEqual(await inflater.inflateBlock(w1), first);
  t.deepEqual(await inflater.inflateBlock(writer.encode(second)), second);
  inflater.close();
});

test('blocks deflated by a real zlib (as Go does: dictionary, sync flush per block) inflate in order', async (t) => {
  const deflate = zlib.createDeflate({ dictionary: spdyHeaderDictionary, level: 9 });
  const blocks = [encodeHeaderBlock([['streamtype', 'error']]), encodeHeaderBlock([['streamtype', 'stdin']]), encodeHeaderBlock([['streamtype', 'stdout']])];
  const compressed: Buffer[] = [];
  for (const b of blocks) {
    const chunks: Buffer[] = [];
    const onData = (c: Buffer) => chunks.push(c);
    deflate.on('data', onData);
    deflate.write(b);
    await new Promise<void>((resolve) => deflate.flush(zlib.constants.Z_SYNC_FLUSH, () => resolve()));
    await new Promise((resolve) => setImmediate(resolve));
    deflate.off('data', onData);
    compressed.push(Buffer.concat(chunks));
  }
  deflate.destroy();
  const inflater = new HeaderInflater(64 * 1024);
  const out = await Promise.all(compressed.map((c) => inflater.inflateBlock(c)));
  t.deepEqual(out, blocks);
  inflater.close();
});

test('a header block that inflates past the cap is a protocol error (zip bomb)', async (t) => {
  const bomb = zlib.deflateSync(Buffer.alloc(4 * 1024 * 1024), { dictionary: spdyHeaderDictionary, finishFlush: zlib.constants.Z_SYNC_FLUSH });
  t.true(bomb.length < 8 * 1024);
  const inflater = new HeaderInflater(64 * 1024);
  await t.throwsAsync(inflater.inflateBlock(bomb), { instanceOf: SpdyProtocolError, message: /inflates past/ });
  await t.throwsAsync(inflater.inflateBlock(Buffer.from('00', 'hex')), { instanceOf: SpdyProtocolError });
});

test('a header block under another dictionary does not inflate', async (t) => {
  const wrong = zlib.deflateSync(encodeHeaderBlock([['a', 'b']]), { dictionary: Buffer.from('not the spdy dictionary'), finishFlush: zlib.constants.Z_SYNC_FLUSH });
  const inflater = new HeaderInflater(64 * 1024);
  await t.throwsAsync(inflater.inflateBlock(wrong), { instanceOf: SpdyProtocolError });
});

test('resize messages are read as Go writes them, split anywhere; a bad one ends the stream', (t) => {
  const d = new ResizeDecoder();
  const wire = Buffer.from('{"Width":80,"Height":24}\n{"width":100,"height":50}\n');
  const sizes = [];
  for (let i = 0; i < wire.length; i += 5) sizes.push(...d.push(wire.subarray(i, i + 5)));
  t.deepEqual(sizes, [{ width: 80, height: 24 }, { width: 100, height: 50 }]);
  t.deepEqual(d.push(Buffer.from('{"Width":-1,"Height":2}{"Width":1,"Height":2}')), []);
  t.deepEqual(d.push(Buffer.from('{"Width":1,"Height":2}')), []);
  const e = new ResizeDecoder();
  t.deepEqual(e.push(Buffer.from('x' + '{"Width":1,"Height":2}')), []);
  const f = new ResizeDecoder();
  t.deepEqual(f.push(Buffer.from('{"Width":' + ' '.repeat(5000))), [], 'an endless object is dropped, not buffered');
});
