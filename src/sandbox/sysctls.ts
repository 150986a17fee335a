import { invalidArgument } from '../errors.js';

// Only sysctls scoped to a namespace the pod owns may be set: anything else would change the whole node.

const IPC_SYSCTLS = ['kernel.shmall', 'kernel.shmmax', 'kernel.shmmni', 'kernel.shm_rmid_forced', 'kernel.msgmax', 'kernel.msgmnb', 'kernel.msgmni', 'kernel.sem'];

export function validateSysctls(sysctls: Record<string, string>, opts: { hostNetwork: boolean; hostIpc: boolean }): void {
  for (const [rawName, value] of Object.entries(sysctls)) {
    const name = rawName.replace(/\//g, '.');
    const field = `config.linux.sysctls["${rawName}"]`;
    if (!/^[a-z0-9_.-]+$/i.test(name)) throw invalidArgument(`${field}: not a sysctl name`);
    if (/[\n\0]/.test(value)) throw invalidArgument(`${field}: value contains a newline or NUL`);
    const ipc = IPC_SYSCTLS.includes(name) || name.startsWith('fs.mqueue.');
    const net = name.startsWith('net.');
    if (ipc && opts.hostIpc) throw invalidArgument(`${field}: an IPC sysctl cannot be set in a pod that uses the host IPC namespace`);
    if (net && opts.hostNetwork) throw invalidArgument(`${field}: a network sysctl cannot be set in a pod that uses the host network`);
    if (!ipc && !net) throw invalidArgument(`${field}: ${name} is not namespaced; it would change the whole node`);
  }
}
