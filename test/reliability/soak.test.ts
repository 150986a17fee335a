import test from 'ava';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { SoakReport } from '../../soak/main.js';

// The soak (npm run soak) in a short mode, so that CI runs it: one minute of pod cycles with a berth restart every
// 10 s, by SIGTERM and SIGKILL in turn. The soak checks itself (resident pods untouched by every restart, each
// cycle's answers, the leak check after its teardown); this test checks that it did all of it and found nothing.

const here = path.dirname(fileURLToPath(import.meta.url));
const SOAK = path.resolve(here, '../../soak/main.js');

test('a one-minute soak with berth restarted by SIGTERM and SIGKILL completes cycles without unexpected errors and leaves nothing', async (t) => {
  t.timeout(8 * 60_000);
  const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) =>
    execFile(process.execPath, [SOAK, '--minutes', '1', '--restart-every', '10', '--workers', '3', '--json'], { timeout: 7 * 60_000, maxBuffer: 16 * 2 ** 20 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }),
    ),
  );
  t.log(stderr.trim());
  const report = JSON.parse(stdout) as SoakReport;
  t.log(JSON.stringify(report));
  t.true(report.cycles > 0, 'pods were cycled');
  t.true(report.restarts.sigterm >= 1 && report.restarts.sigkill >= 1, 'berth was restarted by SIGTERM and by SIGKILL');
  t.deepEqual(report.unexpectedErrors, {}, 'no error but those a restart caused');
  t.deepEqual(report.leaks, []);
  t.is(report.doctorOrphans, 0, 'berth doctor of the root finds nothing');
  t.true((report.rssKiB.start ?? 0) > 0 && (report.rssKiB.end ?? 0) > 0, "berth's RSS is measured at start and end");
  t.true(report.ok);
  t.is(code, 0, 'the soak exits 0 when it found nothing');
});
