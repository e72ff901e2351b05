import { z } from 'zod';
import { ReinsError } from '@reins/protocol';
import { AbortedError, ProtocolError, TimeoutError, ToolFailedError } from '@reins/protocol';
import { silentLogger } from './tool.js';
import type { Tool, ToolLogger } from './tool.js';

/** What `runTool` needs besides the arguments. */
export interface RunToolContext {
  runId: string;
  stepId: string;
  idempotencyKey: string;
  /** Aborting it aborts the tool (`AbortedError`). */
  signal?: AbortSignal | undefined;
  logger?: ToolLogger | undefined;
  /** Overrides the tool's own `timeoutMs` (e.g. a smaller deadline from the planner). */
  timeoutMs?: number | undefined;
}

function issues(error: z.ZodError): { path: string; message: string }[] {
  return error.issues.slice(0, 20).map((i) => ({ path: i.path.join('.'), message: i.message }));
}

/**
 * Runs a tool once, governed: validates `rawArgs` against its input schema (`ProtocolError`,
 * BAD_REQUEST, before the tool runs), aborts the signal it gives the tool when `timeoutMs` passes
 * (`TimeoutError`) or the caller aborts (`AbortedError`), validates the output (`ToolFailedError`),
 * and wraps anything else the tool throws as `ToolFailedError` (Reins errors pass through as is).
 * Resolves with the parsed output.
 */
export async function runTool<I extends z.ZodType, O extends z.ZodType>(
  tool: Tool<I, O>,
  rawArgs: unknown,
  ctx: RunToolContext,
): Promise<z.output<O>> {
  if (ctx.signal?.aborted === true) {
    throw new AbortedError(`tool ${tool.name} aborted before it started`, {
      cause: ctx.signal.reason,
      details: { tool: tool.name },
    });
  }
  const parsed = tool.input.safeParse(rawArgs);
  if (!parsed.success) {
    throw new ProtocolError(
      `invalid arguments for tool ${tool.name}: ${z.prettifyError(parsed.error)}`,
      { details: { tool: tool.name, issues: issues(parsed.error) } },
    );
  }

  const timeoutMs = ctx.timeoutMs ?? tool.timeoutMs;
  const controller = new AbortController();
  let rejectAbort: (err: ReinsError) => void = () => undefined;
  const aborted = new Promise<never>((_, reject) => {
    rejectAbort = reject;
  });
  const abortWith = (err: ReinsError) => {
    if (controller.signal.aborted) return;
    controller.abort(err);
    rejectAbort(err);
  };
  const onParentAbort = () =>
    abortWith(
      new AbortedError(`tool ${tool.name} aborted`, {
        cause: ctx.signal?.reason,
        details: { tool: tool.name },
      }),
    );
  ctx.signal?.addEventListener('abort', onParentAbort, { once: true });
  const timer = setTimeout(() => {
    abortWith(
      new TimeoutError(`tool ${tool.name} timed out after ${timeoutMs} ms`, {
        details: { tool: tool.name, timeoutMs },
      }),
    );
  }, timeoutMs);

  const logger = ctx.logger ?? silentLogger;
  let output: unknown;
  try {
    const running = Promise.resolve().then(() =>
      tool.run(parsed.data, {
        signal: controller.signal,
        runId: ctx.runId,
        stepId: ctx.stepId,
        idempotencyKey: ctx.idempotencyKey,
        logger,
      }),
    );
    // A tool that ignores its signal must not hold the caller past the deadline.
    running.catch(() => undefined);
    output = await Promise.race([running, aborted]);
  } catch (err) {
    if (controller.signal.aborted && controller.signal.reason instanceof ReinsError) {
      throw controller.signal.reason;
    }
    if (err instanceof ReinsError) throw err;
    const message = err instanceof Error ? err.message : String(err);
    throw new ToolFailedError(`tool ${tool.name} failed: ${message}`, {
      cause: err,
      details: { tool: tool.name },
    });
  } finally {
    clearTimeout(timer);
    ctx.signal?.removeEventListener('abort', onParentAbort);
  }

  const result = tool.output.safeParse(output);
  if (!result.success) {
    throw new ToolFailedError(
      `tool ${tool.name} returned invalid output: ${z.prettifyError(result.error)}`,
      { details: { tool: tool.name, issues: issues(result.error) } },
    );
  }
  return result.data;
}
