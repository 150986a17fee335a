import test from 'ava';
import { FAULT_STEPS, parseFault } from '../../src/fault.js';

// BERTH_FAULT's syntax: <step>:<n>, with the step from the one list the services and the fault walk share.

test('BERTH_FAULT unset or empty injects nothing', (t) => {
  t.is(parseFault(undefined), undefined);
  t.is(parseFault(''), undefined);
});

test('BERTH_FAULT=<step>:<n> names a step of the list and the arrival to die at', (t) => {
  t.deepEqual(parseFault('container.create.shim:2'), { step: 'container.create.shim', nth: 2 });
  for (const step of FAULT_STEPS) t.deepEqual(parseFault(`${step}:1`), { step, nth: 1 });
});

test('a misspelt step or a bad count is refused with the list, never silently ignored', (t) => {
  t.regex(t.throws(() => parseFault('pod.run.nope:1'))!.message, /no step named "pod.run.nope"; steps: pod.run.name/);
  for (const bad of ['pod.run.name', 'pod.run.name:0', 'pod.run.name:-1', 'pod.run.name:x', ':1']) t.throws(() => parseFault(bad), undefined, bad);
});

test('the step names are unique', (t) => {
  t.is(new Set(FAULT_STEPS).size, FAULT_STEPS.length);
});
