// Choosing the image for this host out of a manifest list / OCI index.

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

const nodeArchToOci: Record<string, string> = {
  x64: 'amd64',
  arm64: 'arm64',
  arm: 'arm',
  ia32: '386',
  ppc64: 'ppc64le',
  s390x: 's390x',
  riscv64: 'riscv64',
};

export function hostPlatform(): Platform {
  const architecture = nodeArchToOci[process.arch] ?? process.arch;
  const platform: Platform = { os: 'linux', architecture };
  if (architecture === 'arm64') platform.variant = 'v8';
  return platform;
}

function normaliseVariant(architecture: string, variant: string | undefined): string | undefined {
  if (architecture === 'arm64' && (variant === undefined || variant === '' || variant === 'v8')) return 'v8';
  return variant || undefined;
}

export interface PlatformCandidate {
  platform?: { os?: string; architecture?: string; variant?: string };
}

/**
 * Index of the best entry for `want`: an exact os/arch/variant match wins over an entry without a variant.
 * Entries without a platform (attestations, unknown) never match. -1 when none fits.
 */
export function selectPlatform(candidates: PlatformCandidate[], want: Platform = hostPlatform()): number {
  let best = -1;
  let bestScore = -1;
  candidates.forEach((candidate, index) => {
    const p = candidate.platform;
    if (!p || p.os !== want.os || p.architecture !== want.architecture) return;
    const wantVariant = normaliseVariant(want.architecture, want.variant);
    const haveVariant = normaliseVariant(p.architecture, p.variant);
    let score: number;
    if (haveVariant === wantVariant) score = 2;
    else if (haveVariant === undefined) score = 1;
    else return;
    if (score > bestScore) {
      best = index;
      bestScore = score;
    }
  });
  return best;
}
