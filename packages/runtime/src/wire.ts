import { headers as natsHeaders, type Msg, type MsgHdrs } from '@nats-io/transport-node';
import {
  CONTENT_TYPE,
  ErrorReply,
  Headers,
  ProtocolError,
  decode,
  encode,
  fromWireError,
  messageName,
  toWireError,
  type ReinsError,
} from '@reins/protocol';
import type { z } from 'zod';

/** Headers for a Reins payload of the given schema. */
export function payloadHeaders(schema: z.ZodType, name?: string): MsgHdrs {
  const h = natsHeaders();
  h.set(Headers.contentType, CONTENT_TYPE);
  h.set(Headers.schema, name ?? messageName(schema) ?? 'custom');
  return h;
}

/** Encodes an error reply: the payload carries `{ error }` and the `Reins-Error` header is set. */
export function errorPayload(err: unknown): { data: Uint8Array; headers: MsgHdrs } {
  const h = natsHeaders();
  h.set(Headers.contentType, CONTENT_TYPE);
  h.set(Headers.schema, 'reins.ErrorReply');
  h.set(Headers.error, '1');
  return { data: encode(ErrorReply, { error: toWireError(err) }), headers: h };
}

/** True when a message carries an error reply. */
export function isErrorReply(msg: Msg): boolean {
  return msg.headers?.get(Headers.error) === '1';
}

/**
 * Decodes a reply: the typed value, or the remote error rebuilt as its class (thrown).
 * A reply that is neither is a `ProtocolError`.
 */
export function decodeReply<S extends z.ZodType>(
  msg: Msg,
  schema: S,
  options: { maxPayloadBytes?: number; name?: string } = {},
): z.output<S> {
  if (isErrorReply(msg)) {
    let wire;
    try {
      wire = decode(ErrorReply, msg.data, { name: 'error reply' }).error;
    } catch (cause) {
      throw new ProtocolError('malformed error reply', { cause });
    }
    throw fromWireError(wire);
  }
  return decode(schema, msg.data, options);
}

/** Rebuilds an error thrown by `decodeReply` for logging without re-wrapping Reins errors. */
export type RemoteError = ReinsError;
