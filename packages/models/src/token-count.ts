import { countTokens, decode, encode } from 'gpt-tokenizer';
import type { ChatMessage, ToolCall, ToolSpec } from './messages.js';

// Token counts with o200k_base (GPT-4o, 4.1, o-series, GPT-5). Text that looks like a special
// token (`<|endoftext|>`) is counted as plain text instead of throwing: it is user data.
const PLAIN = { disallowedSpecial: new Set<string>() };

/** Tokens per message for role and separators (OpenAI's chat format uses 3–4). */
export const MESSAGE_OVERHEAD_TOKENS = 4;
/** Tokens that prime the assistant's reply. */
export const REPLY_PRIMING_TOKENS = 3;
const TOOL_CALL_OVERHEAD_TOKENS = 8;
const TOOLS_OVERHEAD_TOKENS = 12;
const TOOL_OVERHEAD_TOKENS = 8;

/**
 * Counts of recently seen texts. A run's conversation is counted again at every step (the
 * budget estimate), so without this a step's cost grows with its history. Bounded by the
 * characters it holds; the oldest entries go first.
 */
const memo = new Map<string, number>();
const MEMO_MAX_CHARS = 4_000_000;
const MEMO_MIN_CHARS = 8;
let memoChars = 0;

/** Tokens in `text` (o200k_base). Never throws on special-token-like text. */
export function countTextTokens(text: string): number {
  if (text.length === 0) return 0;
  if (text.length < MEMO_MIN_CHARS || text.length > MEMO_MAX_CHARS / 8) {
    return countTokens(text, PLAIN);
  }
  const known = memo.get(text);
  if (known !== undefined) return known;
  const n = countTokens(text, PLAIN);
  memo.set(text, n);
  memoChars += text.length;
  for (const key of memo.keys()) {
    if (memoChars <= MEMO_MAX_CHARS) break;
    memo.delete(key);
    memoChars -= key.length;
  }
  return n;
}

/** `text` cut to at most `maxTokens` tokens. */
export function truncateToTokens(text: string, maxTokens: number): string {
  const tokens = encode(text, PLAIN);
  return tokens.length <= maxTokens ? text : decode(tokens.slice(0, Math.max(0, maxTokens)));
}

function toolCallTokens(call: ToolCall): number {
  return TOOL_CALL_OVERHEAD_TOKENS + countTextTokens(call.name) + countTextTokens(call.arguments);
}

function messageTokens(message: ChatMessage): number {
  let n = MESSAGE_OVERHEAD_TOKENS + countTextTokens(message.content);
  if (message.role === 'assistant') {
    for (const call of message.toolCalls ?? []) n += toolCallTokens(call);
  } else if (message.role === 'tool') {
    n += countTextTokens(message.toolCallId) + countTextTokens(message.name ?? '');
  }
  return n;
}

/** Tokens the tool definitions add to a request (their JSON, plus framing). */
export function countToolTokens(tools: readonly ToolSpec[]): number {
  if (tools.length === 0) return 0;
  let n = TOOLS_OVERHEAD_TOKENS;
  for (const tool of tools) {
    const json = JSON.stringify({
      name: tool.name,
      description: tool.description,
      parameters: tool.parameters,
    });
    n += TOOL_OVERHEAD_TOKENS + countTextTokens(json);
  }
  return n;
}

/**
 * Input tokens of a request: every message with its overhead, tool calls and tool schemas.
 * It counts tool schemas as JSON, which is longer than the form OpenAI renders, so it errs high.
 */
export function countInputTokens(request: {
  messages: readonly ChatMessage[];
  tools?: readonly ToolSpec[] | undefined;
}): number {
  let n = REPLY_PRIMING_TOKENS;
  for (const message of request.messages) n += messageTokens(message);
  return n + countToolTokens(request.tools ?? []);
}

/** Output tokens of an answer: its text plus, for each tool call, its name and argument JSON. */
export function countOutputTokens(output: {
  content: string;
  toolCalls?: readonly ToolCall[] | undefined;
}): number {
  let n = countTextTokens(output.content);
  for (const call of output.toolCalls ?? []) {
    n += countTextTokens(call.name) + countTextTokens(call.arguments);
  }
  return n;
}
