import type { RuntimeServiceHandlers } from '../gen/runtime/v1/RuntimeService.js';
import { invalidArgument } from '../errors.js';
import { Logger } from '../log.js';
import type { StreamingService } from '../streaming/service.js';
import type { StdioRequest } from '../streaming/types.js';
import { handlerFactory, requireId, RpcObserver } from './grpc.js';
import { noNul } from './names.js';

// Exec, Attach and PortForward answer a URL of the streaming server; the session itself runs there. The request
// is checked here with kubelet's rules, so a client learns at the RPC what the session could never do.

function stdio(req: { stdin: boolean; stdout: boolean; stderr: boolean; tty: boolean }, rpc: string): StdioRequest {
  if (!req.stdin && !req.stdout && !req.stderr) throw invalidArgument(`${rpc}: one of stdin, stdout or stderr must be set`);
  // A terminal has one output: stderr cannot be told apart from stdout on it.
  if (req.tty && req.stderr) throw invalidArgument(`${rpc}: tty and stderr cannot both be set (a terminal merges stderr into stdout)`);
  return { stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, tty: req.tty };
}

export function streamingHandlers(streaming: StreamingService, log: Logger, observe?: RpcObserver): Partial<RuntimeServiceHandlers> {
  const h = handlerFactory(log, observe);
  return {
    Exec: h('Exec', async (req) => {
      const containerId = requireId(req.container_id, 'container_id', 'Exec');
      if (req.cmd.length === 0 || req.cmd[0] === '') throw invalidArgument('cmd is empty: Exec needs the command to run');
      // A NUL would silently end the word it is in once it reaches the exec.
      req.cmd.forEach((word, i) => noNul(word, `cmd[${i}]`));
      const io = stdio(req, 'Exec');
      return { url: await streaming.exec({ kind: 'exec', containerId, cmd: [...req.cmd], ...io }) };
    }),
    Attach: h('Attach', async (req) => {
      const containerId = requireId(req.container_id, 'container_id', 'Attach');
      const io = stdio(req, 'Attach');
      return { url: await streaming.attach({ kind: 'attach', containerId, ...io }) };
    }),
    PortForward: h('PortForward', async (req) => {
      const podSandboxId = requireId(req.pod_sandbox_id, 'pod_sandbox_id', 'PortForward');
      req.port.forEach((port, i) => {
        if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalidArgument(`port[${i}] ${port} is not a TCP port (1-65535)`);
      });
      return { url: await streaming.portForward({ kind: 'portforward', podSandboxId, ports: [...req.port] }) };
    }),
  };
}
