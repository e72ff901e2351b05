import { z } from 'zod';
import { parseEnv } from './env-config.js';
import { Runtime } from './runtime.js';
import { loadNkeySeed } from './secure-mode.js';
import { handleSignals } from './shutdown.js';

/** A comma-separated list in an environment variable (`a, b,c` → `['a','b','c']`). */
export const CommaList = z.string().transform((s) =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean),
);

/** Environment every Reins service reads; extend it with the service's own variables. */
export const ServiceEnv = z.object({
  NATS_URL: z.string().default('nats://127.0.0.1:4222'),
  REINS_PREFIX: z.string().optional(),
  /** Partitions of run-scoped control requests (default 32; the same in every process). */
  REINS_PARTITIONS: z.coerce.number().int().min(1).max(1024).optional(),
  REINS_AGENT_ID: z.string().optional(),
  /** Secure mode: this role's nkey seed (SU…), or a file holding it (docs/secure-mode.md). */
  REINS_NKEY_SEED: z.string().optional(),
  REINS_NKEY_SEED_FILE: z.string().optional(),
  REINS_SHUTDOWN_DEADLINE_MS: z.coerce.number().int().positive().default(10_000),
  /** `1`: running without credentials on purpose, and whoever started the service warned. */
  REINS_INSECURE: z.enum(['0', '1']).optional(),
});

/**
 * Read by every service besides its own schema: the trusted supervisors' public keys
 * (comma-separated). Only their signed heartbeats keep the dead-man switch off; executors
 * also verify grants with them (and require them).
 */
const TrustEnv = z.object({ REINS_TRUSTED_ISSUERS: CommaList.optional() });

/**
 * The one-line warning of a process that connects to NATS without credentials. `reins up
 * --insecure` prints it once, and so does every service started otherwise (unless
 * `REINS_INSECURE=1` says its launcher already did).
 */
export const INSECURE_WARNING =
  'insecure: no NATS credentials, any connection may publish anything — for local experiments only (docs/secure-mode.md)';

/**
 * Runs a service process: validates its environment with `schema` (a clear error naming each
 * bad variable), connects (with its nkey in secure mode, where it leaves stream and bucket
 * creation to the supervisor unless `managesInfrastructure`), installs SIGTERM/SIGINT draining,
 * then calls `main`. Any start-up failure prints `<name>: <message>` and exits 2.
 */
export async function runService<S extends typeof ServiceEnv>(
  name: string,
  schema: S,
  main: (env: z.output<S>, runtime: Runtime) => Promise<void>,
  options: { managesInfrastructure?: boolean } = {},
): Promise<void> {
  try {
    const env = parseEnv(schema);
    const trusted = parseEnv(TrustEnv).REINS_TRUSTED_ISSUERS;
    const seed = await loadNkeySeed({ seed: env.REINS_NKEY_SEED, file: env.REINS_NKEY_SEED_FILE });
    if (!seed && env.REINS_INSECURE !== '1')
      process.stderr.write(`${name}: warning: ${INSECURE_WARNING}\n`);
    const runtime = await Runtime.connect({
      servers: env.NATS_URL,
      name,
      ...(env.REINS_PREFIX ? { prefix: env.REINS_PREFIX } : {}),
      ...(env.REINS_PARTITIONS ? { partitions: env.REINS_PARTITIONS } : {}),
      ...(trusted ? { trustedSupervisors: trusted } : {}),
      ...(seed
        ? {
            nkeySeed: seed,
            // A restricted user may not manage JetStream: the supervisor creates streams and buckets.
            ensureInfrastructure: options.managesInfrastructure === true,
          }
        : {}),
    });
    handleSignals(runtime, { deadlineMs: env.REINS_SHUTDOWN_DEADLINE_MS });
    await main(env, runtime);
  } catch (err) {
    process.stderr.write(`${name}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(2);
  }
}
