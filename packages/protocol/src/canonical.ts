import { createHash } from 'node:crypto';

/**
 * Deterministic JSON: object keys sorted, no whitespace, `undefined` members dropped. Used for
 * argument hashes, grant signatures and the audit hash chain, so two sides that hold the same
 * value compute the same bytes. Throws a TypeError on values JSON cannot carry faithfully.
 */
export function canonicalJson(value: unknown): string {
  if (value === null) return 'null';
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return JSON.stringify(value);
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError('canonicalJson: non-finite number');
      return JSON.stringify(value);
    case 'object': {
      if (Array.isArray(value)) return `[${value.map((v) => canonicalJson(v ?? null)).join(',')}]`;
      if (value instanceof Uint8Array) return JSON.stringify(Buffer.from(value).toString('base64'));
      const entries = Object.entries(value as Record<string, unknown>)
        .filter(([, v]) => v !== undefined)
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
    }
    default:
      throw new TypeError(`canonicalJson: cannot encode ${typeof value}`);
  }
}

/** Hex sha256 of a string or bytes. */
export function sha256Hex(data: string | Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Hex sha256 of the canonical JSON of tool arguments: what a grant binds an action to. */
export function hashArgs(args: unknown): string {
  return sha256Hex(canonicalJson(args));
}
