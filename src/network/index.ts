import { BerthConfig } from '../config/schema.js';
import { Logger } from '../log.js';
import { LoopbackOnly, PodNetwork } from './types.js';

/** Chooses the pod network backend from `[network] mode`. */
export async function createPodNetwork(_config: BerthConfig, _paths: { root: string; stateDir: string }, _log: Logger): Promise<PodNetwork> {
  return new LoopbackOnly();
}
