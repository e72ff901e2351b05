import { ProtocolError } from '@reins/protocol';
import type { AssistantMessage, ChatMessage, ToolSpec } from './messages.js';
import type { ModelPrice } from './prices.js';

/** Output cap used when neither the request nor the model options set one. */
export const DEFAULT_MAX_OUTPUT_TOKENS = 4096;

/**
 * The output cap of a call: `requested`, else `fallback`. Throws `ProtocolError` (BAD_REQUEST)
 * unless it is an integer in 1..10,000,000.
 */
export function resolveMaxOutputTokens(requested: number | undefined, fallback: number): number {
  const value = requested ?? fallback;
  if (!Number.isInteger(value) || value < 1 || value > 10_000_000) {
    throw new ProtocolError(`maxOutputTokens must be an integer in 1..10000000, got ${value}`);
  }
  return value;
}

/** One model call. */
export interface GenerateRequest {
  messages: readonly ChatMessage[];
  /** Tools the model may call; build them with `toolSpec(tool)`. */
  tools?: readonly ToolSpec[] | undefined;
  /** Cap on output tokens; the provider is asked to stop there. */
  maxOutputTokens?: number | undefined;
  /** Aborting it aborts the call (and closes the HTTP request) with `AbortedError`. */
  signal?: AbortSignal | undefined;
}

/** What a model call consumed, as the provider reported it (or counted, for offline models). */
export interface TokenUsage {
  inputTokens: number;
  outputTokens: number;
}

/** Why the model stopped. `other` covers provider values Reins does not know. */
export type FinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'other';

/**
 * A tool call with its arguments parsed. A call whose arguments are not a JSON object, or that
 * names a tool that was not offered, is kept but flagged `valid: false` with the reason.
 */
export type ParsedToolCall =
  | { id: string; name: string; arguments: string; valid: true; args: Record<string, unknown> }
  | { id: string; name: string; arguments: string; valid: false; error: string };

/** The answer of one model call. Append `message` to the conversation as is. */
export interface GenerateResult {
  message: AssistantMessage;
  toolCalls: ParsedToolCall[];
  usage: TokenUsage;
  /** The model that answered, as the provider named it. */
  model: string;
  finishReason: FinishReason;
}

/** An upper bound on what a call may cost, reserved before the call. */
export interface ModelEstimate {
  inputTokens: number;
  maxOutputTokens: number;
  /** USD at the model's price, or `null` when the model has no price (see `costOf`). */
  usd: number | null;
}

/** A chat model: a real provider or the deterministic scripted one. */
export interface Model {
  /** Model id sent to the provider (`gpt-4o-mini`, `scripted`). */
  readonly name: string;
  /** Who serves it (`openai`, `scripted`, …). */
  readonly provider: string;
  /** USD per 1M tokens, or `undefined` when unknown (a USD budget then fails closed). */
  readonly price: ModelPrice | undefined;
  /** Makes one call. Failures are coded Reins errors (`RATE_LIMITED`, `MODEL_ERROR`, `ABORTED`, …). */
  generate(request: GenerateRequest): Promise<GenerateResult>;
  /** An upper bound on the call's usage, computed offline with gpt-tokenizer. */
  estimate(request: Omit<GenerateRequest, 'signal'>): ModelEstimate;
}
