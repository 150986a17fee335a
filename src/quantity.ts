// Kubernetes resource quantities ("8M", "16Mi", "1.5G", "500k") as pod annotations and operators write them. Strict:
// a value that kubelet would reject, or that does not fit, is an error naming where it came from, never a default.

const FACTORS: Record<string, number> = {
  '': 1,
  m: 1e-3,
  k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60,
};

/** A pod author's text as a message shows it: quoted and cut (it goes into a gRPC status and the log). */
export function shownText(text: string, max = 64): string {
  return JSON.stringify(text.length > max ? `${text.slice(0, max)}…` : text);
}

/**
 * The whole number a quantity stands for, or why it is not one (for the caller's message). A caller quoting a valid
 * one shows it with shownText too: it can still be 100 KiB of leading zeros.
 */
export function parseQuantity(text: string): { value: number } | { problem: string } {
  const shown = shownText(text);
  const m = /^([0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE]([0-9]{1,2}))?(m|k|Ki|[MGTPE]i?)?$/.exec(text.trim());
  if (text.trim() === '') return { problem: 'is empty' };
  if (/^-/.test(text.trim())) return { problem: `${shown} is negative` };
  if (!m || (m[2] !== undefined && m[3] !== undefined)) return { problem: `${shown} is not a quantity (a number with an optional suffix m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei)` };
  const factor = m[2] !== undefined ? 10 ** Number(m[2]) : FACTORS[m[3] ?? '']!;
  const value = Math.ceil(Number(m[1]) * factor);
  // Kubernetes keeps quantities in 64 bits; past 2^53 a value is approximate, which only the caller's bounds see.
  if (!Number.isFinite(value) || value >= 2 ** 63) return { problem: `${shown} is too large (overflows 64 bits)` };
  return { value };
}

/**
 * "<digits>[suffix]" as a whole number, or undefined for anything else: a sign, a fraction, an exponent, an
 * unknown suffix ("10Xi") or a result beyond 2^53 (a cgroup file would get a value other than the one written).
 * For byte counts and rates written to kernel files, where "1.5Mi" or "1e6" is more likely a mistake than a wish.
 */
export function parseWholeQuantity(text: string): number | undefined {
  const m = /^([0-9]{1,19})(|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)$/.exec(text);
  if (!m) return undefined;
  const value = Number(m[1]) * FACTORS[m[2]!]!;
  return Number.isSafeInteger(value) ? value : undefined;
}
