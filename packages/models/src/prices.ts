import { z } from 'zod';
import type { ReinsError } from '@reins/protocol';
import { PriceUnknownError, ProtocolError } from '@reins/protocol';
import type { TokenUsage } from './model.js';

/** A model's price in USD per 1M tokens. */
export const ModelPrice = z.object({
  input: z.number().nonnegative().finite(),
  output: z.number().nonnegative().finite(),
});
export type ModelPrice = z.infer<typeof ModelPrice>;

/** How to give an unknown model a price; quoted in every `PriceUnknownError`. */
export const PRICE_HINT =
  'set it with the `price` option of the model (e.g. createOpenAIModel({ price: { input: 2.5, output: 10 } })), ' +
  'with createPriceTable({ "<model>": { input, output } }), or with the env var ' +
  'REINS_PRICES=\'{"<model>":{"input":2.5,"output":10}}\' (USD per 1M tokens)';

/**
 * Built-in prices, USD per 1M tokens (standard tier, uncached input). APPROXIMATE: taken from
 * OpenAI's public price list in 2025 and not kept in sync with it; override what you rely on.
 */
export const DEFAULT_PRICES: Readonly<Record<string, ModelPrice>> = Object.freeze({
  'gpt-4o': { input: 2.5, output: 10 },
  'gpt-4o-mini': { input: 0.15, output: 0.6 },
  'gpt-4.1': { input: 2, output: 8 },
  'gpt-4.1-mini': { input: 0.4, output: 1.6 },
  'gpt-4.1-nano': { input: 0.1, output: 0.4 },
  o1: { input: 15, output: 60 },
  o3: { input: 2, output: 8 },
  'o3-mini': { input: 1.1, output: 4.4 },
  'o4-mini': { input: 1.1, output: 4.4 },
  'gpt-5': { input: 1.25, output: 10 },
  'gpt-5-mini': { input: 0.25, output: 2 },
  'gpt-5-nano': { input: 0.05, output: 0.4 },
  scripted: { input: 0, output: 0 },
});

/** A lookup of model prices. Dated snapshots (`gpt-4o-2024-08-06`) fall back to their base name. */
export interface PriceTable {
  /** The price of `model`, or `undefined` when unknown. */
  get(model: string): ModelPrice | undefined;
  /** USD for `usage` on `model`; throws `PriceUnknownError` (PRICE_UNKNOWN) when unknown. */
  costOf(model: string, usage: TokenUsage): number;
  /** Every known price, overrides applied. */
  entries(): [string, ModelPrice][];
}

/** Options of `createPriceTable`. */
export interface PriceTableOptions {
  /** Read overrides from `REINS_PRICES` (default true). */
  readEnv?: boolean;
  /** Environment to read (default `process.env`). */
  env?: Readonly<Record<string, string | undefined>>;
}

const PriceOverrides = z.record(z.string().min(1).max(256), ModelPrice);

/** Parses a `REINS_PRICES` value. Throws `ProtocolError` (BAD_REQUEST) naming the problem. */
export function parsePriceOverrides(json: string): Record<string, ModelPrice> {
  let value: unknown;
  try {
    value = JSON.parse(json);
  } catch (err) {
    throw new ProtocolError(`REINS_PRICES is not valid JSON: ${(err as Error).message}`, {
      cause: err,
    });
  }
  const parsed = PriceOverrides.safeParse(value);
  if (!parsed.success) {
    throw new ProtocolError(
      `REINS_PRICES must map model names to { "input": usdPerMTok, "output": usdPerMTok }: ${z.prettifyError(parsed.error)}`,
    );
  }
  return parsed.data;
}

const DATED = /-\d{4}-\d{2}-\d{2}$/;

/** USD for `usage` at `price` (per 1M tokens). */
export function priceUsage(price: ModelPrice, usage: TokenUsage): number {
  return (usage.inputTokens * price.input + usage.outputTokens * price.output) / 1_000_000;
}

/**
 * A price table: the built-in prices, then `REINS_PRICES` from the environment, then `overrides`
 * (later wins). An invalid override or env value throws `ProtocolError`.
 */
export function createPriceTable(
  overrides: Readonly<Record<string, ModelPrice>> = {},
  options: PriceTableOptions = {},
): PriceTable {
  const table = new Map<string, ModelPrice>(Object.entries(DEFAULT_PRICES));
  const env = options.env ?? process.env;
  const fromEnv = env['REINS_PRICES'];
  if ((options.readEnv ?? true) && fromEnv !== undefined && fromEnv.trim() !== '') {
    for (const [name, price] of Object.entries(parsePriceOverrides(fromEnv)))
      table.set(name, price);
  }
  for (const [name, price] of Object.entries(overrides)) {
    const parsed = ModelPrice.safeParse(price);
    if (!parsed.success) {
      throw new ProtocolError(
        `invalid price for model ${JSON.stringify(name)}: ${z.prettifyError(parsed.error)}`,
      );
    }
    table.set(name, parsed.data);
  }
  const get = (model: string): ModelPrice | undefined =>
    table.get(model) ?? (DATED.test(model) ? table.get(model.replace(DATED, '')) : undefined);
  return {
    get,
    costOf(model, usage) {
      const price = get(model);
      if (price === undefined) throw priceUnknown(model);
      return priceUsage(price, usage);
    },
    entries: () => [...table.entries()].map(([name, price]) => [name, { ...price }]),
  };
}

/** The `PriceUnknownError` for `model`, with the message that says how to set its price. */
export function priceUnknown(model: string): ReinsError {
  return new PriceUnknownError(
    `no price known for model ${JSON.stringify(model)} while a USD budget applies; ${PRICE_HINT}`,
    { details: { model } },
  );
}

let defaultTable: PriceTable | undefined;

/** The process-wide table: built-in prices plus `REINS_PRICES`, read once. */
export function defaultPriceTable(): PriceTable {
  defaultTable ??= createPriceTable();
  return defaultTable;
}

/**
 * USD for `usage` on `model`: a `Model` (its own price) or a model name (looked up in `prices`,
 * default the process-wide table). Throws `PriceUnknownError` (PRICE_UNKNOWN) when there is no price:
 * call it when a USD budget applies, so an unpriced model fails closed.
 */
export function costOf(
  model: string | { readonly name: string; readonly price: ModelPrice | undefined },
  usage: TokenUsage,
  prices: PriceTable = defaultPriceTable(),
): number {
  if (typeof model === 'string') return prices.costOf(model, usage);
  if (model.price === undefined) throw priceUnknown(model.name);
  return priceUsage(model.price, usage);
}
