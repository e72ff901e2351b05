import OpenAI from 'openai';
import type {
  ChatCompletionCreateParamsNonStreaming,
  ChatCompletionMessageParam,
} from 'openai/resources/chat/completions';
import { z } from 'zod';
import { ModelError, ProtocolError, UnauthenticatedError } from '@reins/protocol';
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
import { mapOpenAIError } from './openai-errors.js';
import { defaultPriceTable, priceUsage } from './prices.js';
import type { ModelPrice, PriceTable } from './prices.js';
import { countInputTokens, countOutputTokens } from './token-count.js';
import { parseToolCalls } from './tool-calls.js';
import { toOpenAITool } from './tool-schema.js';

/** Default model when neither `model` nor `REINS_MODEL` is set. */
export const DEFAULT_OPENAI_MODEL = 'gpt-4o-mini';

/** Options of `createOpenAIModel`. Unset values come from the environment. */
export interface OpenAIModelOptions {
  /** Default `OPENAI_API_KEY`. Servers that need no key accept any string. */
  apiKey?: string | undefined;
  /** Default `OPENAI_BASE_URL`, then `https://api.openai.com/v1`. */
  baseURL?: string | undefined;
  /** Default `REINS_MODEL`, then `gpt-4o-mini`. */
  model?: string | undefined;
  /** Retries the SDK makes on 408/409/429/5xx/connection errors (default 2). */
  maxRetries?: number | undefined;
  /** Per-attempt timeout in ms (SDK default 10 min). */
  timeout?: number | undefined;
  /** Output cap when the request sets none (default 4096). */
  maxOutputTokens?: number | undefined;
  /** Which request field carries the output cap: newer OpenAI models want `max_completion_tokens`. */
  maxTokensParam?: 'max_completion_tokens' | 'max_tokens' | undefined;
  /** USD per 1M tokens; default from `prices`. */
  price?: ModelPrice | undefined;
  /** Where to look the price up (default: built-in prices + `REINS_PRICES`). */
  prices?: PriceTable | undefined;
  /** Multiplier on counted input tokens for `estimate` (default 1.1): providers count a bit differently. */
  estimateMargin?: number | undefined;
  /** Provider label (default `openai`). */
  provider?: string | undefined;
  /** Environment to read (default `process.env`). */
  env?: Readonly<Record<string, string | undefined>> | undefined;
  /** A custom fetch (for tests or proxies). */
  fetch?: typeof fetch | undefined;
}

// The SDK hands back whatever JSON the server sent: parse it, do not trust it.
const CompletionResponse = z.object({
  model: z.string().max(256).optional(),
  choices: z
    .array(
      z.object({
        finish_reason: z.string().nullish(),
        message: z.object({
          content: z.string().nullish(),
          refusal: z.string().nullish(),
          tool_calls: z
            .array(
              z.object({
                id: z.string().max(256),
                type: z.string(),
                function: z.object({ name: z.string().max(256), arguments: z.string() }).optional(),
              }),
            )
            .nullish(),
        }),
      }),
    )
    .min(1),
  usage: z
    .object({
      prompt_tokens: z.number().int().nonnegative(),
      completion_tokens: z.number().int().nonnegative(),
    })
    .nullish(),
});

function toOpenAIMessage(message: ChatMessage): ChatCompletionMessageParam {
  switch (message.role) {
    case 'system':
      return { role: 'system', content: message.content };
    case 'user':
      return { role: 'user', content: message.content };
    case 'tool':
      return { role: 'tool', tool_call_id: message.toolCallId, content: message.content };
    case 'assistant': {
      const calls = message.toolCalls ?? [];
      if (calls.length === 0) return { role: 'assistant', content: message.content };
      return {
        role: 'assistant',
        content: message.content === '' ? null : message.content,
        tool_calls: calls.map((c) => ({
          id: c.id,
          type: 'function' as const,
          function: { name: c.name, arguments: c.arguments },
        })),
      };
    }
  }
}

function finishReason(value: string | null | undefined): FinishReason {
  switch (value) {
    case 'stop':
    case 'length':
    case 'tool_calls':
    case 'content_filter':
      return value;
    case 'function_call':
      return 'tool_calls';
    default:
      return 'other';
  }
}

function validateMessages(request: GenerateRequest): ChatMessage[] {
  if (request.messages.length === 0)
    throw new ProtocolError('a model call needs at least one message');
  return request.messages.map((m, i) => {
    const parsed = ChatMessage.safeParse(m);
    if (!parsed.success) {
      throw new ProtocolError(`invalid message ${i}: ${z.prettifyError(parsed.error)}`);
    }
    return parsed.data;
  });
}

/**
 * A model served by any OpenAI-compatible Chat Completions endpoint (OpenAI, vLLM, Ollama, a
 * gateway), through the `openai` SDK. The request's `signal` goes to the SDK, so an abort closes
 * the HTTP request. Errors are coded (see `mapOpenAIError`); a missing API key throws
 * `UnauthenticatedError` here; tool calls with broken JSON come back flagged `valid: false`.
 */
export function createOpenAIModel(options: OpenAIModelOptions = {}): Model {
  const env = options.env ?? process.env;
  const apiKey = options.apiKey ?? env['OPENAI_API_KEY'];
  const name = options.model ?? env['REINS_MODEL'] ?? DEFAULT_OPENAI_MODEL;
  if (apiKey === undefined || apiKey === '') {
    throw new UnauthenticatedError(
      `no API key for model ${name}: set OPENAI_API_KEY or pass createOpenAIModel({ apiKey }) ` +
        '(servers that need no key accept any non-empty string)',
    );
  }
  const baseURL = options.baseURL ?? env['OPENAI_BASE_URL'];
  const defaultMax = resolveMaxOutputTokens(options.maxOutputTokens, DEFAULT_MAX_OUTPUT_TOKENS);
  const margin = options.estimateMargin ?? 1.1;
  const price = options.price ?? (options.prices ?? defaultPriceTable()).get(name);
  const maxTokensParam = options.maxTokensParam ?? 'max_completion_tokens';
  const client = new OpenAI({
    apiKey,
    ...(baseURL !== undefined && baseURL !== '' ? { baseURL } : {}),
    ...(options.maxRetries !== undefined ? { maxRetries: options.maxRetries } : {}),
    ...(options.timeout !== undefined ? { timeout: options.timeout } : {}),
    ...(options.fetch !== undefined ? { fetch: options.fetch } : {}),
  });

  const estimate = (request: Omit<GenerateRequest, 'signal'>): ModelEstimate => {
    const counted = countInputTokens({ messages: request.messages, tools: request.tools });
    const inputTokens = Math.ceil(counted * margin);
    const maxOutputTokens = resolveMaxOutputTokens(request.maxOutputTokens, defaultMax);
    const usd =
      price === undefined
        ? null
        : priceUsage(price, { inputTokens, outputTokens: maxOutputTokens });
    return { inputTokens, maxOutputTokens, usd };
  };

  const generate = async (request: GenerateRequest): Promise<GenerateResult> => {
    const messages = validateMessages(request);
    const tools: readonly ToolSpec[] = request.tools ?? [];
    const maxOutput = resolveMaxOutputTokens(request.maxOutputTokens, defaultMax);
    const body: ChatCompletionCreateParamsNonStreaming = {
      model: name,
      messages: messages.map(toOpenAIMessage),
      ...(tools.length > 0 ? { tools: tools.map(toOpenAITool) } : {}),
      ...(maxTokensParam === 'max_tokens'
        ? { max_tokens: maxOutput }
        : { max_completion_tokens: maxOutput }),
    };
    let raw: unknown;
    try {
      raw = await client.chat.completions.create(
        body,
        request.signal ? { signal: request.signal } : {},
      );
    } catch (err) {
      throw mapOpenAIError(err, name, request.signal);
    }
    const parsed = CompletionResponse.safeParse(raw);
    if (!parsed.success) {
      throw new ModelError(
        `model provider returned a response for ${name} that is not a chat completion: ${z.prettifyError(parsed.error)}`,
        { details: { model: name, reason: 'malformed_response' }, retryable: true },
      );
    }
    const choice = parsed.data.choices[0];
    if (choice === undefined) throw new ModelError(`no choices in the response for ${name}`);
    const rawCalls: ToolCall[] = [];
    const invalidTypes = new Map<string, string>();
    for (const call of choice.message.tool_calls ?? []) {
      if (call.type !== 'function' || call.function === undefined) {
        invalidTypes.set(call.id, `unsupported tool call type ${JSON.stringify(call.type)}`);
        rawCalls.push({ id: call.id, name: call.function?.name ?? call.type, arguments: '' });
      } else {
        rawCalls.push({
          id: call.id,
          name: call.function.name,
          arguments: call.function.arguments,
        });
      }
    }
    const content = choice.message.content ?? choice.message.refusal ?? '';
    const message: AssistantMessage =
      rawCalls.length > 0
        ? { role: 'assistant', content, toolCalls: rawCalls }
        : { role: 'assistant', content };
    const toolCalls = parseToolCalls(rawCalls, tools).map((c) => {
      const bad = invalidTypes.get(c.id);
      return bad === undefined
        ? c
        : { id: c.id, name: c.name, arguments: c.arguments, valid: false as const, error: bad };
    });
    const usage = parsed.data.usage
      ? {
          inputTokens: parsed.data.usage.prompt_tokens,
          outputTokens: parsed.data.usage.completion_tokens,
        }
      : {
          // Some compatible servers omit usage; count it rather than report zero.
          inputTokens: countInputTokens({ messages, tools }),
          outputTokens: countOutputTokens({ content, toolCalls: rawCalls }),
        };
    return {
      message,
      toolCalls,
      usage,
      model: parsed.data.model ?? name,
      finishReason: finishReason(choice.finish_reason),
    };
  };

  return Object.freeze({ name, provider: options.provider ?? 'openai', price, generate, estimate });
}
