import test, { type ExecutionContext } from 'ava';
import { promises as fs, lstatSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BerthError } from '../../src/errors.js';
import { entryPath, hardlinkTarget, LayerRoot, whiteoutOf } from '../../src/image/layer/safe-path.js';

// Creating parents chowns them to root:root: only root can do that.
const rootTest = process.getuid?.() === 0 ? test : test.skip;

/** Checks that `fn` refuses with INVALID_ARGUMENT and a message matching `message`. */
function refuses(t: ExecutionContext, fn: () => unknown, message: RegExp): void {
  const err = t.throws(fn);
  t.true(err instanceof BerthError, String(err));
  t.is((err as BerthError).kind, 'invalid_argument');
  t.regex(err!.message, message);
}

/** A temp dir holding the layer root `<box>/root` and a sibling `<box>/outside`. */
async function box(t: ExecutionContext): Promise<{ root: string; outside: string }> {
  const dir = await fs.mkdtemp(path.join(os.tmpdir(), 'berth-safe-path-'));
  t.teardown(() => fs.rm(dir, { recursive: true, force: true }));
  const root = path.join(dir, 'root');
  const outside = path.join(dir, 'outside');
  await fs.mkdir(root);
  await fs.mkdir(outside);
  return { root, outside };
}

test('entry names are normalized to paths relative to the root', (t) => {
  t.is(entryPath('usr/bin/sh', 'x'), 'usr/bin/sh');
  t.is(entryPath('./usr//bin/./sh', 'x'), 'usr/bin/sh');
  t.is(entryPath('usr/lib/', 'x'), 'usr/lib');
  t.is(entryPath('usr/../etc/passwd', 'x'), 'etc/passwd', '.. that stays inside is fine');
  t.is(entryPath('a/b/../../c', 'x'), 'c');
  t.is(entryPath('./', 'x'), '', 'the root itself');
  t.is(entryPath('.', 'x'), '');
  t.is(entryPath('a/..', 'x'), '');
  t.is(entryPath('..foo/bar', 'x'), '..foo/bar', 'a name that only starts with dots is no escape');
});

test('entry names that leave the root through .. are refused, naming the entry', (t) => {
  for (const name of ['..', '../', '../etc/passwd', 'a/../../etc/passwd', './../x', 'a/b/../../../x']) {
    refuses(t, () => entryPath(name, name), new RegExp(`^layer entry ${name.replace(/\./g, '\\.')} escapes the layer root$`));
  }
});

test('absolute entry names are refused, not re-rooted', (t) => {
  refuses(t, () => entryPath('/etc/passwd', '/etc/passwd'), /layer entry \/etc\/passwd escapes the layer root: absolute path/);
  refuses(t, () => entryPath('/', '/'), /escapes the layer root: absolute path/);
  refuses(t, () => entryPath('//tmp/x', '//tmp/x'), /absolute path/);
});

test('a NUL byte in a name is refused', (t) => {
  refuses(t, () => entryPath('etc/passwd\0.txt', 'e'), /layer entry e: name contains a NUL byte/);
});

test('long names are kept whole, and a long .. chain is still caught', (t) => {
  const deep = Array.from({ length: 200 }, (_, i) => `dir${i}`).join('/');
  t.true(deep.length > 1000);
  t.is(entryPath(`${deep}/file`, 'x'), `${deep}/file`);
  t.is(entryPath(`${'x'.repeat(255)}/${'y'.repeat(255)}`, 'x'), `${'x'.repeat(255)}/${'y'.repeat(255)}`);
  const up = `${deep}/${'../'.repeat(200)}`;
  t.is(entryPath(up + 'file', 'x'), 'file', 'exactly back to the root');
  refuses(t, () => entryPath(up + '../file', 'long'), /layer entry long escapes the layer root/);
});

test('hardlink targets must be inside the root and not the root itself', (t) => {
  t.is(hardlinkTarget('usr/bin/ls', 'l'), 'usr/bin/ls');
  t.is(hardlinkTarget('./usr/../bin/ls', 'l'), 'bin/ls');
  refuses(t, () => hardlinkTarget('/etc/shadow', 'l'), /layer entry l escapes the layer root: hardlink target \/etc\/shadow is absolute/);
  refuses(t, () => hardlinkTarget('../../etc/shadow', 'l'), /escapes the layer root: hardlink target \.\.\/\.\.\/etc\/shadow leaves it/);
  refuses(t, () => hardlinkTarget('a/../../x', 'l'), /hardlink target a\/\.\.\/\.\.\/x leaves it/);
  refuses(t, () => hardlinkTarget('', 'l'), /layer entry l: hardlink has an empty target/);
  refuses(t, () => hardlinkTarget('.', 'l'), /layer entry l: hardlink to the layer root/);
  refuses(t, () => hardlinkTarget('a/..', 'l'), /hardlink to the layer root/);
  refuses(t, () => hardlinkTarget('x\0y', 'l'), /name contains a NUL byte/);
});

test('whiteouts name what they hide, in their own directory', (t) => {
  t.is(whiteoutOf('usr/bin/sh', 'x'), undefined);
  t.is(whiteoutOf('usr/bin/x.wh.sh', 'x'), undefined, 'only a .wh. prefix marks a whiteout');
  t.deepEqual(whiteoutOf('usr/bin/.wh.sh', 'x'), { kind: 'file', target: 'usr/bin/sh' });
  t.deepEqual(whiteoutOf('.wh.etc', 'x'), { kind: 'file', target: 'etc' });
  t.deepEqual(whiteoutOf('.wh..hidden', 'x'), { kind: 'file', target: '.hidden' });
  t.deepEqual(whiteoutOf('var/cache/.wh..wh..opq', 'x'), { kind: 'opaque', dir: 'var/cache' });
  t.deepEqual(whiteoutOf('.wh..wh..opq', 'x'), { kind: 'opaque', dir: '' });
  t.deepEqual(whiteoutOf('a/.wh..wh.plnk', 'x'), { kind: 'metadata' });
});

test('whiteouts naming the directory itself, its parent or nothing are refused', (t) => {
  for (const rel of ['a/.wh.', 'a/.wh..', 'a/.wh...', '.wh..', '.wh...']) {
    refuses(t, () => whiteoutOf(rel, rel), new RegExp(`^layer entry ${rel.replace(/\./g, '\\.')}: malformed whiteout$`));
  }
});

test('paths under the root are joined to it, the root being the empty path', async (t) => {
  const { root } = await box(t);
  const tree = new LayerRoot(root);
  t.is(tree.abs(''), root);
  t.is(tree.abs('usr/bin'), `${root}/usr/bin`);
});

test('existing parent directories are accepted without creating anything', async (t) => {
  const { root } = await box(t);
  await fs.mkdir(path.join(root, 'usr/bin'), { recursive: true });
  const tree = new LayerRoot(root);
  t.is(tree.ensureParents('usr/bin/sh', 'usr/bin/sh'), 0);
  t.is(tree.ensureParents('top-level', 'top-level'), 0);
  t.notThrows(() => tree.checkParents('usr/bin/sh', 'l', 'usr/bin/sh'));
});

rootTest('missing parent directories are made 0755 root:root and counted', async (t) => {
  const { root } = await box(t);
  await fs.mkdir(path.join(root, 'a'));
  const tree = new LayerRoot(root);
  t.is(tree.ensureParents('a/b/c/file', 'a/b/c/file'), 2);
  for (const dir of ['a/b', 'a/b/c']) {
    const st = lstatSync(path.join(root, dir));
    t.true(st.isDirectory(), dir);
    t.is(st.mode & 0o7777, 0o755, dir);
    t.is(st.uid, 0, dir);
    t.is(st.gid, 0, dir);
  }
  t.is(tree.ensureParents('a/b/c/other', 'a/b/c/other'), 0, 'known directories are not made twice');
});

test('a symlinked parent is refused and nothing is created through it', async (t) => {
  const { root, outside } = await box(t);
  await fs.symlink(outside, path.join(root, 'link'));
  await fs.symlink('..', path.join(root, 'up'));
  const tree = new LayerRoot(root);
  refuses(t, () => tree.ensureParents('link/file', 'link/file'), /layer entry link\/file escapes the layer root: link is a symlink/);
  refuses(t, () => tree.ensureParents('link/a/b/file', 'e'), /escapes the layer root: link is a symlink/);
  refuses(t, () => tree.ensureParents('up/root/x', 'e'), /escapes the layer root: up is a symlink/);
  t.deepEqual(await fs.readdir(outside), []);
  t.deepEqual((await fs.readdir(root)).sort(), ['link', 'up']);
});

test('a symlinked parent deeper down is refused', async (t) => {
  const { root, outside } = await box(t);
  await fs.mkdir(path.join(root, 'usr'));
  await fs.symlink(outside, path.join(root, 'usr/lib'));
  const tree = new LayerRoot(root);
  refuses(t, () => tree.ensureParents('usr/lib/x/libc.so', 'e'), /escapes the layer root: usr\/lib is a symlink/);
  t.deepEqual(await fs.readdir(outside), []);
});

test('a parent that is a file is refused as not a directory', async (t) => {
  const { root } = await box(t);
  await fs.writeFile(path.join(root, 'f'), '');
  const tree = new LayerRoot(root);
  refuses(t, () => tree.ensureParents('f/x', 'f/x'), /^layer entry f\/x: parent f is not a directory$/);
});

test('a directory replaced by a symlink is checked again once forgotten', async (t) => {
  const { root, outside } = await box(t);
  await fs.mkdir(path.join(root, 'd'));
  const tree = new LayerRoot(root);
  t.is(tree.ensureParents('d/x', 'd/x'), 0);
  await fs.rmdir(path.join(root, 'd'));
  await fs.symlink(outside, path.join(root, 'd'));
  tree.forget('d');
  refuses(t, () => tree.ensureParents('d/x', 'd/x'), /escapes the layer root: d is a symlink/);
  refuses(t, () => tree.checkParents('d/x', 'l', 'd/x'), /goes through symlink d/);
});

test('forgetting a directory forgets what is below it', async (t) => {
  const { root, outside } = await box(t);
  await fs.mkdir(path.join(root, 'a/b'), { recursive: true });
  const tree = new LayerRoot(root);
  t.is(tree.ensureParents('a/b/x', 'e'), 0);
  await fs.rm(path.join(root, 'a'), { recursive: true });
  await fs.mkdir(path.join(root, 'a'));
  await fs.symlink(outside, path.join(root, 'a/b'));
  tree.forget('a');
  refuses(t, () => tree.ensureParents('a/b/x', 'e'), /escapes the layer root: a\/b is a symlink/);
  t.deepEqual(await fs.readdir(outside), []);
});

test('hardlink targets through a symlink, or whose parents are missing or files, are refused', async (t) => {
  const { root } = await box(t);
  await fs.symlink('/etc', path.join(root, 'etc'));
  await fs.writeFile(path.join(root, 'f'), '');
  await fs.mkdir(path.join(root, 'usr'));
  const tree = new LayerRoot(root);
  refuses(t, () => tree.checkParents('etc/shadow', 'l', 'etc/shadow'), /^layer entry l escapes the layer root: hardlink target etc\/shadow goes through symlink etc$/);
  refuses(t, () => tree.checkParents('nope/x', 'l', 'nope/x'), /^layer entry l: hardlink target nope\/x does not exist$/);
  refuses(t, () => tree.checkParents('f/x', 'l', 'f/x'), /^layer entry l: hardlink target f\/x does not exist$/);
  t.notThrows(() => tree.checkParents('usr/x', 'l', 'usr/x'), 'a missing final component is the link(2) call\'s to report');
  t.deepEqual((await fs.readdir(root)).sort(), ['etc', 'f', 'usr'], 'checking creates nothing');
});
