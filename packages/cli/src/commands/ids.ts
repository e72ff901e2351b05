import { ID_PATTERN } from '@reins/protocol';
import { usageError } from '../errors.js';

/** Returns `value` when it is a valid id; a usage error (exit 2) naming `what` otherwise. */
export function requireId(value: string, what: string): string {
  if (!ID_PATTERN.test(value)) {
    throw usageError(
      `invalid ${what} ${JSON.stringify(value.slice(0, 80))}`,
      'ids are 1-64 characters of A-Z a-z 0-9 _ -',
    );
  }
  return value;
}
