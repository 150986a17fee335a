import { BerthError } from '../../errors.js';

// SPDY/3 status codes (spec 2.6.3 RST_STREAM, 2.6.6 GOAWAY) that berth sends or reads.
export const RstStatus = {
  protocolError: 1,
  invalidStream: 2,
  refusedStream: 3,
  unsupportedVersion: 4,
  cancel: 5,
  internalError: 6,
  flowControlError: 7,
  streamInUse: 8,
  streamAlreadyClosed: 9,
  frameTooLarge: 11,
} as const;

export const GoAwayStatus = { ok: 0, protocolError: 1, internalError: 2 } as const;

/** The peer broke the framing: the session cannot continue (a GOAWAY with PROTOCOL_ERROR follows). */
export class SpdyProtocolError extends BerthError {
  constructor(message: string) {
    super('invalid_argument', `spdy: ${message}`);
    this.name = 'SpdyProtocolError';
  }
}
