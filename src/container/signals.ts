import { constants } from 'node:os';

// Stop signals by name. A container's stop signal comes from its CRI config (`stop_signal`, an enum of names), else
// from its image's STOPSIGNAL (a name with or without SIG, or a number), else SIGTERM. berth keeps the canonical
// name (SIGTERM, SIGRTMIN+3) in the record and turns it into a number only to send it, so the record and
// ContainerStatus say what the user would recognise.

/** glibc's real-time range on Linux: the kernel's 32 and 33 are taken by the threads library, as runc and Go see it too. */
const SIGRTMIN = 34;
const SIGRTMAX = 64;

const plain = constants.signals as Record<string, number>;
/** Aliases Node does not list. */
const aliases: Record<string, string> = { SIGCLD: 'SIGCHLD' };

/** The number of a canonical signal name, or undefined when it is none on Linux. */
export function signalNumber(name: string): number | undefined {
  const rt = /^SIGRT(MIN|MAX)(?:([+-])(\d{1,2}))?$/.exec(name);
  if (rt) {
    const offset = rt[3] === undefined ? 0 : Number(rt[3]) * (rt[2] === '+' ? 1 : -1);
    const n = (rt[1] === 'MIN' ? SIGRTMIN : SIGRTMAX) + offset;
    return n >= SIGRTMIN && n <= SIGRTMAX ? n : undefined;
  }
  const canonical = aliases[name] ?? name;
  return Object.hasOwn(plain, canonical) ? plain[canonical] : undefined;
}

/** A canonical name for a signal number, preferring the names Node lists (SIGIO over SIGPOLL follows Node's order). */
function nameOf(n: number): string | undefined {
  if (n >= SIGRTMIN && n <= SIGRTMAX) {
    const fromMin = n - SIGRTMIN;
    const fromMax = SIGRTMAX - n;
    // As glibc's strsignal and Go's names: the first half counts up from RTMIN, the rest down from RTMAX.
    if (fromMin <= 15) return fromMin === 0 ? 'SIGRTMIN' : `SIGRTMIN+${fromMin}`;
    return fromMax === 0 ? 'SIGRTMAX' : `SIGRTMAX-${fromMax}`;
  }
  return Object.entries(plain).find(([, v]) => v === n)?.[0];
}

/**
 * An image's STOPSIGNAL ("SIGQUIT", "quit", "3", "RTMIN+2") as a canonical name; undefined when it names no Linux
 * signal (the caller falls back to SIGTERM, as containerd does for an image it cannot read, and says so).
 */
export function parseStopSignal(text: string): string | undefined {
  const raw = text.trim().toUpperCase();
  if (raw === '') return undefined;
  if (/^\d+$/.test(raw)) return nameOf(Number(raw));
  const name = raw.startsWith('SIG') ? raw : `SIG${raw}`;
  if (signalNumber(name) === undefined) return undefined;
  return /^SIGRT/.test(name) ? nameOf(signalNumber(name)!) : (aliases[name] ?? name);
}

/** What kill(2) is given: the name when Node knows it (logs and test doubles read better), else the number. */
export function signalToSend(name: string): NodeJS.Signals | number {
  if (Object.hasOwn(plain, name)) return name as NodeJS.Signals;
  return signalNumber(name) ?? 'SIGTERM';
}
