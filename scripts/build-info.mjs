#!/usr/bin/env node
// Records the git commit berth is built from in dist/build-info.json, for `berth --version`. A tree without .git
// (a release tarball) records none, and berth then says "unknown".
import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';

function git(...args) {
  return execFileSync('git', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 10000 }).trim();
}

let commit = '';
try {
  commit = git('rev-parse', '--short=12', 'HEAD');
  if (git('status', '--porcelain', '--untracked-files=no') !== '') commit += '-dirty';
} catch {
  // no git, or not a checkout
}
mkdirSync('dist', { recursive: true });
writeFileSync('dist/build-info.json', JSON.stringify({ commit }) + '\n');
