import * as grpc from '@grpc/grpc-js';
import type { ContainerEventResponse } from '../gen/runtime/v1/ContainerEventResponse.js';
import type { ContainerStatus } from '../gen/runtime/v1/ContainerStatus.js';
import type { GetEventsRequest__Output } from '../gen/runtime/v1/GetEventsRequest.js';
import { errorMessage } from '../errors.js';
import { Logger } from '../log.js';
import type { ContainerRecord } from '../container/types.js';
import { DEFAULT_SUBSCRIBER_BUFFER, LifecycleEvent, LifecycleEvents } from '../events/lifecycle.js';
import { toServiceError } from './grpc.js';
import { toPodSandboxStatus } from './pods.js';

// GetContainerEvents: one subscription per stream. Writes follow the stream's flow control; while a client does
// not read, its events wait in its subscription, and one that falls the subscription's limit behind is ended with
// RESOURCE_EXHAUSTED (kubelet's evented PLEG then relists), never slowing the RPCs that cause the events.

export type EventStream = grpc.ServerWritableStream<GetEventsRequest__Output, ContainerEventResponse>;

export function containerEventsHandler(
  events: LifecycleEvents,
  toStatus: (record: ContainerRecord) => ContainerStatus,
  log: Logger,
  bufferLimit = DEFAULT_SUBSCRIBER_BUFFER,
): (call: EventStream) => void {
  // Several subscribers get the same event object: it is rendered once.
  const rendered = new WeakMap<LifecycleEvent, ContainerEventResponse>();
  const render = (event: LifecycleEvent): ContainerEventResponse => {
    let response = rendered.get(event);
    if (!response) {
      response = {
        container_id: event.id,
        container_event_type: `CONTAINER_${event.kind}_EVENT`,
        created_at: String(event.atNs),
        // kubelet skips an event without the pod's status (it relists later): a container whose pod record is gone.
        pod_sandbox_status: event.pod ? toPodSandboxStatus(event.pod) : null,
        containers_statuses: event.containers.map(toStatus),
      };
      rendered.set(event, response);
    }
    return response;
  };

  return (call) => {
    const subscription = events.subscribe(bufferLimit);
    log.info('event subscriber connected', { subscribers: events.subscriberCount });
    const end = () => subscription.close();
    // A client that goes away (cancel, broken connection) leaves no subscription behind.
    call.on('cancelled', end);
    call.on('close', end);
    call.on('error', end);
    const pump = async () => {
      for (;;) {
        const event = await subscription.next();
        if (!event) return;
        if (!call.write(render(event))) {
          // Flow control: wait until the client reads, or until the subscription ends (the client left or fell behind).
          await Promise.race([new Promise((resolve) => call.once('drain', resolve)), subscription.whenEnded]);
        }
      }
    };
    pump().then(
      () => {
        log.info('event subscriber disconnected', { subscribers: events.subscriberCount });
        if (!call.cancelled) call.end();
      },
      (err: unknown) => {
        log.warn('event subscriber dropped', { error: errorMessage(err), subscribers: events.subscriberCount });
        if (!call.cancelled) call.emit('error', toServiceError(err));
      },
    );
  };
}
