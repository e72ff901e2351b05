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

/** Value of the `Reins-Error` header on an error reply. */
const ERROR_MARKER = '1';

/** `\r\nReins-Error:` as bytes: the start of the marker's header line. */
const ERROR_LINE = new TextEncoder().encode(`\r\n${Headers.error}:`);

/**
 * Headers are the same for every message of a schema, so they are built once per schema (and
 * name). nats.js only reads the headers it is given (`publish`, `respond`, `request` call
 * `encode()`), except with `traceOnly`/`traceDestination`, which Reins never sets.
 */
const headerCache = new WeakMap<z.ZodType, Map<string, MsgHdrs>>();

/**
 * Headers for a Reins payload of the given schema. The object is shared and read-only: `set`,
 * `append` and `delete` throw a `TypeError`; build your own with `headers()` to add fields.
 */
export function payloadHeaders(schema: z.ZodType, name?: string): MsgHdrs {
  const schemaName = name ?? messageName(schema) ?? 'custom';
  let byName = headerCache.get(schema);
  if (!byName) {
    byName = new Map();
    headerCache.set(schema, byName);
  }
  let h = byName.get(schemaName);
  if (!h) {
    h = natsHeaders();
    h.set(Headers.contentType, CONTENT_TYPE);
    h.set(Headers.schema, schemaName);
    h = frozenHeaders(h);
    // Names are few (one per schema in practice); the bound keeps a caller that invents names
    // per message from growing the cache without limit.
    if (byName.size < 16) byName.set(schemaName, h);
  }
  return h;
}

/** Shared error-reply headers (see `payloadHeaders`). */
const errorHeaders = (() => {
  const h = natsHeaders();
  h.set(Headers.contentType, CONTENT_TYPE);
  h.set(Headers.schema, 'reins.ErrorReply');
  h.set(Headers.error, ERROR_MARKER);
  return frozenHeaders(h);
})();

/**
 * Makes `h` read-only and memoises its wire form: nats.js calls `encode()` on every publish,
 * and the bytes of a header set that cannot change need building only once.
 */
function frozenHeaders(h: MsgHdrs): MsgHdrs {
  const readOnly = () => {
    throw new TypeError('Reins payload headers are shared and read-only; copy them to change');
  };
  const impl = h as MsgHdrs & { encode?: () => Uint8Array };
  const encode = impl.encode;
  if (typeof encode === 'function') {
    const bytes = encode.call(h);
    Object.defineProperty(h, 'encode', { value: () => bytes });
  }
  for (const method of ['set', 'append', 'delete'] as const)
    Object.defineProperty(h, method, { value: readOnly });
  return h;
}

/** Encodes an error reply: the payload carries `{ error }` and the `Reins-Error` header is set. */
export function errorPayload(err: unknown): { data: Uint8Array; headers: MsgHdrs } {
  return { data: encode(ErrorReply, { error: toWireError(err) }), headers: errorHeaders };
}

/**
 * The raw message as nats.js delivers it (`MsgImpl`): header bytes are `_rdata[0, _msg.hdr)`,
 * and `hdr` is -1 without headers. Not public API, so it is checked before use.
 */
interface RawMsg {
  _msg?: { hdr?: unknown };
  _rdata?: unknown;
  _headers?: unknown;
}

/**
 * True when a message carries an error reply (a `Reins-Error: 1` header). Every Reins reply
 * has headers, and decoding them (text, split, a map) costs more than the rest of a reply's
 * handling, so the raw header bytes are first searched for a `Reins-Error` line: without one
 * (every success) the answer is no; with one, the parsed headers decide. The parsed headers
 * are also used when nats.js has already decoded them or does not expose the bytes.
 */
export function isErrorReply(msg: Msg): boolean {
  const raw = msg as unknown as RawMsg;
  const hdr = raw._msg?.hdr;
  const bytes = raw._rdata;
  if (raw._headers === undefined && typeof hdr === 'number' && bytes instanceof Uint8Array) {
    if (hdr < 0) return false;
    // `MsgHdrs.get` matches keys exactly, each header on its own line after the status line.
    if (indexOf(bytes, ERROR_LINE, Math.min(hdr, bytes.length)) < 0) return false;
  }
  return msg.headers?.get(Headers.error) === ERROR_MARKER;
}

/** First index of `needle` in `bytes[0, end)`, or -1. */
function indexOf(bytes: Uint8Array, needle: Uint8Array, end: number): number {
  const first = needle[0];
  const last = end - needle.length;
  outer: for (let i = 0; i <= last; i++) {
    if (bytes[i] !== first) continue;
    for (let j = 1; j < needle.length; j++) if (bytes[i + j] !== needle[j]) continue outer;
    return i;
  }
  return -1;
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
