import { Headers, Messages, decode } from '@reins/protocol';
import { z } from 'zod';

/** Any plain data: the codec's size and hostile-input checks, no shape. */
export const AnyPayload = z.unknown();

/** The Reins message schema a `Reins-Schema` header names (`reins.RunRecord`), if it is one. */
export function knownSchema(name: string | undefined): z.ZodType | undefined {
  if (name === undefined || !Object.hasOwn(Messages, name)) return undefined;
  return (Messages as Record<string, z.ZodType>)[name];
}

/** A decoded message: its value, the schema it was checked against, or why it did not decode. */
export interface DecodedPayload {
  schema: string | undefined;
  data?: unknown;
  error?: string;
}

/**
 * Decodes a message as Reins actors do (msgpack, size and hostile-input checks) and checks it
 * against the schema its `Reins-Schema` header names when that is a Reins message; a payload that
 * is not msgpack is shown as text.
 */
export function decodePayload(
  data: Uint8Array,
  headers: { get(key: string): string } | undefined,
): DecodedPayload {
  const name = headers?.get(Headers.schema) || undefined;
  const schema = knownSchema(name);
  if (data.length === 0) return { schema: name, data: null };
  try {
    return { schema: name, data: decode(schema ?? AnyPayload, data, { name: name ?? 'payload' }) };
  } catch (err) {
    if (name === undefined) {
      // Not a Reins message: plain text (or bytes) published by something else.
      const text = new TextDecoder('utf-8', { fatal: false }).decode(data);
      return { schema: undefined, data: text };
    }
    return { schema: name, error: (err as Error).message };
  }
}
