#!/usr/bin/env node
// The Reins executor service: runs the standard toolbox's tools under signed grants.
import { z } from 'zod';
import { createToolbox } from '@reins/models';
import { CommaList, ServiceEnv, runService } from '@reins/runtime';
import { startExecutor } from '@reins/executor';

const Env = ServiceEnv.extend({
  REINS_ROLE: z.string().default('executor'),
  REINS_TRUSTED_ISSUERS: CommaList.pipe(
    z
      .array(z.string())
      .min(1, 'required: comma-separated public keys of the supervisors whose grants to trust'),
  ),
  /** Tool groups: files, calculator, scratchpad, http. */
  REINS_TOOLS: CommaList.default(['files', 'calculator', 'scratchpad']),
  REINS_SANDBOX_DIR: z.string().optional(),
  REINS_HTTP_ALLOW_HOSTS: CommaList.optional(),
  /** IPs / CIDR blocks http_fetch may reach although not public (loopback, private…). */
  REINS_HTTP_ALLOW_ADDRESSES: CommaList.optional(),
});

await runService('reins-executor', Env, async (env, runtime) => {
  if (env.REINS_TOOLS.includes('files') && !env.REINS_SANDBOX_DIR) {
    throw new Error(
      'invalid configuration:\n  REINS_SANDBOX_DIR: required when REINS_TOOLS includes files',
    );
  }
  const tools = createToolbox({
    groups: env.REINS_TOOLS,
    ...(env.REINS_SANDBOX_DIR ? { root: env.REINS_SANDBOX_DIR } : {}),
    ...(env.REINS_HTTP_ALLOW_HOSTS ? { allowHosts: env.REINS_HTTP_ALLOW_HOSTS } : {}),
    ...(env.REINS_HTTP_ALLOW_ADDRESSES ? { allowAddresses: env.REINS_HTTP_ALLOW_ADDRESSES } : {}),
  });
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
});
