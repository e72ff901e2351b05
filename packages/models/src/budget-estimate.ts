import type { GenerateRequest, Model } from './model.js';
import { priceUnknown } from './prices.js';

/** The reservation a planner sends with `sv.authorize` (the shape of protocol `Estimate`). */
export interface BudgetEstimate {
  inputTokens: number;
  outputTokens: number;
  usd: number;
}

/**
 * What to reserve before calling `model`: its upper-bound estimate in the protocol's `Estimate`
 * shape. When the model has no price and `usdBudget` is true (a USD cap applies to the run), it
 * throws `PriceUnknownError` (PRICE_UNKNOWN) — fail closed; without a USD cap the USD part is 0.
 */
export function budgetEstimate(
  model: Model,
  request: Omit<GenerateRequest, 'signal'>,
  options: { usdBudget: boolean },
): BudgetEstimate {
  const estimate = model.estimate(request);
  if (estimate.usd === null && options.usdBudget) throw priceUnknown(model.name);
  return {
    inputTokens: estimate.inputTokens,
    outputTokens: estimate.maxOutputTokens,
    usd: estimate.usd ?? 0,
  };
}
