// A deployment that delegates, in one process: a `lead` planner delegates its goal to `mid`,
// which delegates it to `researcher`, which calls the `note` tool once and answers. One run of
// `lead` is a tree of three runs (parent, child, grandchild).
import { z } from 'zod';
import { createGrantSigner } from '@reins/protocol';
import { Runtime, createLogger } from '@reins/runtime';
import { createScriptedModel, defineTool, delegateScript, toolSpec } from '@reins/models';
import { startSupervisor, type Supervisor } from '@reins/supervisor';
import { startExecutor } from '@reins/executor';
import { startPlanner } from '@reins/planner';

/** What the researcher answers. */
export const RESEARCH_ANSWER = 'noted';

/** The running deployment. */
export interface Delegation extends AsyncDisposable {
  /** The supervisor; stop it to see what works without one. */
  readonly supervisor: Supervisor;
  /** Notes the `note` tool took, in order. */
  readonly notes: string[];
  stop(): Promise<void>;
}

/** Starts the deployment on `servers` (actors on one runtime, the supervisor on its own). */
export async function startDelegation(servers: string): Promise<Delegation> {
  const logger = () => createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' });
  const svRuntime = await Runtime.connect({ servers, logger: logger(), heartbeatMs: 500 });
  const rt = await Runtime.connect({ servers, logger: logger(), heartbeatMs: 500 });
  const { signer } = createGrantSigner();
  const supervisor = await startSupervisor(svRuntime, {
    signer,
    policy: { version: 1, rules: [{ id: 'note', match: { tool: 'note' }, effect: 'allow' }] },
  });
  const notes: string[] = [];
  const note = defineTool({
    name: 'note',
    description: 'Takes a note.',
    input: z.object({ text: z.string().max(200) }),
    output: z.object({ ok: z.boolean() }),
    effect: 'write',
    idempotent: true,
    run: ({ text }) => {
      notes.push(text);
      return { ok: true };
    },
  });
  await startExecutor(rt, {
    tools: [note],
    trustedIssuers: [signer.publicKey],
  });
  for (const [role, to] of [
    ['lead', 'mid'],
    ['mid', 'researcher'],
  ] as const) {
    await startPlanner(rt, {
      role,
      agentId: `${role}-1`,
      model: createScriptedModel({ respond: delegateScript({ role: to }) }),
      tools: [],
      delegateTo: [to],
    });
  }
  await startPlanner(rt, {
    role: 'researcher',
    agentId: 'researcher-1',
    model: createScriptedModel({
      turns: [{ toolCalls: [{ name: 'note', args: { text: 'found it' } }] }, RESEARCH_ANSWER],
    }),
    tools: [toolSpec(note)],
  });
  let stopping: Promise<void> | undefined;
  const stop = () =>
    (stopping ??= (async () => {
      await rt.close();
      await supervisor.stop().catch(() => undefined);
      await svRuntime.close();
    })());
  return { supervisor, notes, stop, [Symbol.asyncDispose]: stop };
}
