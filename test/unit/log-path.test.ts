import test from 'ava';
import { BerthError } from '../../src/errors.js';
import { logLocation } from '../../src/container/log-path.js';

test('a relative log_path is placed beneath the log directory, normalised', (t) => {
  t.deepEqual(logLocation('/var/log/pods/p', 'c/0.log'), { directory: '/var/log/pods/p', relative: 'c/0.log', full: '/var/log/pods/p/c/0.log' });
  t.is(logLocation('/var/log/pods/p', './c//0.log')?.relative, 'c/0.log');
  t.is(logLocation('', 'c/0.log'), undefined, 'no log directory: no log');
  t.is(logLocation('/var/log/pods/p', ''), undefined);
});

test('.., absolute, empty or directory-only log paths are INVALID_ARGUMENT naming config.log_path', (t) => {
  for (const bad of ['../x.log', 'a/../../x.log', 'a/..', '..', '/etc/x.log', '.', 'c/', 'a\0b']) {
    const err = t.throws(() => logLocation('/var/log/pods/p', bad), undefined, JSON.stringify(bad)) as BerthError;
    t.is(err.kind, 'invalid_argument');
    t.regex(err.message, /config\.log_path/);
  }
});
