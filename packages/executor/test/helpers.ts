import { z } from 'zod';
import { defineTool, type AnyTool } from '@reins/models';
import {
  ExecuteRequest,
  ToolResult,
  createGrantSigner,
  hashArgs,
  newId,
  type Grant,
  type GrantBody,
  type GrantSigner,
} from '@reins/protocol';
import { Runtime, createLogger, type RuntimeOptions } from '@reins/runtime';
import { aborted, deferred, startNatsServer, type NatsServer } from '@reins/testing';
import { startExecutor, type Executor, type ExecutorOptions } from '@reins/executor';

/** A runtime on a test server with logs kept quiet unless REINS_LOG_LEVEL says otherwise. */
export function testRuntime(url: string, options: RuntimeOptions = {}): Promise<Runtime> {
  return Runtime.connect({
    servers: url,
    logger: createLogger({ level: process.env['REINS_LOG_LEVEL'] ?? 'silent' }),
    heartbeatMs: 500,
    ...options,
  });
}

export { aborted, deferred } from '@reins/testing';

/** The planner identity grants are issued to in these tests. */
export const PLANNER = { agentId: 'planner-1', role: 'planner' } as const;

/** What a test asks the executor to do. */
export interface Call {
  tool: string;
  args: Record<string, unknown>;
  idempotencyKey: string;
  runId?: string;
  stepId?: string;
  timeoutMs?: number;
}

/** Plays the supervisor: signs a tool grant for exactly `call`, with `overrides` applied. */
export function grantFor(
  signer: GrantSigner,
  call: Call,
  overrides: Partial<GrantBody> = {},
): Grant {
  const now = Date.now();
  return signer.sign({
    grantId: newId('g'),
    runId: call.runId ?? 'run-1',
    agentId: PLANNER.agentId,
    role: PLANNER.role,
    kind: 'tool',
    stepId: call.stepId ?? 'step-1',
    tool: call.tool,
    argsHash: hashArgs(call.args),
    idempotencyKey: call.idempotencyKey,
    reserved: { inputTokens: 0, outputTokens: 0, usd: 0, steps: 1 },
    issuedAt: now,
    expiresAt: now + 60_000,
    issuer: signer.publicKey,
    ...overrides,
  });
}

/** The `ExecuteRequest` the supervisor would forward for `call` with `grant`. */
export function executeRequest(call: Call, grant: Grant): ExecuteRequest {
  return {
    grant,
    runId: call.runId ?? 'run-1',
    stepId: call.stepId ?? 'step-1',
    tool: call.tool,
    args: call.args,
    idempotencyKey: call.idempotencyKey,
    ...(call.timeoutMs !== undefined ? { timeoutMs: call.timeoutMs } : {}),
  };
}

/** A started nats-server, an executor runtime, a client runtime and a grant signer. */
export interface Env extends AsyncDisposable {
  nats: NatsServer;
  rt: Runtime;
  client: Runtime;
  signer: GrantSigner;
  executor: Executor;
  /** Sends `call` with a grant signed for it (or the given one) and returns the tool result. */
  execute(call: Call, grant?: Grant): Promise<ToolResult>;
}

/** Starts everything a test needs; dispose it with `await using`. */
export async function setup(
  tools: AnyTool[],
  options: Partial<ExecutorOptions> = {},
  runtimeOptions: RuntimeOptions = {},
): Promise<Env> {
  const nats = await startNatsServer();
  const rt = await testRuntime(nats.url, runtimeOptions);
  const client = await testRuntime(nats.url);
  const { signer } = createGrantSigner();
  const executor = await startExecutor(rt, {
    tools,
    trustedIssuers: [signer.publicKey],
    agentId: 'executor-1',
    ...options,
  });
  return {
    nats,
    rt,
    client,
    signer,
    executor,
    execute: (call, grant) =>
      client.request(
        client.subjects.exec(call.tool),
        ExecuteRequest,
        ToolResult,
        executeRequest(call, grant ?? grantFor(signer, call)),
        { timeoutMs: 20_000 },
      ),
    async [Symbol.asyncDispose]() {
      await client.close();
      await rt.close();
      await nats.stop();
    },
  };
}

/** Test tools, with call counters and gates. */
export function testTools() {
  const calls = { append: 0, put: 0, slowWrite: 0, slowRead: 0, boom: 0, badOutput: 0 };
  const lines: string[] = [];
  const values = new Map<string, string>();
  let gate: Promise<void> | undefined;
  let putGate: Promise<void> | undefined;
  const slowWriteStarted = deferred();
  const slowReadStarted = deferred();

  /** A non-idempotent write: appends a line (the side effect we count). */
  const append = defineTool({
    name: 'append',
    description: 'Appends a line to the journal.',
    input: z.object({ line: z.string().max(100) }),
    output: z.object({ count: z.number().int() }),
    effect: 'write',
    idempotent: false,
    async run({ line }) {
      calls.append += 1;
      if (gate) await gate;
      lines.push(line);
      return { count: lines.length };
    },
  });
  /** An idempotent write: sets a value. */
  const put = defineTool({
    name: 'put_value',
    description: 'Sets a value.',
    input: z.object({ key: z.string(), value: z.string() }),
    output: z.object({ ok: z.boolean() }),
    effect: 'write',
    idempotent: true,
    async run({ key, value }) {
      calls.put += 1;
      if (putGate) await putGate;
      values.set(key, value);
      return { ok: true };
    },
  });
  /** A write that runs until its signal aborts. */
  const slowWrite = defineTool({
    name: 'slow_write',
    description: 'Writes slowly.',
    input: z.object({}),
    output: z.object({}),
    effect: 'write',
    idempotent: false,
    async run(_args, ctx) {
      calls.slowWrite += 1;
      slowWriteStarted.resolve();
      throw await aborted(ctx.signal);
    },
  });
  /** A read that runs until its signal aborts. */
  const slowRead = defineTool({
    name: 'slow_read',
    description: 'Reads slowly.',
    input: z.object({}),
    output: z.object({}),
    effect: 'read',
    idempotent: true,
    async run(_args, ctx) {
      calls.slowRead += 1;
      slowReadStarted.resolve();
      throw await aborted(ctx.signal);
    },
  });
  const boom = defineTool({
    name: 'boom',
    description: 'Always throws.',
    input: z.object({ n: z.number() }),
    output: z.object({}),
    effect: 'read',
    idempotent: true,
    run() {
      calls.boom += 1;
      throw new Error('kaboom');
    },
  });
  const badOutput = defineTool({
    name: 'bad_output',
    description: 'Returns output that fails its schema.',
    input: z.object({}),
    output: z.object({ n: z.number() }),
    effect: 'read',
    idempotent: true,
    run() {
      calls.badOutput += 1;
      return { n: 'not a number' } as unknown as { n: number };
    },
  });
  return {
    calls,
    lines,
    values,
    slowWriteStarted: slowWriteStarted.promise,
    slowReadStarted: slowReadStarted.promise,
    /** Makes `append` wait until the returned function is called. */
    holdAppend(): () => void {
      const d = deferred();
      gate = d.promise;
      return () => {
        gate = undefined;
        d.resolve();
      };
    },
    /** Makes `put_value` wait until the returned function is called. */
    holdPut(): () => void {
      const d = deferred();
      putGate = d.promise;
      return () => {
        putGate = undefined;
        d.resolve();
      };
    },
    tools: [append, put, slowWrite, slowRead, boom, badOutput] as AnyTool[],
  };
}
