#!/usr/bin/env node
// The Reins supervisor service: the control plane. Configure it with environment variables.
import { z } from 'zod';
import { ServiceEnv, runService } from '@reins/runtime';
import { loadPolicyFile, startSupervisor } from '@reins/supervisor';

const Env = ServiceEnv.extend({
  /** JSON policy file; without one every tool call is denied (fail closed). */
  REINS_POLICY_FILE: z.string().optional(),
  REINS_GLOBAL_BUDGET_USD: z.coerce.number().positive().optional(),
  REINS_DEFAULT_MAX_STEPS: z.coerce.number().int().positive().default(50),
  REINS_GRANT_TTL_MS: z.coerce.number().int().positive().optional(),
  REINS_LEASE_MS: z.coerce.number().int().positive().optional(),
  /** How long a supervisor's membership lasts unrenewed: its partitions move after this long. */
  REINS_PARTITION_LEASE_MS: z.coerce.number().int().positive().optional(),
  /** How long an approval waits for a human before it expires as a denial (default 10 min). */
  REINS_APPROVAL_TIMEOUT_MS: z.coerce.number().int().positive().optional(),
});

await runService(
  'reins-supervisor',
  Env,
  async (env, runtime) => {
    const policy = env.REINS_POLICY_FILE ? await loadPolicyFile(env.REINS_POLICY_FILE) : undefined;
    const sv = await startSupervisor(runtime, {
      ...(env.REINS_AGENT_ID ? { agentId: env.REINS_AGENT_ID } : {}),
      ...(policy ? { policy } : {}),
      ...(env.REINS_GLOBAL_BUDGET_USD
        ? { globalBudget: { usd: env.REINS_GLOBAL_BUDGET_USD } }
        : {}),
      defaultRunBudget: { steps: env.REINS_DEFAULT_MAX_STEPS },
      ...(env.REINS_GRANT_TTL_MS ? { grantTtlMs: env.REINS_GRANT_TTL_MS } : {}),
      ...(env.REINS_LEASE_MS ? { leaseMs: env.REINS_LEASE_MS } : {}),
      ...(env.REINS_PARTITION_LEASE_MS ? { partitionLeaseMs: env.REINS_PARTITION_LEASE_MS } : {}),
      ...(env.REINS_APPROVAL_TIMEOUT_MS
        ? { approvalTimeoutMs: env.REINS_APPROVAL_TIMEOUT_MS }
        : {}),
    });
    runtime.logger.info({ agentId: sv.actor.agentId, publicKey: sv.publicKey }, 'supervisor ready');
  },
  { managesInfrastructure: true },
);
