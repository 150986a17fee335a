// What goes on a remotecommand session's error stream when the command ends. From v4.channel.k8s.io on it is a
// metav1.Status object as JSON; kubectl reads the exit code from the cause of reason "ExitCode". Before v4 the
// stream carries the error's text, and a success writes nothing.

export interface StatusObject {
  kind: 'Status';
  apiVersion: 'v1';
  metadata: Record<string, never>;
  status: 'Success' | 'Failure';
  message?: string;
  reason?: string;
  details?: { causes: { reason: string; message: string }[] };
}

export function successStatus(): StatusObject {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Success' };
}

export function exitCodeStatus(cmd: string[], exitCode: number): StatusObject {
  return {
    kind: 'Status',
    apiVersion: 'v1',
    metadata: {},
    status: 'Failure',
    message: `command terminated with non-zero exit code: error executing command [${cmd.join(' ')}], exit code ${exitCode}`,
    reason: 'NonZeroExitCode',
    details: { causes: [{ reason: 'ExitCode', message: String(exitCode) }] },
  };
}

export function errorStatus(message: string): StatusObject {
  return { kind: 'Status', apiVersion: 'v1', metadata: {}, status: 'Failure', message, reason: 'InternalError' };
}

/**
 * The bytes for the error stream: JSON for v4 and later; for older protocols the message alone, nothing on success
 * (their clients treat any text there as the error).
 */
export function encodeStatus(status: StatusObject, jsonStatus: boolean): Buffer | null {
  if (jsonStatus) return Buffer.from(JSON.stringify(status));
  if (status.status === 'Success') return null;
  return Buffer.from(status.message ?? 'error');
}
