import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import {
  AbortedError,
  ModelError,
  RateLimitedError,
  UnauthenticatedError,
  UnavailableError,
} from '@reins/protocol';
import { startFakeOpenAI } from '@reins/testing';
import {
  calculator,
  costOf,
  createOpenAIModel,
  createPriceTable,
  defineTool,
  toolResultMessage,
  toolSpec,
} from '@reins/models';
import type { ChatMessage } from '@reins/models';

const weather = defineTool({
  name: 'get_weather',
  description: 'Weather for a city.',
  input: z.object({ city: z.string() }),
  output: z.object({ tempC: z.number() }),
  effect: 'read',
  idempotent: true,
  run: () => ({ tempC: 21 }),
});

const goal: ChatMessage[] = [
  { role: 'system', content: 'You are terse.' },
  { role: 'user', content: 'Weather in Paris?' },
];

function model(url: string, extra: Partial<Parameters<typeof createOpenAIModel>[0]> = {}) {
  return createOpenAIModel({ apiKey: 'sk-test', baseURL: url, model: 'gpt-4o-mini', ...extra });
}

describe('createOpenAIModel over HTTP', () => {
  it('round-trips tool calls and reports usage and cost', async () => {
    await using server = await startFakeOpenAI({ apiKey: 'sk-test' });
    server.enqueue(
      {
        toolCalls: [{ id: 'call_1', name: 'get_weather', arguments: { city: 'Paris' } }],
        usage: { promptTokens: 1000, completionTokens: 200 },
      },
      { content: 'It is 21 °C in Paris.', usage: { promptTokens: 1500, completionTokens: 10 } },
    );
    const m = model(server.url);
    const tools = [toolSpec(weather), toolSpec(calculator)];

    const first = await m.generate({ messages: goal, tools, maxOutputTokens: 300 });
    expect(first.finishReason).toBe('tool_calls');
    expect(first.toolCalls).toEqual([
      {
        id: 'call_1',
        name: 'get_weather',
        arguments: '{"city":"Paris"}',
        valid: true,
        args: { city: 'Paris' },
      },
    ]);
    expect(first.usage).toEqual({ inputTokens: 1000, outputTokens: 200 });
    expect(first.model).toBe('gpt-4o-mini');
    // gpt-4o-mini: $0.15 / $0.60 per 1M tokens.
    expect(costOf(m, first.usage)).toBeCloseTo((1000 * 0.15 + 200 * 0.6) / 1e6, 12);

    const sent = server.requests[0]?.body as {
      model: string;
      tools: { type: string; function: { name: string; parameters: { type: string } } }[];
      max_completion_tokens: number;
      messages: unknown[];
    };
    expect(sent.model).toBe('gpt-4o-mini');
    expect(sent.max_completion_tokens).toBe(300);
    expect(sent.tools.map((t) => t.function.name)).toEqual(['get_weather', 'calculator']);
    expect(sent.tools[0]?.function.parameters.type).toBe('object');
    expect(server.requests[0]?.headers['authorization']).toBe('Bearer sk-test');

    const second = await m.generate({
      messages: [
        ...goal,
        first.message,
        toolResultMessage('call_1', 'get_weather', { ok: true, output: { tempC: 21 } }),
      ],
      tools,
    });
    expect(second.message).toEqual({ role: 'assistant', content: 'It is 21 °C in Paris.' });
    expect(second.toolCalls).toEqual([]);
    const replay = (server.requests[1]?.body as { messages: Record<string, unknown>[] }).messages;
    expect(replay[2]).toMatchObject({
      role: 'assistant',
      content: null,
      tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather' } }],
    });
    expect(replay[3]).toEqual({ role: 'tool', tool_call_id: 'call_1', content: '{"tempC":21}' });
  });

  it('flags tool calls with broken JSON arguments or unknown tools instead of crashing', async () => {
    await using server = await startFakeOpenAI();
    server.enqueue({
      toolCalls: [
        { id: 'a', name: 'get_weather', arguments: '{"city": "Par' },
        { id: 'b', name: 'rm_rf', arguments: {} },
        { id: 'c', name: 'get_weather', arguments: '[1,2]' },
      ],
    });
    const r = await model(server.url).generate({ messages: goal, tools: [toolSpec(weather)] });
    expect(r.toolCalls.map((c) => c.valid)).toEqual([false, false, false]);
    const errors = r.toolCalls.map((c) => (c.valid ? '' : c.error));
    expect(errors[0]).toMatch(/not valid JSON/);
    expect(errors[1]).toMatch(/not an offered tool/);
    expect(errors[2]).toMatch(/must be a JSON object/);
    expect(r.message.toolCalls).toHaveLength(3);
  });

  it('retries a 429 and then succeeds', async () => {
    await using server = await startFakeOpenAI();
    server.fail({ kind: 'rate-limit', retryAfter: 0 });
    server.enqueue({ content: 'ok' });
    const r = await model(server.url, { maxRetries: 2 }).generate({ messages: goal });
    expect(r.message.content).toBe('ok');
    expect(server.requests.map((q) => q.reply)).toEqual(['rate-limit', 'completion']);
  });

  it('gives RateLimitedError with retryAfterMs when retries run out', async () => {
    await using server = await startFakeOpenAI();
    server.fail({ kind: 'rate-limit', retryAfter: 7 });
    const err = await model(server.url, { maxRetries: 0 })
      .generate({ messages: goal })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RateLimitedError);
    expect(err).toMatchObject({
      code: 'RATE_LIMITED',
      retryable: true,
      details: { retryAfterMs: 7000 },
    });
  });

  it('retries a 500 and then succeeds', async () => {
    await using server = await startFakeOpenAI();
    server.fail({ kind: 'status', status: 500, headers: { 'retry-after-ms': '1' } });
    server.enqueue({ content: 'recovered' });
    const r = await model(server.url, { maxRetries: 1 }).generate({ messages: goal });
    expect(r.message.content).toBe('recovered');
    expect(server.requests).toHaveLength(2);
  });

  it('maps a 5xx without retries left to a retryable ModelError', async () => {
    await using server = await startFakeOpenAI();
    server.fail({ kind: 'status', status: 503 });
    const err = await model(server.url, { maxRetries: 0 })
      .generate({ messages: goal })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelError);
    expect(err).toMatchObject({ code: 'MODEL_ERROR', retryable: true, details: { status: 503 } });
  });

  it('gives a non-retryable UnauthenticatedError on 401, without retrying', async () => {
    await using server = await startFakeOpenAI({ apiKey: 'the-right-key' });
    const err = await model(server.url, { maxRetries: 3 })
      .generate({ messages: goal })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnauthenticatedError);
    expect(err).toMatchObject({ code: 'UNAUTHENTICATED', retryable: false });
    expect(server.requests).toHaveLength(1);
  });

  it('maps a context-length 400 to a non-retryable ModelError', async () => {
    await using server = await startFakeOpenAI();
    server.fail({
      kind: 'status',
      status: 400,
      code: 'context_length_exceeded',
      message: "This model's maximum context length is 128000 tokens.",
    });
    const err = await model(server.url)
      .generate({ messages: goal })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({
      code: 'MODEL_ERROR',
      retryable: false,
      details: { reason: 'context_length_exceeded' },
    });
    expect(server.requests).toHaveLength(1);
  });

  it('closes the HTTP request when the call is aborted', async () => {
    await using server = await startFakeOpenAI();
    server.fail({ kind: 'hang' });
    const controller = new AbortController();
    const call = model(server.url).generate({ messages: goal, signal: controller.signal });
    const settled = call.catch((e: unknown) => e);
    await server.waitForRequests(1);
    controller.abort(new Error('halt'));
    const err = await settled;
    expect(err).toBeInstanceOf(AbortedError);
    expect(err).toMatchObject({ code: 'ABORTED' });
    await server.waitForAborts(1);
    expect(server.requests[0]?.aborted).toBe(true);
    expect(server.aborted).toBe(1);
  });

  it('turns a malformed JSON body into a coded ModelError', async () => {
    await using server = await startFakeOpenAI();
    server.fail({ kind: 'malformed' });
    const err = await model(server.url, { maxRetries: 0 })
      .generate({ messages: goal })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelError);
    expect(err).toMatchObject({ code: 'MODEL_ERROR', details: { reason: 'malformed_response' } });
    expect((err as Error).message).toMatch(/malformed JSON/);
  });

  it('turns a JSON body that is not a completion into a coded ModelError', async () => {
    await using server = await startFakeOpenAI();
    server.fail({ kind: 'malformed', body: '{"choices": []}' });
    const err = await model(server.url, { maxRetries: 0 })
      .generate({ messages: goal })
      .catch((e: unknown) => e);
    expect(err).toMatchObject({ code: 'MODEL_ERROR', details: { reason: 'malformed_response' } });
  });

  it('maps a dropped connection to a retryable UnavailableError', async () => {
    await using server = await startFakeOpenAI();
    server.fail({ kind: 'drop' });
    const err = await model(server.url, { maxRetries: 0 })
      .generate({ messages: goal })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(UnavailableError);
    expect(err).toMatchObject({ code: 'UNAVAILABLE', retryable: true });
  });

  it('reads apiKey, baseURL and model from the environment', async () => {
    await using server = await startFakeOpenAI({ apiKey: 'env-key' });
    server.enqueue({ content: 'hi' });
    const m = createOpenAIModel({
      env: { OPENAI_API_KEY: 'env-key', OPENAI_BASE_URL: server.url, REINS_MODEL: 'gpt-4.1-mini' },
    });
    expect(m.name).toBe('gpt-4.1-mini');
    expect(m.provider).toBe('openai');
    await m.generate({ messages: goal });
    expect((server.requests[0]?.body as { model: string }).model).toBe('gpt-4.1-mini');
  });

  it('refuses to start without an API key, saying how to set one', () => {
    expect(() => createOpenAIModel({ env: {} })).toThrow(/OPENAI_API_KEY/);
  });

  it('has no price for an unknown model: costOf fails closed with a how-to', () => {
    const m = createOpenAIModel({
      apiKey: 'k',
      model: 'my-local-llama',
      prices: createPriceTable({}, { readEnv: false }),
    });
    expect(m.price).toBeUndefined();
    expect(m.estimate({ messages: goal }).usd).toBeNull();
    expect(() => costOf(m, { inputTokens: 1, outputTokens: 1 })).toThrow(/REINS_PRICES/);
    const priced = createOpenAIModel({
      apiKey: 'k',
      model: 'my-local-llama',
      price: { input: 1, output: 2 },
    });
    expect(costOf(priced, { inputTokens: 1_000_000, outputTokens: 1_000_000 })).toBe(3);
  });
});
