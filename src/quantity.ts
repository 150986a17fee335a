// Sizes and rates as Kubernetes writes them ("10Mi", "1G", "512k", "1048576"): the form pod annotations and
// operators use. Only whole, non-negative amounts are accepted; anything a cgroup file could not hold is refused.

const SUFFIXES: Record<string, number> = {
  '': 1,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60,
};

/**
 * "<digits>[suffix]" as a whole number, or undefined for anything else: a sign, a fraction, an exponent, an
 * unknown suffix ("10Xi") or a result beyond 2^53 (a cgroup file would get a value other than the one written).
 */
export function parseQuantity(text: string): number | undefined {
  const m = /^([0-9]{1,19})(|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)$/.exec(text);
  if (!m) return undefined;
  const value = Number(m[1]) * SUFFIXES[m[2]];
  return Number.isSafeInteger(value) ? value : undefined;
}
