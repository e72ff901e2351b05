#!/usr/bin/env node
// The Reins executor service: runs the standard toolbox's tools under signed grants.
import { z } from 'zod';
import { createToolbox } from '@reins/models';
import { Runtime, handleSignals, loadNkeySeed, nkeyConnection, parseEnv } from '@reins/runtime';
import { startExecutor } from '@reins/executor';

const list = z.string().transform((s) =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean),
);

const Env = z.object({
  NATS_URL: z.string().default('nats://127.0.0.1:4222'),
  REINS_PREFIX: z.string().optional(),
  REINS_AGENT_ID: z.string().optional(),
  /** Secure mode: this role's nkey seed (SU…), or a file holding it (docs/secure-mode.md). */
  REINS_NKEY_SEED: z.string().optional(),
  REINS_NKEY_SEED_FILE: z.string().optional(),
  REINS_ROLE: z.string().default('executor'),
  REINS_TRUSTED_ISSUERS: list.pipe(
    z
      .array(z.string())
      .min(1, 'required: comma-separated public keys of the supervisors whose grants to trust'),
  ),
  /** Tool groups: files, calculator, scratchpad, http. */
  REINS_TOOLS: list.default(['files', 'calculator', 'scratchpad']),
  REINS_SANDBOX_DIR: z.string().optional(),
  REINS_HTTP_ALLOW_HOSTS: list.optional(),
  REINS_SHUTDOWN_DEADLINE_MS: z.coerce.number().int().positive().default(10_000),
});

try {
  const env = parseEnv(Env);
  if (env.REINS_TOOLS.includes('files') && !env.REINS_SANDBOX_DIR) {
    throw new Error(
      'invalid configuration:\n  REINS_SANDBOX_DIR: required when REINS_TOOLS includes files',
    );
  }
  const tools = createToolbox({
    groups: env.REINS_TOOLS,
    ...(env.REINS_SANDBOX_DIR ? { root: env.REINS_SANDBOX_DIR } : {}),
    ...(env.REINS_HTTP_ALLOW_HOSTS ? { allowHosts: env.REINS_HTTP_ALLOW_HOSTS } : {}),
  });
  const seed = await loadNkeySeed({ seed: env.REINS_NKEY_SEED, file: env.REINS_NKEY_SEED_FILE });
  const runtime = await Runtime.connect({
    servers: env.NATS_URL,
    name: 'reins-executor',
    ...(env.REINS_PREFIX ? { prefix: env.REINS_PREFIX } : {}),
    ...(seed
      ? {
          connection: nkeyConnection(seed),
          // A restricted user may not manage JetStream: the supervisor creates streams and buckets.
          ensureInfrastructure: false,
        }
      : {}),
  });
  handleSignals(runtime, { deadlineMs: env.REINS_SHUTDOWN_DEADLINE_MS });
  const ex = await startExecutor(runtime, {
    tools,
    trustedIssuers: env.REINS_TRUSTED_ISSUERS,
    role: env.REINS_ROLE,
    ...(env.REINS_AGENT_ID ? { agentId: env.REINS_AGENT_ID } : {}),
  });
  runtime.logger.info(
    { agentId: ex.actor.agentId, tools: tools.map((t) => t.name) },
    'executor ready',
  );
} catch (err) {
  process.stderr.write(`reins-executor: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
}
