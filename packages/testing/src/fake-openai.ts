import { EventEmitter, once } from 'node:events';
import { createServer } from 'node:http';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/** A tool call the fake model answers with. `arguments` may be an object or raw (even broken) text. */
export interface FakeToolCall {
  id?: string;
  name: string;
  arguments: string | Record<string, unknown>;
}

/** A successful chat completion to send back. */
export interface FakeCompletion {
  content?: string | null;
  toolCalls?: FakeToolCall[];
  /** Default `tool_calls` when there are tool calls, else `stop`. */
  finishReason?: string;
  /** Default: a rough count (characters / 4) of the request's and answer's text. */
  usage?: { promptTokens: number; completionTokens: number };
  /** Default: the `model` of the request. */
  model?: string;
  /** Wait this long before answering (the client may abort meanwhile). */
  delayMs?: number;
  headers?: Record<string, string>;
}

/** A fault to inject instead of a completion. */
export type FakeFault =
  /** Any HTTP error status with an OpenAI-shaped error body. */
  | {
      kind: 'status';
      status: number;
      message?: string;
      code?: string;
      headers?: Record<string, string>;
      delayMs?: number;
    }
  /** 429 with `retry-after` (seconds, default 0) and optionally `retry-after-ms`. */
  | { kind: 'rate-limit'; retryAfter?: number | string; retryAfterMs?: number; delayMs?: number }
  /** 200 with `content-type: application/json` and a body that is not JSON. */
  | { kind: 'malformed'; body?: string; delayMs?: number }
  /** The socket is destroyed without any response. */
  | { kind: 'drop'; delayMs?: number }
  /** No answer at all, until the client gives up or the server closes. */
  | { kind: 'hang' };

/** What the fake server does with one request. */
export type FakeReply = FakeCompletion | FakeFault;

/** A request the fake server received. */
export interface RecordedRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  /** The parsed JSON body, or `undefined` when there was none or it was not JSON. */
  body: unknown;
  rawBody: string;
  /** True when the client closed the connection before the response was complete. */
  aborted: boolean;
  /** What the server replied with: `completion`, a fault kind, or `models` / `error`. */
  reply: string;
}

/** Options of `startFakeOpenAI`. */
export interface FakeOpenAIOptions {
  /** When set, requests without `Authorization: Bearer <apiKey>` get a 401. */
  apiKey?: string;
  /** Model ids listed by `GET /v1/models` (default `gpt-4o-mini`, `fake-model`). */
  models?: string[];
  /** Answers requests when the queue is empty. Without it an empty queue answers 500. */
  respond?: (request: RecordedRequest) => FakeReply | Promise<FakeReply>;
}

/** A running fake OpenAI-compatible server. Dispose it (`await using`) to close it. */
export interface FakeOpenAI extends AsyncDisposable {
  /** Base URL including `/v1`, for `baseURL` / `OPENAI_BASE_URL`. */
  readonly url: string;
  readonly port: number;
  /** Every request received, in order (live array). */
  readonly requests: RecordedRequest[];
  /** How many requests the client aborted (closed before the response was complete). */
  readonly aborted: number;
  /** Emits `request` (RecordedRequest) and `aborted` (RecordedRequest). */
  readonly events: EventEmitter;
  /** Queues replies for the next chat completion requests, in order. */
  enqueue(...replies: FakeReply[]): void;
  /** Queues `fault` for the next `times` requests (default 1). */
  fail(fault: FakeFault, times?: number): void;
  /** Sets (or clears) the reply function used when the queue is empty. */
  respondWith(respond: FakeOpenAIOptions['respond'] | undefined): void;
  /** Resolves once `count` requests have arrived; rejects after `timeoutMs` (default 10 s). */
  waitForRequests(count: number, timeoutMs?: number): Promise<void>;
  /** Resolves once `count` client aborts were seen; rejects after `timeoutMs` (default 10 s). */
  waitForAborts(count: number, timeoutMs?: number): Promise<void>;
  close(): Promise<void>;
}

const MAX_BODY = 10 * 1024 * 1024;

function roughTokens(text: string): number {
  return Math.ceil(text.length / 4);
}

function textOf(body: unknown): string {
  if (typeof body !== 'object' || body === null || !('messages' in body)) return '';
  const messages = body.messages;
  if (!Array.isArray(messages)) return '';
  return messages
    .map((m: unknown) =>
      typeof m === 'object' && m !== null && 'content' in m && typeof m.content === 'string'
        ? m.content
        : '',
    )
    .join('\n');
}

function modelOf(body: unknown): string {
  return typeof body === 'object' &&
    body !== null &&
    'model' in body &&
    typeof body.model === 'string'
    ? body.model
    : 'fake-model';
}

function sendJson(
  res: ServerResponse,
  status: number,
  value: unknown,
  headers: Record<string, string> = {},
): void {
  const text = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(text),
    ...headers,
  });
  res.end(text);
}

function errorBody(message: string, type: string, code: string | null) {
  return { error: { message, type, param: null, code } };
}

/**
 * Starts a fake OpenAI-compatible HTTP server on 127.0.0.1 (random port): `POST
 * /v1/chat/completions` answers from a queue of scripted replies (or a function of the request),
 * with tool calls and usage; faults can be injected per request (429 with `retry-after`, 5xx,
 * delays, malformed JSON, dropped connections, hangs); every request is recorded, and client aborts
 * are counted. `GET /v1/models` lists models. Uses only `node:http`.
 */
export async function startFakeOpenAI(options: FakeOpenAIOptions = {}): Promise<FakeOpenAI> {
  const queue: FakeReply[] = [];
  const requests: RecordedRequest[] = [];
  const events = new EventEmitter();
  let respond = options.respond;
  let abortedCount = 0;
  let completions = 0;
  let closing = false;
  const timers = new Set<NodeJS.Timeout>();

  const later = (res: ServerResponse, ms: number | undefined, action: () => void): void => {
    if (ms === undefined || ms <= 0) {
      action();
      return;
    }
    const timer = setTimeout(() => {
      timers.delete(timer);
      if (!res.destroyed) action();
    }, ms);
    timers.add(timer);
    res.once('close', () => {
      clearTimeout(timer);
      timers.delete(timer);
    });
  };

  const complete = (res: ServerResponse, record: RecordedRequest, reply: FakeCompletion): void => {
    completions += 1;
    const n = completions;
    const calls = (reply.toolCalls ?? []).map((c, i) => ({
      id: c.id ?? `call_fake_${n}_${i}`,
      type: 'function',
      function: {
        name: c.name,
        arguments: typeof c.arguments === 'string' ? c.arguments : JSON.stringify(c.arguments),
      },
    }));
    const content = reply.content === undefined ? (calls.length > 0 ? null : '') : reply.content;
    const promptTokens = reply.usage?.promptTokens ?? roughTokens(textOf(record.body)) + 3;
    const completionTokens =
      reply.usage?.completionTokens ??
      roughTokens(
        (content ?? '') + calls.map((c) => c.function.name + c.function.arguments).join(''),
      );
    record.reply = 'completion';
    sendJson(
      res,
      200,
      {
        id: `chatcmpl-fake-${n}`,
        object: 'chat.completion',
        created: 1_700_000_000,
        model: reply.model ?? modelOf(record.body),
        system_fingerprint: null,
        choices: [
          {
            index: 0,
            message: {
              role: 'assistant',
              content,
              refusal: null,
              ...(calls.length > 0 ? { tool_calls: calls } : {}),
            },
            logprobs: null,
            finish_reason: reply.finishReason ?? (calls.length > 0 ? 'tool_calls' : 'stop'),
          },
        ],
        usage: {
          prompt_tokens: promptTokens,
          completion_tokens: completionTokens,
          total_tokens: promptTokens + completionTokens,
        },
      },
      reply.headers,
    );
  };

  const answer = (res: ServerResponse, record: RecordedRequest, reply: FakeReply): void => {
    if (!('kind' in reply)) {
      later(res, reply.delayMs, () => complete(res, record, reply));
      return;
    }
    record.reply = reply.kind;
    switch (reply.kind) {
      case 'status':
        later(res, reply.delayMs, () => {
          const type =
            reply.status === 401
              ? 'invalid_request_error'
              : reply.status >= 500
                ? 'server_error'
                : 'invalid_request_error';
          sendJson(
            res,
            reply.status,
            errorBody(reply.message ?? `fake error ${reply.status}`, type, reply.code ?? null),
            reply.headers,
          );
        });
        return;
      case 'rate-limit':
        later(res, reply.delayMs, () => {
          const headers: Record<string, string> = { 'retry-after': String(reply.retryAfter ?? 0) };
          if (reply.retryAfterMs !== undefined)
            headers['retry-after-ms'] = String(reply.retryAfterMs);
          sendJson(
            res,
            429,
            errorBody('Rate limit reached (fake)', 'requests', 'rate_limit_exceeded'),
            headers,
          );
        });
        return;
      case 'malformed':
        later(res, reply.delayMs, () => {
          const text = reply.body ?? '{"id": "chatcmpl-broken", "choices": [';
          res.writeHead(200, {
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(text),
          });
          res.end(text);
        });
        return;
      case 'drop':
        later(res, reply.delayMs, () => {
          (res as ServerResponse & { reinsDropped?: boolean }).reinsDropped = true;
          res.socket?.destroy();
        });
        return;
      case 'hang':
        return;
    }
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req as AsyncIterable<Buffer>) {
      size += chunk.length;
      if (size > MAX_BODY) {
        sendJson(res, 413, errorBody('request too large', 'invalid_request_error', null));
        return;
      }
      chunks.push(chunk);
    }
    const rawBody = Buffer.concat(chunks).toString('utf8');
    let body: unknown;
    try {
      body = rawBody === '' ? undefined : JSON.parse(rawBody);
    } catch {
      body = undefined;
    }
    const headers: Record<string, string> = {};
    for (const [k, v] of Object.entries(req.headers)) {
      if (v !== undefined) headers[k] = Array.isArray(v) ? v.join(', ') : v;
    }
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    const record: RecordedRequest = {
      method: req.method ?? 'GET',
      path,
      headers,
      body,
      rawBody,
      aborted: false,
      reply: 'pending',
    };
    requests.push(record);
    res.once('close', () => {
      const dropped = (res as ServerResponse & { reinsDropped?: boolean }).reinsDropped === true;
      if (!res.writableFinished && !dropped && !closing) {
        record.aborted = true;
        abortedCount += 1;
        events.emit('aborted', record);
      }
    });
    events.emit('request', record);

    if (options.apiKey !== undefined && headers['authorization'] !== `Bearer ${options.apiKey}`) {
      record.reply = 'error';
      sendJson(
        res,
        401,
        errorBody('Incorrect API key provided (fake)', 'invalid_request_error', 'invalid_api_key'),
      );
      return;
    }
    if (record.method === 'GET' && path === '/v1/models') {
      record.reply = 'models';
      sendJson(res, 200, {
        object: 'list',
        data: (options.models ?? ['gpt-4o-mini', 'fake-model']).map((id) => ({
          id,
          object: 'model',
          created: 1_700_000_000,
          owned_by: 'reins-fake',
        })),
      });
      return;
    }
    if (record.method !== 'POST' || path !== '/v1/chat/completions') {
      record.reply = 'error';
      sendJson(
        res,
        404,
        errorBody(`no route ${record.method} ${path}`, 'invalid_request_error', null),
      );
      return;
    }
    if (body === undefined) {
      record.reply = 'error';
      sendJson(res, 400, errorBody('request body is not JSON', 'invalid_request_error', null));
      return;
    }
    const queued = queue.shift();
    const reply: FakeReply =
      queued ??
      (respond
        ? await respond(record)
        : {
            kind: 'status',
            status: 500,
            message: 'fake-openai: no reply queued (call enqueue() or respondWith())',
            headers: { 'x-should-retry': 'false' },
          });
    answer(res, record, reply);
  };

  const server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) {
        sendJson(res, 500, errorBody(`fake-openai failed: ${String(err)}`, 'server_error', null));
      } else {
        res.destroy();
      }
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;

  const waitFor = (event: string, done: () => boolean, what: string, timeoutMs: number) =>
    new Promise<void>((resolve, reject) => {
      if (done()) {
        resolve();
        return;
      }
      const check = () => {
        if (!done()) return;
        cleanup();
        resolve();
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`fake-openai: timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        events.off(event, check);
      };
      events.on(event, check);
    });

  let closed: Promise<void> | undefined;
  const fake: FakeOpenAI = {
    url: `http://127.0.0.1:${port}/v1`,
    port,
    requests,
    get aborted() {
      return abortedCount;
    },
    events,
    enqueue(...replies) {
      queue.push(...replies);
    },
    fail(fault, times = 1) {
      for (let i = 0; i < times; i += 1) queue.push(fault);
    },
    respondWith(fn) {
      respond = fn;
    },
    waitForRequests(count, timeoutMs = 10_000) {
      return waitFor('request', () => requests.length >= count, `${count} requests`, timeoutMs);
    },
    waitForAborts(count, timeoutMs = 10_000) {
      return waitFor('aborted', () => abortedCount >= count, `${count} client aborts`, timeoutMs);
    },
    close() {
      closed ??= new Promise<void>((resolve, reject) => {
        closing = true;
        for (const t of timers) clearTimeout(t);
        timers.clear();
        server.close((err) => (err ? reject(err) : resolve()));
        server.closeAllConnections();
      });
      return closed;
    },
    [Symbol.asyncDispose]() {
      return fake.close();
    },
  };
  return fake;
}
