import { Packr, Unpackr } from 'msgpackr';
import type { z } from 'zod';
import { PayloadTooLargeError, ProtocolError } from './errors.js';

/** Default payload limit: 1 MiB, the nats-server default `max_payload`. */
export const DEFAULT_MAX_PAYLOAD_BYTES = 1024 * 1024;
/** Deepest nesting accepted in a payload. */
export const MAX_DEPTH = 64;

const FORBIDDEN_KEYS = new Set(['__proto__', '__proto_', 'constructor', 'prototype']);

const packr = new Packr({ useRecords: false, moreTypes: false });
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: 'number' });

/**
 * Checks that a decoded value is plain data: null, booleans, finite numbers, strings, byte
 * arrays, arrays and plain objects, at most `MAX_DEPTH` deep, with no prototype-polluting keys.
 * Extension types (Error, RegExp, Set, Date…) and non-finite numbers are refused. The path of
 * the offending value is only spelled out when there is one (this runs on every message).
 */
function assertPlain(value: unknown, name: string): void {
  const path: (string | number)[] = [];
  const fail = (what: string): never => {
    let at = name;
    for (const p of path) at += typeof p === 'number' ? `[${p}]` : `.${p}`;
    throw new ProtocolError(what.replace('%s', at));
  };
  const walk = (v: unknown, depth: number): void => {
    if (depth > MAX_DEPTH) fail(`payload nested deeper than ${MAX_DEPTH} at %s`);
    if (v === null || v === undefined) return;
    switch (typeof v) {
      case 'string':
      case 'boolean':
        return;
      case 'number':
        if (!Number.isFinite(v)) fail('non-finite number at %s');
        return;
      case 'object': {
        if (v instanceof Uint8Array) return;
        if (Array.isArray(v)) {
          for (let i = 0; i < v.length; i++) {
            path.push(i);
            walk(v[i], depth + 1);
            path.pop();
          }
          return;
        }
        const proto: unknown = Object.getPrototypeOf(v);
        if (proto !== Object.prototype && proto !== null) fail('unsupported value type at %s');
        for (const key of Object.keys(v)) {
          if (FORBIDDEN_KEYS.has(key)) fail(`forbidden key "${key}" at %s`);
          path.push(key);
          walk((v as Record<string, unknown>)[key], depth + 1);
          path.pop();
        }
        return;
      }
      default:
        fail(`unsupported ${typeof v} at %s`);
    }
  };
  walk(value, 0);
}

function describeIssues(error: z.ZodError): string {
  return error.issues
    .slice(0, 5)
    .map((i) => `${i.path.length ? i.path.map(String).join('.') : '(root)'}: ${i.message}`)
    .join('; ');
}

/** Options of `encode` and `decode`. */
export interface CodecOptions {
  /** Largest accepted payload in bytes (default 1 MiB). */
  maxPayloadBytes?: number;
  /** Name of the message, used in error messages. */
  name?: string;
}

/**
 * Validates a value against a zod schema and returns it parsed (defaults applied, unknown keys
 * stripped). Throws a `ProtocolError` (BAD_REQUEST) naming the failing fields.
 */
export function parse<S extends z.ZodType>(
  schema: S,
  value: unknown,
  name = 'message',
): z.output<S> {
  assertPlain(value, name);
  const result = schema.safeParse(value);
  if (!result.success) {
    throw new ProtocolError(`invalid ${name}: ${describeIssues(result.error)}`, {
      details: {
        issues: result.error.issues
          .slice(0, 5)
          .map((i) => ({ path: i.path.map(String), message: i.message })),
      },
    });
  }
  return result.data;
}

/**
 * Validates `value` with `schema` and packs it with msgpack. Throws a `ProtocolError` for an
 * invalid value and a `PayloadTooLargeError` when the bytes exceed the limit.
 */
export function encode<S extends z.ZodType>(
  schema: S,
  value: z.input<S>,
  options: CodecOptions = {},
): Uint8Array {
  const parsed = parse(schema, value, options.name);
  let bytes: Uint8Array;
  try {
    bytes = packr.pack(parsed);
  } catch (cause) {
    throw new ProtocolError(`cannot encode ${options.name ?? 'message'}`, { cause });
  }
  const max = options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
  if (bytes.length > max) {
    throw new PayloadTooLargeError(
      `${options.name ?? 'message'} is ${bytes.length} bytes; limit is ${max}`,
      {
        details: { bytes: bytes.length, limit: max },
      },
    );
  }
  return bytes;
}

/**
 * Unpacks msgpack bytes and validates them with `schema`. Returns the typed value, or throws a
 * `ProtocolError` (malformed bytes, hostile or invalid content) or `PayloadTooLargeError`.
 * Never throws anything else.
 */
export function decode<S extends z.ZodType>(
  schema: S,
  bytes: Uint8Array,
  options: CodecOptions = {},
): z.output<S> {
  const name = options.name ?? 'message';
  const max = options.maxPayloadBytes ?? DEFAULT_MAX_PAYLOAD_BYTES;
  if (!(bytes instanceof Uint8Array)) throw new ProtocolError(`${name}: payload is not bytes`);
  if (bytes.length > max) {
    throw new PayloadTooLargeError(`${name} is ${bytes.length} bytes; limit is ${max}`, {
      details: { bytes: bytes.length, limit: max },
    });
  }
  if (bytes.length === 0) throw new ProtocolError(`${name}: empty payload`);
  let raw: unknown;
  try {
    raw = unpackr.unpack(bytes);
  } catch (cause) {
    throw new ProtocolError(`${name}: malformed msgpack`, { cause });
  }
  return parse(schema, raw, name);
}
