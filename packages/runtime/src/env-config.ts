import { ProtocolError } from '@reins/protocol';
import type { z } from 'zod';

/**
 * Validates environment variables with a zod object schema (keys are variable names). Returns
 * the parsed config; throws a `ProtocolError` whose message names every bad variable and why,
 * e.g. `REINS_TRUSTED_ISSUERS: required (comma-separated public keys of supervisors)`.
 */
export function parseEnv<S extends z.ZodType>(
  schema: S,
  env: NodeJS.ProcessEnv = process.env,
): z.output<S> {
  // Empty strings count as unset, the way shells and compose files usually mean them.
  const cleaned = Object.fromEntries(
    Object.entries(env).filter(([, v]) => v !== undefined && v !== ''),
  );
  const result = schema.safeParse(cleaned);
  if (result.success) return result.data;
  const lines = result.error.issues.map((i) => {
    const message = /received undefined/.test(i.message) ? 'required, but not set' : i.message;
    return `  ${i.path.map(String).join('.') || '(env)'}: ${message}`;
  });
  throw new ProtocolError(`invalid configuration:\n${lines.join('\n')}`, {
    details: { variables: result.error.issues.map((i) => i.path.map(String).join('.')) },
  });
}
