#!/usr/bin/env node
// The Reins supervisor service: the control plane. Configure it with environment variables.
import { z } from 'zod';
import { Runtime, handleSignals, loadNkeySeed, nkeyConnection, parseEnv } from '@reins/runtime';
import { loadPolicyFile, startSupervisor } from '@reins/supervisor';

const Env = z.object({
  NATS_URL: z.string().default('nats://127.0.0.1:4222'),
  REINS_PREFIX: z.string().optional(),
  REINS_AGENT_ID: z.string().optional(),
  /** Secure mode: this role's nkey seed (SU…), or a file holding it (docs/secure-mode.md). */
  REINS_NKEY_SEED: z.string().optional(),
  REINS_NKEY_SEED_FILE: z.string().optional(),
  /** JSON policy file; without one every tool call is denied (fail closed). */
  REINS_POLICY_FILE: z.string().optional(),
  REINS_GLOBAL_BUDGET_USD: z.coerce.number().positive().optional(),
  REINS_DEFAULT_MAX_STEPS: z.coerce.number().int().positive().default(50),
  REINS_GRANT_TTL_MS: z.coerce.number().int().positive().optional(),
  REINS_LEASE_MS: z.coerce.number().int().positive().optional(),
  REINS_SHUTDOWN_DEADLINE_MS: z.coerce.number().int().positive().default(10_000),
});

try {
  const env = parseEnv(Env);
  const seed = await loadNkeySeed({ seed: env.REINS_NKEY_SEED, file: env.REINS_NKEY_SEED_FILE });
  const runtime = await Runtime.connect({
    servers: env.NATS_URL,
    name: 'reins-supervisor',
    ...(env.REINS_PREFIX ? { prefix: env.REINS_PREFIX } : {}),
    ...(seed ? { connection: nkeyConnection(seed) } : {}),
  });
  handleSignals(runtime, { deadlineMs: env.REINS_SHUTDOWN_DEADLINE_MS });
  const policy = env.REINS_POLICY_FILE ? await loadPolicyFile(env.REINS_POLICY_FILE) : undefined;
  const sv = await startSupervisor(runtime, {
    ...(env.REINS_AGENT_ID ? { agentId: env.REINS_AGENT_ID } : {}),
    ...(policy ? { policy } : {}),
    ...(env.REINS_GLOBAL_BUDGET_USD ? { globalBudget: { usd: env.REINS_GLOBAL_BUDGET_USD } } : {}),
    defaultRunBudget: { steps: env.REINS_DEFAULT_MAX_STEPS },
    ...(env.REINS_GRANT_TTL_MS ? { grantTtlMs: env.REINS_GRANT_TTL_MS } : {}),
    ...(env.REINS_LEASE_MS ? { leaseMs: env.REINS_LEASE_MS } : {}),
  });
  runtime.logger.info({ agentId: sv.actor.agentId, publicKey: sv.publicKey }, 'supervisor ready');
} catch (err) {
  process.stderr.write(`reins-supervisor: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(2);
}
