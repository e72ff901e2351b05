import { createHash } from 'node:crypto';
import { setTimeout as delay } from 'node:timers/promises';
import { z } from 'zod';
import { AbortedError, ModelError, ProtocolError } from '@reins/protocol';
import { ChatMessage } from './messages.js';
import type { AssistantMessage, ToolCall, ToolSpec } from './messages.js';
import { DEFAULT_MAX_OUTPUT_TOKENS, resolveMaxOutputTokens } from './model.js';
import type {
  FinishReason,
  GenerateRequest,
  GenerateResult,
  Model,
  ModelEstimate,
} from './model.js';
import { ModelPrice, priceUsage } from './prices.js';
import { countInputTokens, countOutputTokens, truncateToTokens } from './token-count.js';
import { parseToolCalls } from './tool-calls.js';

/** A tool call a script wants the model to make. `args` as an object, or raw text (to test bad JSON). */
export interface ScriptedToolCall {
  name: string;
  args: Record<string, unknown> | string;
}

/** One scripted answer: plain text, or text and/or tool calls. */
export type ScriptedTurn = string | { content?: string; toolCalls?: readonly ScriptedToolCall[] };

/** What a script function sees besides the conversation. */
export interface ScriptContext {
  /** Number of assistant messages already in the conversation (0 on the first call). */
  turn: number;
  /** Tools offered on this call. */
  tools: readonly ToolSpec[];
}

/** A script as a function of the conversation: it should read tool results to decide what to do. */
export type ScriptedRespond = (
  conversation: readonly ChatMessage[],
  context: ScriptContext,
) => ScriptedTurn | Promise<ScriptedTurn>;

/** Options of `createScriptedModel`: exactly one of `turns` or `respond`. */
export type ScriptedModelOptions = {
  /** Model name (default `scripted`). */
  name?: string;
  /** USD per 1M tokens (default free). Give one to exercise USD budgets offline. */
  price?: ModelPrice;
  /** Simulated latency per call in ms (abortable; default 0). */
  latencyMs?: number;
} & (
  { turns: readonly ScriptedTurn[]; respond?: never } | { respond: ScriptedRespond; turns?: never }
);

function isAborted(signal: AbortSignal | undefined): boolean {
  return signal?.aborted === true;
}

function stableId(messages: readonly ChatMessage[], index: number): string {
  const hash = createHash('sha256')
    .update(JSON.stringify(messages))
    .update(`#${index}`)
    .digest('hex');
  return `call_${hash.slice(0, 24)}`;
}

/**
 * A deterministic, offline model: answers come from a list of turns (the n-th answer for the
 * conversation's n-th assistant turn) or from a function of the conversation. Token counts are
 * real (gpt-tokenizer), tool call ids are hashes of the conversation, so the same script gives
 * byte-identical output on every run. It honours `maxOutputTokens` (text is cut, finish reason
 * `length`) and the signal (`AbortedError`). A script that runs out of turns throws `ModelError`.
 */
export function createScriptedModel(options: ScriptedModelOptions): Model {
  const name = options.name ?? 'scripted';
  const price = ModelPrice.parse(options.price ?? { input: 0, output: 0 });
  const latencyMs = options.latencyMs ?? 0;
  const { turns } = options;
  const respond: ScriptedRespond =
    turns !== undefined
      ? (_conversation, { turn }) => {
          const next = turns[turn];
          if (next === undefined) {
            throw new ModelError(
              `scripted model ${name} has no turn ${turn} (script has ${turns.length} turns)`,
              { details: { model: name, turn } },
            );
          }
          return next;
        }
      : options.respond;

  const estimate = (request: Omit<GenerateRequest, 'signal'>): ModelEstimate => {
    const inputTokens = countInputTokens(request);
    const maxOutputTokens = resolveMaxOutputTokens(
      request.maxOutputTokens,
      DEFAULT_MAX_OUTPUT_TOKENS,
    );
    return {
      inputTokens,
      maxOutputTokens,
      usd: priceUsage(price, { inputTokens, outputTokens: maxOutputTokens }),
    };
  };

  const generate = async (request: GenerateRequest): Promise<GenerateResult> => {
    const aborted = () =>
      new AbortedError(`model call to ${name} aborted`, {
        cause: request.signal?.reason,
        details: { model: name },
      });
    if (request.signal?.aborted === true) throw aborted();
    const parsedMessages = z.array(ChatMessage).min(1).safeParse(request.messages);
    if (!parsedMessages.success) {
      throw new ProtocolError(`invalid conversation: ${z.prettifyError(parsedMessages.error)}`);
    }
    const messages = parsedMessages.data;
    const tools = request.tools ?? [];
    const maxOutput = resolveMaxOutputTokens(request.maxOutputTokens, DEFAULT_MAX_OUTPUT_TOKENS);
    if (latencyMs > 0) {
      try {
        await delay(latencyMs, undefined, request.signal ? { signal: request.signal } : {});
      } catch {
        throw aborted();
      }
    }
    const turn = messages.filter((m) => m.role === 'assistant').length;
    let scripted: ScriptedTurn;
    try {
      scripted = await respond(messages, { turn, tools });
    } catch (err) {
      if (err instanceof ModelError) throw err;
      throw new ModelError(`script of ${name} failed at turn ${turn}: ${(err as Error).message}`, {
        cause: err,
        details: { model: name, turn },
      });
    }
    // The script may have awaited: look at the signal again.
    if (isAborted(request.signal)) throw aborted();
    const answer = typeof scripted === 'string' ? { content: scripted } : scripted;
    let content = answer.content ?? '';
    let calls: ToolCall[] = (answer.toolCalls ?? []).map((c, i) => ({
      id: stableId(messages, i),
      name: c.name,
      arguments: typeof c.args === 'string' ? c.args : JSON.stringify(c.args),
    }));
    let finishReason: FinishReason = calls.length > 0 ? 'tool_calls' : 'stop';
    let outputTokens = countOutputTokens({ content, toolCalls: calls });
    if (outputTokens > maxOutput) {
      // Like a real provider: the answer stops at the cap; cut-off tool calls are dropped.
      calls = [];
      content = truncateToTokens(content, maxOutput);
      outputTokens = Math.min(maxOutput, countOutputTokens({ content }));
      finishReason = 'length';
    }
    const message: AssistantMessage =
      calls.length > 0
        ? { role: 'assistant', content, toolCalls: calls }
        : { role: 'assistant', content };
    return {
      message,
      toolCalls: parseToolCalls(calls, tools),
      usage: { inputTokens: countInputTokens({ messages, tools }), outputTokens },
      model: name,
      finishReason,
    };
  };

  return Object.freeze({ name, provider: 'scripted', price, generate, estimate });
}
