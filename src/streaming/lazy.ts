import { errorMessage } from '../errors.js';
import { rejectUpgrade } from './http.js';
import type { UpgradeHandler } from './types.js';

// The WebSocket and SPDY protocol code (and the ws package) cost the daemon ~3 MiB of resident memory from start
// (measured: RSS +3.2 MiB, heap +0.5 MiB when imported after the rest of the daemon), yet most nodes see an exec,
// attach or port-forward rarely. Each is imported at its first upgrade instead; that first session waits for the
// import once (tens of ms), later ones not at all.

/** An upgrade handler that imports the real one (`load`) at its first upgrade, then hands every upgrade to it. */
export function lazyUpgradeHandler(load: () => Promise<UpgradeHandler>): UpgradeHandler {
  let loaded: Promise<UpgradeHandler> | undefined;
  return (req, socket, head, target, ctx) => {
    loaded ??= load();
    loaded.then(
      (handler) => {
        if (socket.destroyed) return;
        // As the server does for a handler it calls itself.
        try {
          handler(req, socket, head, target, ctx);
        } catch (err) {
          ctx.log.error('streaming session failed to start', { error: errorMessage(err) });
          socket.destroy();
        }
      },
      (err: unknown) => {
        // A failed import is not kept: the next session tries again.
        loaded = undefined;
        ctx.log.error('loading the streaming protocol failed', { error: errorMessage(err) });
        rejectUpgrade(socket, 500, 'internal error');
      },
    );
  };
}
