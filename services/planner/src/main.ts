#!/usr/bin/env node
// The Reins planner service: takes runs of one role from the task queue and steps them with a
// model — an OpenAI-compatible endpoint when OPENAI_API_KEY or OPENAI_BASE_URL is set, else the
// deterministic scripted model (offline).
import { z } from 'zod';
import {
  createOpenAIModel,
  createScriptedModel,
  createToolbox,
  delegateScript,
  researchScript,
  toolSpec,
  type Model,
} from '@reins/models';
import { CommaList, ServiceEnv, runService } from '@reins/runtime';
import { startPlanner } from '@reins/planner';

const Env = ServiceEnv.extend({
  REINS_ROLE: z.string().default('planner'),
  /** Tool groups offered to the model (must match what executors run). */
  REINS_TOOLS: CommaList.default(['files', 'calculator', 'scratchpad']),
  REINS_DELEGATE_TO: CommaList.default([]),
  OPENAI_API_KEY: z.string().optional(),
  OPENAI_BASE_URL: z.string().url().optional(),
  REINS_MODEL: z.string().optional(),
  /** Scripted brain when no endpoint is configured: `research` or `delegate:<role>`. */
  REINS_SCRIPT: z
    .string()
    .regex(/^(research|delegate:[A-Za-z0-9_-]{1,64})$/, 'research or delegate:<role>')
    .default('research'),
  REINS_SCRIPT_DIR: z.string().default('docs'),
  REINS_REPORT_PATH: z.string().default('report.md'),
  /** Price of the scripted model as `input,output` USD per 1M tokens (to exercise USD budgets offline). */
  REINS_SCRIPTED_PRICE: z
    .string()
    .regex(/^\d+(\.\d+)?,\d+(\.\d+)?$/, 'input,output USD per 1M tokens, e.g. 0.15,0.6')
    .optional(),
  /** Simulated latency of each scripted model call in ms (slow steps for demos and chaos tests). */
  REINS_SCRIPTED_LATENCY_MS: z.coerce.number().int().nonnegative().optional(),
  REINS_MAX_OUTPUT_TOKENS: z.coerce.number().int().positive().optional(),
  REINS_CONCURRENCY: z.coerce.number().int().positive().default(4),
  REINS_ACK_WAIT_MS: z.coerce.number().int().positive().optional(),
  REINS_LEASE_MS: z.coerce.number().int().positive().optional(),
});

await runService('reins-planner', Env, async (env, runtime) => {
  let model: Model;
  if (env.OPENAI_API_KEY || env.OPENAI_BASE_URL) {
    model = createOpenAIModel({
      ...(env.OPENAI_API_KEY ? { apiKey: env.OPENAI_API_KEY } : {}),
      ...(env.OPENAI_BASE_URL ? { baseURL: env.OPENAI_BASE_URL } : {}),
      ...(env.REINS_MODEL ? { model: env.REINS_MODEL } : {}),
    });
  } else {
    const [input, output] = (env.REINS_SCRIPTED_PRICE ?? '0,0').split(',').map(Number);
    const respond = env.REINS_SCRIPT.startsWith('delegate:')
      ? delegateScript({ role: env.REINS_SCRIPT.slice('delegate:'.length) })
      : researchScript({ dir: env.REINS_SCRIPT_DIR, reportPath: env.REINS_REPORT_PATH });
    model = createScriptedModel({
      respond,
      price: { input: input ?? 0, output: output ?? 0 },
      ...(env.REINS_SCRIPTED_LATENCY_MS ? { latencyMs: env.REINS_SCRIPTED_LATENCY_MS } : {}),
    });
  }
  // Specs only: the planner never runs tools itself, so the sandbox root is not touched.
  const tools = createToolbox({
    groups: env.REINS_TOOLS,
    root: '.',
    allowHosts: ['localhost'],
  }).map(toolSpec);
  const actor = await startPlanner(runtime, {
    role: env.REINS_ROLE,
    model,
    tools,
    delegateTo: env.REINS_DELEGATE_TO,
    concurrency: env.REINS_CONCURRENCY,
    ...(env.REINS_AGENT_ID ? { agentId: env.REINS_AGENT_ID } : {}),
    ...(env.REINS_MAX_OUTPUT_TOKENS ? { maxOutputTokens: env.REINS_MAX_OUTPUT_TOKENS } : {}),
    ...(env.REINS_ACK_WAIT_MS ? { ackWaitMs: env.REINS_ACK_WAIT_MS } : {}),
    ...(env.REINS_LEASE_MS ? { leaseMs: env.REINS_LEASE_MS } : {}),
  });
  runtime.logger.info(
    { agentId: actor.agentId, role: env.REINS_ROLE, model: model.name },
    'planner ready',
  );
});
