import { describe, expect, it } from 'vitest';
import { PriceUnknownError } from '@reins/protocol';
import { DEFAULT_PRICES, costOf, createPriceTable, parsePriceOverrides } from '@reins/models';

describe('price table', () => {
  it('prices common models and dated snapshots', () => {
    const table = createPriceTable({}, { readEnv: false });
    expect(table.get('gpt-4o')).toEqual({ input: 2.5, output: 10 });
    expect(table.get('gpt-4o-mini-2024-07-18')).toEqual(DEFAULT_PRICES['gpt-4o-mini']);
    expect(table.get('gpt-4o-audio-preview')).toBeUndefined();
    expect(table.costOf('gpt-4.1', { inputTokens: 1_000_000, outputTokens: 500_000 })).toBe(6);
  });

  it('fails closed on unknown models with a message that says how to fix it', () => {
    const table = createPriceTable({}, { readEnv: false });
    const err = (() => {
      try {
        table.costOf('mystery-model', { inputTokens: 1, outputTokens: 1 });
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(err).toBeInstanceOf(PriceUnknownError);
    expect(err).toMatchObject({ code: 'PRICE_UNKNOWN', details: { model: 'mystery-model' } });
    expect((err as Error).message).toMatch(/`price` option/);
    expect((err as Error).message).toMatch(/REINS_PRICES=/);
    expect(() => costOf('mystery-model', { inputTokens: 1, outputTokens: 1 }, table)).toThrow(
      PriceUnknownError,
    );
  });

  it('takes overrides from options and from REINS_PRICES (options win)', () => {
    const env = {
      REINS_PRICES: '{"mystery-model":{"input":1,"output":2},"gpt-4o":{"input":0,"output":0}}',
    };
    const table = createPriceTable({ 'gpt-4o': { input: 3, output: 4 } }, { env });
    expect(table.get('mystery-model')).toEqual({ input: 1, output: 2 });
    expect(table.get('gpt-4o')).toEqual({ input: 3, output: 4 });
  });

  it('refuses malformed price overrides', () => {
    expect(() => parsePriceOverrides('{nope')).toThrow(/not valid JSON/);
    expect(() => parsePriceOverrides('{"m":{"input":-1,"output":1}}')).toThrow(/REINS_PRICES/);
    expect(() =>
      createPriceTable({ m: { input: Number.NaN, output: 1 } }, { readEnv: false }),
    ).toThrow(/invalid price/);
  });
});
