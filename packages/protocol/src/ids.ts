import { randomBytes } from 'node:crypto';
import { z } from 'zod';
import { ProtocolError } from './errors.js';

/** What an id that goes into a subject may look like. Anything else is refused, never escaped. */
export const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;

/** zod schema of an id (run, agent, role, tool, step, grant…). */
export const Id = z.string().regex(ID_PATTERN, 'must match [A-Za-z0-9_-]{1,64}');
export type Id = z.infer<typeof Id>;

/** True when `value` is a valid id. */
export function isId(value: unknown): value is string {
  return typeof value === 'string' && ID_PATTERN.test(value);
}

/** Returns `value` when it is a valid id; throws a `ProtocolError` (BAD_REQUEST) naming `what` otherwise. */
export function assertId(value: unknown, what = 'id'): string {
  if (!isId(value)) {
    const shown = typeof value === 'string' ? JSON.stringify(value.slice(0, 80)) : typeof value;
    throw new ProtocolError(`invalid ${what} ${shown}: must match [A-Za-z0-9_-]{1,64}`, {
      details: { field: what },
    });
  }
  return value;
}

/** Random bytes drawn in blocks: one `randomBytes` call per 512 ids, not one per id. */
let pool = Buffer.alloc(0);
let poolAt = 0;
function randomHex8(): string {
  if (poolAt + 8 > pool.length) {
    pool = randomBytes(4096);
    poolAt = 0;
  }
  poolAt += 8;
  return pool.toString('hex', poolAt - 8, poolAt);
}

let lastMs = 0;
let counter = 0;

/**
 * A new unique id: time-sortable (base36 milliseconds, then a counter) plus 64 random bits,
 * optionally after a short prefix (`newId('run')` → `run_lx2k…`).
 */
export function newId(prefix?: string): string {
  const now = Date.now();
  counter = now === lastMs ? counter + 1 : 0;
  lastMs = now;
  const body = `${now.toString(36)}${counter.toString(36).padStart(3, '0')}${randomHex8()}`;
  return prefix === undefined ? body : `${assertId(prefix, 'id prefix')}_${body}`;
}
