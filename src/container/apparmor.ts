import { failedPrecondition, invalidArgument } from '../errors.js';
import type { LsmHost } from '../kernel/lsm.js';

// Which AppArmor profile a container runs under. The request comes from the CRI layer as one string
// (apparmorRequest): '' (not set), 'unconfined', 'runtime/default' or 'localhost/<name>'.
//
//                       | kernel with AppArmor                               | kernel without AppArmor
// ----------------------+----------------------------------------------------+---------------------------------
// not set               | the default profile if loaded, else unconfined and | unconfined
//                       | a warning; privileged: unconfined (as containerd)  |
// Unconfined            | unconfined                                         | unconfined
// RuntimeDefault        | the default profile ([runtime] apparmor_profile);  | unconfined (as containerd: the
//                       | not loaded: FAILED_PRECONDITION                    | default is "what the node has")
// Localhost <name>      | <name>; not loaded: FAILED_PRECONDITION            | FAILED_PRECONDITION (as containerd
//                       |                                                    | and CRI-O: never run unconfined what
//                       |                                                    | asked for a named profile)
//
// FAILED_PRECONDITION, not INVALID_ARGUMENT: the request is well formed, the node lacks what it needs; kubelet shows
// the message as CreateContainerError and retries, so loading the profile later heals the pod.

export const APPARMOR_FIELD = 'config.linux.security_context.apparmor';

export interface AppArmorChoice {
  /** The profile the init asks for; undefined = unconfined. */
  profile?: string;
  /** Said once per container when berth runs it less confined than a default would have: logged as a warning. */
  warning?: string;
}

export async function chooseAppArmorProfile(request: string, privileged: boolean, defaultProfile: string, host: Pick<LsmHost, 'apparmorEnabled' | 'apparmorProfileLoaded'>): Promise<AppArmorChoice> {
  const localhost = request.startsWith('localhost/') ? request.slice('localhost/'.length) : undefined;
  if (localhost !== undefined && !/^[^\s\0]{1,255}$/.test(localhost)) {
    throw invalidArgument(`${APPARMOR_FIELD}.localhost_ref "${localhost}" is not an AppArmor profile name`);
  }
  if (request !== '' && request !== 'unconfined' && request !== 'runtime/default' && localhost === undefined) {
    throw invalidArgument(`${APPARMOR_FIELD}: "${request}" is not unconfined, runtime/default or localhost/<profile>`);
  }
  if (!host.apparmorEnabled()) {
    if (localhost !== undefined) {
      throw failedPrecondition(`${APPARMOR_FIELD}.localhost_ref: AppArmor profile "${localhost}" was asked for, but this node's kernel has no AppArmor enabled`);
    }
    return {};
  }
  if (request === 'unconfined' || (request === '' && privileged)) return {};
  if (localhost !== undefined) {
    if (!(await host.apparmorProfileLoaded(localhost))) {
      throw failedPrecondition(`${APPARMOR_FIELD}.localhost_ref: AppArmor profile "${localhost}" is not loaded on this node (load it with apparmor_parser)`);
    }
    return { profile: localhost };
  }
  if (await host.apparmorProfileLoaded(defaultProfile)) return { profile: defaultProfile };
  if (request === 'runtime/default') {
    throw failedPrecondition(`${APPARMOR_FIELD}: RuntimeDefault is berth's profile "${defaultProfile}" ([runtime] apparmor_profile), which is not loaded on this node (load it with apparmor_parser)`);
  }
  return { warning: `AppArmor default profile "${defaultProfile}" ([runtime] apparmor_profile) is not loaded: the container runs unconfined` };
}
