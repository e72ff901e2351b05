#!/usr/bin/env node
// The reviewer as a service: `NATS_URL=… node examples/custom-actor/dist/main.js`.
// Environment: NATS_URL, REINS_AGENT_ID, REINS_ROLE (default reviewer), REINS_MS_PER_SENTENCE.
// SIGTERM stops taking work, lets in-flight reviews finish (or aborts them) and exits.
import { z } from 'zod';
import { ServiceEnv, runService } from '@reins/runtime';
import { reviewSubject, startReviewer } from './reviewer.js';

const Env = ServiceEnv.extend({
  REINS_ROLE: z.string().default('reviewer'),
  REINS_MS_PER_SENTENCE: z.coerce.number().int().min(0).default(0),
});

await runService('reins-reviewer', Env, async (env, runtime) => {
  const actor = await startReviewer(runtime, {
    role: env.REINS_ROLE,
    msPerSentence: env.REINS_MS_PER_SENTENCE,
    ...(env.REINS_AGENT_ID ? { agentId: env.REINS_AGENT_ID } : {}),
  });
  runtime.logger.info(
    { agentId: actor.agentId, role: actor.role, subject: reviewSubject(runtime) },
    'reviewer ready',
  );
});
