import { request } from 'node:http';
import { describe, expect, it } from 'vitest';
import { startFakeOpenAI } from '@reins/testing';

async function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  const res = await fetch(`${url}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
  return { status: res.status, headers: res.headers, text: await res.text() };
}

const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi there' }] };

describe('startFakeOpenAI', () => {
  it('answers scripted completions with tool calls and usage, and records requests', async () => {
    await using server = await startFakeOpenAI();
    expect(server.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/v1$/);
    server.enqueue(
      {
        toolCalls: [{ name: 'calc', arguments: { expression: '1+1' } }],
        usage: { promptTokens: 11, completionTokens: 7 },
      },
      { content: 'two' },
    );
    const first = await post(server.url, chat, { 'x-test': 'yes' });
    expect(first.status).toBe(200);
    expect(JSON.parse(first.text)).toMatchObject({
      object: 'chat.completion',
      model: 'gpt-4o-mini',
      choices: [
        {
          finish_reason: 'tool_calls',
          message: {
            role: 'assistant',
            content: null,
            tool_calls: [
              {
                id: 'call_fake_1_0',
                type: 'function',
                function: { name: 'calc', arguments: '{"expression":"1+1"}' },
              },
            ],
          },
        },
      ],
      usage: { prompt_tokens: 11, completion_tokens: 7, total_tokens: 18 },
    });
    const second = JSON.parse((await post(server.url, chat)).text) as {
      choices: { message: { content: string }; finish_reason: string }[];
      usage: { prompt_tokens: number; completion_tokens: number };
    };
    expect(second.choices[0]?.message.content).toBe('two');
    expect(second.choices[0]?.finish_reason).toBe('stop');
    expect(second.usage.prompt_tokens).toBeGreaterThan(0);
    expect(server.requests).toHaveLength(2);
    expect(server.requests[0]).toMatchObject({
      method: 'POST',
      path: '/v1/chat/completions',
      body: chat,
      reply: 'completion',
    });
    expect(server.requests[0]?.headers['x-test']).toBe('yes');
  });

  it('answers from a function when the queue is empty, and 500s without one', async () => {
    await using server = await startFakeOpenAI();
    expect((await post(server.url, chat)).status).toBe(500);
    server.respondWith((req) => ({
      content: `echo ${(req.body as typeof chat).messages[0]?.content}`,
    }));
    expect(JSON.parse((await post(server.url, chat)).text)).toMatchObject({
      choices: [{ message: { content: 'echo hi there' } }],
    });
  });

  it('injects faults: 429 with retry-after, 500, malformed JSON, dropped connection', async () => {
    await using server = await startFakeOpenAI();
    server.fail({ kind: 'rate-limit', retryAfter: 3 });
    server.fail({ kind: 'status', status: 500 });
    server.fail({ kind: 'malformed' });
    server.fail({ kind: 'drop' });
    const limited = await post(server.url, chat);
    expect(limited.status).toBe(429);
    expect(limited.headers.get('retry-after')).toBe('3');
    expect(JSON.parse(limited.text)).toMatchObject({ error: { code: 'rate_limit_exceeded' } });
    expect((await post(server.url, chat)).status).toBe(500);
    const malformed = await post(server.url, chat);
    expect(malformed.status).toBe(200);
    expect(() => JSON.parse(malformed.text) as unknown).toThrow(SyntaxError);
    await expect(post(server.url, chat)).rejects.toThrow();
    expect(server.requests.map((r) => r.reply)).toEqual([
      'rate-limit',
      'status',
      'malformed',
      'drop',
    ]);
    expect(server.aborted).toBe(0);
  });

  it('sees a client abort on a slow response', async () => {
    await using server = await startFakeOpenAI();
    server.enqueue({ content: 'too late', delayMs: 60_000 });
    const controller = new AbortController();
    const call = fetch(`${server.url}/chat/completions`, {
      method: 'POST',
      body: JSON.stringify(chat),
      headers: { 'content-type': 'application/json' },
      signal: controller.signal,
    }).catch((e: unknown) => e);
    await server.waitForRequests(1);
    controller.abort();
    expect(await call).toBeInstanceOf(Error);
    await server.waitForAborts(1);
    expect(server.requests[0]?.aborted).toBe(true);
  });

  it('checks the API key, lists models, and 404s unknown routes', async () => {
    await using server = await startFakeOpenAI({ apiKey: 'k', models: ['m1'] });
    expect((await post(server.url, chat)).status).toBe(401);
    const models = await fetch(`${server.url}/models`, { headers: { authorization: 'Bearer k' } });
    expect(await models.json()).toMatchObject({
      object: 'list',
      data: [{ id: 'm1', object: 'model' }],
    });
    const missing = await fetch(`${server.url}/nope`, { headers: { authorization: 'Bearer k' } });
    expect(missing.status).toBe(404);
    const notJson = await fetch(`${server.url}/chat/completions`, {
      method: 'POST',
      body: '{',
      headers: { authorization: 'Bearer k' },
    });
    expect(notJson.status).toBe(400);
  });

  it('closes even with a hanging request', async () => {
    const server = await startFakeOpenAI();
    server.fail({ kind: 'hang' });
    const done = new Promise<string>((resolve) => {
      const req = request(`${server.url}/chat/completions`, { method: 'POST' }, () =>
        resolve('response'),
      );
      req.on('error', () => resolve('error'));
      req.end(JSON.stringify(chat));
    });
    await server.waitForRequests(1);
    await server.close();
    expect(await done).toBe('error');
    expect(server.aborted).toBe(0);
  });
});
