import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import {
  ActRequest,
  AuthorizeRequest,
  Decision,
  ExecuteRequest,
  RunRecord,
  RunStartRequest,
  SettleRequest,
  ToolResult,
  createGrantSigner,
  encode,
  newId,
  type Grant,
} from '@reins/protocol';
import { defineActor, type Runtime } from '@reins/runtime';
import type { z } from 'zod';
import { connectRuntime } from './governed.js';

/**
 * The message pattern of one governed step, in three implementations with the same payloads:
 *
 *   authorize: request → reply                       (planner ⇄ supervisor)
 *   settle:    publish, fire-and-forget              (planner → supervisor)
 *   act:       request → forward → reply            (planner → supervisor → executor → planner)
 *
 * - `raw`: nats.js callback subscriptions answering pre-encoded bytes (no Reins at all);
 * - `off`: Reins actors (`handle`, zod, msgpackr, units of work, `ctx.forward`) with no
 *   governance: no ledger, policy, breakers, audit, grant signing or idempotency;
 * - the governed step itself lives in the suites (real supervisor and executor).
 */
export interface StepSide {
  readonly name: string;
  /** One step; `i` makes arguments and idempotency keys unique. */
  step(i: number): Promise<void>;
  close(): Promise<void>;
}

const TIMEOUT_MS = 10_000;
const RUN_ID = 'run_bench_chain_0000000001';
const AGENT_ID = 'bench-planner';

/** Plausible payloads of one step (the same bytes for raw and Reins). */
export interface StepPayloads {
  authorize: z.input<typeof AuthorizeRequest>;
  decision: z.input<typeof Decision>;
  settle: z.input<typeof SettleRequest>;
  act: z.input<typeof ActRequest>;
  execute: z.input<typeof ExecuteRequest>;
  result: z.input<typeof ToolResult>;
}

export function stepPayloads(): StepPayloads {
  const { signer } = createGrantSigner();
  const now = Date.now();
  const body = {
    runId: RUN_ID,
    agentId: AGENT_ID,
    role: 'planner',
    stepId: 's1',
    reserved: { steps: 1, inputTokens: 60, outputTokens: 4096, usd: 0 },
    issuedAt: now,
    expiresAt: now + 3_600_000,
    issuer: signer.publicKey,
  };
  const llmGrant: Grant = signer.sign({
    ...body,
    grantId: newId('g'),
    kind: 'llm',
    model: 'scripted',
  });
  const toolGrant: Grant = signer.sign({
    ...body,
    grantId: newId('g'),
    kind: 'tool',
    tool: 'bench_noop',
    argsHash: 'a'.repeat(64),
    idempotencyKey: `${RUN_ID}.1.0`,
  });
  const act = {
    runId: RUN_ID,
    agentId: AGENT_ID,
    role: 'planner',
    stepId: 's1',
    tool: 'bench_noop',
    args: { i: 1 },
    idempotencyKey: `${RUN_ID}.1.0`,
    timeoutMs: 30_000,
  };
  return {
    authorize: {
      runId: RUN_ID,
      agentId: AGENT_ID,
      role: 'planner',
      stepId: 's1',
      kind: 'llm',
      model: 'scripted',
      estimate: { inputTokens: 60, outputTokens: 4096, usd: 0 },
    },
    decision: { decision: 'grant', grant: llmGrant, rule: 'budget.ok' },
    settle: {
      grantId: llmGrant.grantId,
      runId: RUN_ID,
      agentId: AGENT_ID,
      actual: { inputTokens: 60, outputTokens: 12, usd: 0, steps: 1 },
      outcome: 'ok',
    },
    act,
    execute: {
      grant: toolGrant,
      runId: RUN_ID,
      stepId: 's1',
      tool: 'bench_noop',
      args: { i: 1 },
      idempotencyKey: act.idempotencyKey,
      timeoutMs: 30_000,
    },
    result: {
      ok: true,
      tool: 'bench_noop',
      idempotencyKey: act.idempotencyKey,
      output: { i: 1 },
      replayed: false,
      durationMs: 0,
    },
  };
}

async function closeAll(connections: NatsConnection[]): Promise<void> {
  await Promise.all(connections.map((nc) => nc.drain().catch(() => nc.close())));
}

/** What the raw chains share: the step's payloads pre-encoded, three connections, subjects. */
async function rawSetup(url: string, tag: string) {
  const p = stepPayloads();
  const bytes = {
    authorize: encode(AuthorizeRequest, p.authorize),
    decision: encode(Decision, p.decision),
    settle: encode(SettleRequest, p.settle),
    act: encode(ActRequest, p.act),
    execute: encode(ExecuteRequest, p.execute),
    result: encode(ToolResult, p.result),
  };
  const opts = (name: string) => ({ servers: url, name, noAsyncTraces: true });
  const subjects = {
    authorize: `bench.${tag}.authorize`,
    settle: `bench.${tag}.settle`,
    act: `bench.${tag}.act`,
    exec: `bench.${tag}.exec`,
    audit: `bench.${tag}.audit`,
  };
  const planner = await connect(opts(`bench-${tag}-planner`));
  const supervisor = await connect(opts(`bench-${tag}-supervisor`));
  const executor = await connect(opts(`bench-${tag}-executor`));
  /** The planner's side of one step: authorize, settle (fire-and-forget), act. */
  const step = async (): Promise<void> => {
    const s = subjects;
    const d = await planner.request(s.authorize, bytes.authorize, { timeout: TIMEOUT_MS });
    if (d.data.length !== bytes.decision.length) throw new Error(`${tag} authorize: other bytes`);
    planner.publish(s.settle, bytes.settle);
    const r = await planner.request(s.act, bytes.act, { timeout: TIMEOUT_MS });
    if (r.data.length !== bytes.result.length) throw new Error(`${tag} act: other bytes`);
  };
  return { p, bytes, opts, subjects, planner, supervisor, executor, step };
}

/**
 * Raw NATS: three connections (planner, supervisor, executor) and callback subscriptions that
 * answer pre-encoded bytes; `noAsyncTraces` like the runtime's connections.
 */
export async function rawChain(url: string, tag = 'raw'): Promise<StepSide> {
  const { bytes, subjects: s, planner, supervisor, executor, step } = await rawSetup(url, tag);
  let settles = 0;
  supervisor.subscribe(s.authorize, {
    queue: 'sv',
    callback: (err, msg) => {
      if (!err) msg.respond(bytes.decision);
    },
  });
  supervisor.subscribe(s.settle, { queue: 'sv', callback: () => void settles++ });
  supervisor.subscribe(s.act, {
    queue: 'sv',
    callback: (err, msg) => {
      if (!err && msg.reply) supervisor.publish(s.exec, bytes.execute, { reply: msg.reply });
    },
  });
  executor.subscribe(s.exec, {
    queue: 'exec',
    callback: (err, msg) => {
      if (!err) msg.respond(bytes.result);
    },
  });
  await Promise.all([supervisor.flush(), executor.flush()]);
  const side: StepSide = {
    name: 'raw',
    step,
    close: async () => {
      await closeAll([planner, supervisor, executor]);
    },
  };
  await side.step(0);
  return side;
}

/**
 * Raw NATS doing the durable writes a governed step needs, and nothing else: no validation,
 * policy, signing, hashing or logic — the floor that "audited and claimed before the effect"
 * sets on this machine. Per step, as the supervisor and executor do them:
 *
 *   authorize: grant record create ∥ budget scope CAS, then audit publish (acked), reply;
 *   settle:    grant record read, scope CAS, grant record update, audit publish (off the path);
 *   act:       breaker CAS, audit publish (acked), forward → executor: idempotency create,
 *              (no-op tool), reply, then idempotency update and a settle → breaker CAS.
 *
 * Pre-encoded payloads as in `rawChain`; KV values are small fixed bytes.
 */
export async function rawDurableChain(url: string, tag = 'durable'): Promise<StepSide> {
  const setup = await rawSetup(url, tag);
  const { p, opts, subjects: s, planner, supervisor, executor, step } = setup;
  const bytes = { ...setup.bytes, value: new TextEncoder().encode(JSON.stringify(p.settle)) };
  const jsm = await jetstreamManager(supervisor);
  const stream = `BENCH_${tag.toUpperCase()}_AUDIT`;
  await jsm.streams.add({ name: stream, subjects: [`${s.audit}.>`] });
  const svJs = jetstream(supervisor);
  const svKv = await new Kvm(svJs).create(`bench_${tag}_sv`, { history: 1 });
  const exKv = await new Kvm(jetstream(executor)).create(`bench_${tag}_ex`, { history: 1 });
  const revisions = new Map<string, number>();
  /**
   * Compare-and-set with the revision this process last wrote; on a conflict (a settle and the
   * next authorize on one scope at once) read the current revision and try again, as the
   * ledger does.
   */
  const cas = async (key: string): Promise<void> => {
    for (;;) {
      const rev = revisions.get(key);
      try {
        revisions.set(
          key,
          rev === undefined
            ? await svKv.put(key, bytes.value)
            : await svKv.update(key, bytes.value, rev),
        );
        return;
      } catch {
        const e = await svKv.get(key);
        if (e) revisions.set(key, e.revision);
        else revisions.delete(key);
      }
    }
  };
  const audit = () => svJs.publish(`${s.audit}.sv`, bytes.settle);
  let n = 0;
  const fail = (err: unknown) => {
    throw err;
  };
  supervisor.subscribe(s.authorize, {
    queue: 'sv',
    callback: (err, msg) => {
      if (err) return;
      const grant = `g${++n}`;
      void Promise.all([svKv.create(grant, bytes.value), cas('scope')])
        .then(audit)
        .then(() => msg.respond(bytes.decision), fail);
    },
  });
  supervisor.subscribe(s.settle, {
    queue: 'sv',
    callback: () => {
      const grant = `g${n}`;
      void svKv
        .get(grant)
        .then((e) =>
          cas('scope').then(() => svKv.update(grant, bytes.value, e?.revision ?? 0).catch(() => 0)),
        )
        .then(audit, fail);
    },
  });
  supervisor.subscribe(`${s.settle}.tool`, {
    queue: 'sv',
    callback: () => void cas('breaker').catch(fail),
  });
  supervisor.subscribe(s.act, {
    queue: 'sv',
    callback: (err, msg) => {
      if (err || !msg.reply) return;
      const reply = msg.reply;
      void cas('breaker')
        .then(audit)
        .then(() => supervisor.publish(s.exec, bytes.execute, { reply }), fail);
    },
  });
  let k = 0;
  executor.subscribe(s.exec, {
    queue: 'exec',
    callback: (err, msg) => {
      if (err) return;
      const key = `k${++k}`;
      // Claimed before the (no-op) tool runs; the result is stored right after the reply.
      void exKv.create(key, bytes.value).then((rev) => {
        msg.respond(bytes.result);
        executor.publish(`${s.settle}.tool`, bytes.settle);
        return exKv.update(key, bytes.value, rev);
      }, fail);
    },
  });
  await Promise.all([supervisor.flush(), executor.flush()]);
  const side: StepSide = {
    name: 'durable',
    step,
    close: async () => {
      await closeAll([planner, supervisor, executor]);
      const nc = await connect(opts(`bench-${tag}-cleanup`));
      const m = await jetstreamManager(nc);
      for (const name of [stream, `KV_bench_${tag}_sv`, `KV_bench_${tag}_ex`]) {
        await m.streams.delete(name).catch(() => false);
      }
      await nc.close();
    },
  };
  await side.step(0);
  return side;
}

/**
 * Governance off: the same actors' messaging through the Reins runtime (typed `handle` with
 * zod validation and msgpackr, units of work, `ctx.forward`), answering fixed messages: no
 * ledger, policy, breakers, audit, grant signing or idempotency ledger.
 */
export async function ungovernedChain(url: string): Promise<StepSide> {
  const p = stepPayloads();
  const planner = await connectRuntime(url, 'bench-off-planner');
  const supervisor = await connectRuntime(url, 'bench-off-supervisor');
  const executor = await connectRuntime(url, 'bench-off-executor');
  const s = {
    authorize: 'bench.off.authorize',
    settle: 'bench.off.settle',
    act: 'bench.off.act',
    exec: 'bench.off.exec',
  };
  await supervisor.start(
    defineActor({
      role: 'bench-off-supervisor',
      setup(a) {
        a.handle(s.authorize, AuthorizeRequest, () => p.decision, {
          queue: 'sv',
          reply: Decision,
        });
        a.handle(s.settle, SettleRequest, () => undefined, { queue: 'sv' });
        a.handle(
          s.act,
          ActRequest,
          (req, ctx) => {
            ctx.forward(s.exec, ExecuteRequest, { ...p.execute, args: req.args });
            return undefined;
          },
          { queue: 'sv' },
        );
      },
    }),
  );
  await executor.start(
    defineActor({
      role: 'bench-off-executor',
      setup(a) {
        a.handle(s.exec, ExecuteRequest, () => p.result, { queue: 'exec', reply: ToolResult });
      },
    }),
  );
  await Promise.all([supervisor.nc.flush(), executor.nc.flush()]);
  const side: StepSide = {
    name: 'off',
    step: async (i) => {
      const d = await planner.request(s.authorize, AuthorizeRequest, Decision, p.authorize, {
        timeoutMs: TIMEOUT_MS,
      });
      if (d.decision !== 'grant') throw new Error('governance-off authorize denied');
      planner.publish(s.settle, SettleRequest, p.settle);
      const r = await planner.request(
        s.act,
        ActRequest,
        ToolResult,
        { ...p.act, args: { i } },
        { timeoutMs: TIMEOUT_MS },
      );
      if (!r.ok) throw new Error('governance-off act failed');
    },
    close: async () => {
      await planner.close();
      await supervisor.close();
      await executor.close();
    },
  };
  await side.step(0);
  return side;
}

/** A governed run on a real supervisor, for `governedStep` (run with a huge step budget). */
export async function startBenchRun(client: Runtime, role: string): Promise<string> {
  const run = await client.request(client.subjects.runsStart, RunStartRequest, RunRecord, {
    goal: 'benchmark governed steps',
    role,
    budget: { steps: 1_000_000_000 },
    waitForPlanner: true, // no planner: the bench takes the steps itself
  });
  return run.runId;
}

/**
 * The governed step on a real supervisor and executor, issued the way the planner does it:
 * `sv.authorize` → Decision, `sv.settle` published, `sv.act` → (forwarded to the executor,
 * which verifies the grant, claims the idempotency key, runs the no-op tool) → ToolResult.
 */
export function governedStep(
  client: Runtime,
  runId: string,
  tool: string,
  agentId = AGENT_ID,
): StepSide {
  const subjects = client.subjects;
  let n = 0;
  return {
    name: 'reins',
    step: async (i) => {
      const stepId = `s${++n}`;
      const d = await client.request(
        subjects.authorize(runId),
        AuthorizeRequest,
        Decision,
        {
          runId,
          agentId,
          role: 'planner',
          stepId,
          kind: 'llm',
          model: 'scripted',
          estimate: { inputTokens: 60, outputTokens: 4096, usd: 0 },
        },
        { timeoutMs: TIMEOUT_MS },
      );
      if (d.decision !== 'grant') throw new Error(`authorize: ${JSON.stringify(d)}`);
      client.publish(subjects.settle(runId), SettleRequest, {
        grantId: d.grant.grantId,
        runId,
        agentId,
        actual: { inputTokens: 60, outputTokens: 12, usd: 0, steps: 1 },
        outcome: 'ok',
      });
      const r = await client.request(
        subjects.act(runId),
        ActRequest,
        ToolResult,
        {
          runId,
          agentId,
          role: 'planner',
          stepId,
          tool,
          args: { i },
          idempotencyKey: `${runId}.${n}.0`,
          timeoutMs: 30_000,
        },
        { timeoutMs: TIMEOUT_MS },
      );
      if (!r.ok) throw new Error(`act: ${JSON.stringify(r.error)}`);
    },
    close: async () => undefined,
  };
}
