import { Cidr, formatCidr, formatIp, overlaps } from './cidr.js';

// The host's IPv4 routes from /proc/net/route (main table): which device carries the default route, and whether a
// pod subnet would collide with a route the host already has. Pure parsing.

export interface Route {
  iface: string;
  dest: Cidr;
  gateway: string;
}

/** /proc/net/route prints addresses as host-order (little-endian here) hex. */
function hexAddr(hex: string): number {
  const n = parseInt(hex, 16) >>> 0;
  return (((n & 0xff) << 24) | (((n >>> 8) & 0xff) << 16) | (((n >>> 16) & 0xff) << 8) | (n >>> 24)) >>> 0;
}

function prefixOf(mask: number): number {
  let p = 0;
  while (p < 32 && (mask & (0x80000000 >>> p)) !== 0) p++;
  return p;
}

export function parseProcRoutes(text: string): Route[] {
  const routes: Route[] = [];
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const [iface, dest, gw, , , , , mask] = f;
    const base = hexAddr(dest!);
    const prefix = prefixOf(hexAddr(mask!));
    routes.push({ iface: iface!, dest: { base, prefix }, gateway: formatIp(hexAddr(gw!)) });
  }
  return routes;
}

export function defaultRouteDevice(routes: Route[]): string | undefined {
  return routes.find((r) => r.dest.prefix === 0)?.iface;
}

/** A route (other than the default route and routes on our own bridge) that overlaps `subnet`, described. */
export function routeCollision(subnet: Cidr, routes: Route[], ownBridge: string): string | undefined {
  const hit = routes.find((r) => r.dest.prefix > 0 && r.iface !== ownBridge && overlaps(r.dest, subnet));
  if (!hit) return undefined;
  const via = hit.gateway !== '0.0.0.0' ? ` via ${hit.gateway}` : '';
  return `pod subnet ${formatCidr(subnet)} collides with the host route ${formatCidr(hit.dest)}${via} dev ${hit.iface}`;
}
