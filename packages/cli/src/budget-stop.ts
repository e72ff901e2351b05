import type { RunRecord } from '@reins/protocol';

const usd = (n: number) => `$${Number(n.toFixed(6))}`;
const num = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) ? v : undefined);

/**
 * Why a run stopped on its budget, in words: a model call reserves its worst case (estimated
 * input tokens plus the output cap, priced) before it runs, so a run stops when that reservation
 * no longer fits — usually with less spent than the cap. Undefined for any other stop, or a
 * denial without the amounts (an older supervisor).
 */
export function explainBudgetStop(record: RunRecord): string | undefined {
  const e = record.error;
  if (e?.code !== 'BUDGET_EXCEEDED') return undefined;
  const d = e.details ?? {};
  const requested = num(d['requested']);
  const committed = num(d['committed']);
  const reserved = num(d['reserved']) ?? 0;
  const cap = num(d['cap']);
  if (requested === undefined || committed === undefined || cap === undefined) return undefined;
  const scope = typeof d['scope'] === 'string' ? d['scope'] : 'the run';
  const whose = scope.startsWith(`run.${record.runId}`) ? 'the run' : scope;
  const left = Math.max(0, cap - committed - reserved);
  if (d['dimension'] === 'usd') {
    return (
      `the next call was not made: its worst-case reservation of ${usd(requested)} ` +
      `(estimated input tokens + output cap, priced) did not fit in the ${usd(left)} left of ` +
      `${whose}'s ${usd(cap)} cap (${usd(committed)} spent${reserved ? `, ${usd(reserved)} reserved by calls in flight` : ''})`
    );
  }
  if (d['dimension'] === 'tokens') {
    return (
      `the next call was not made: its worst-case reservation of ${requested} tokens ` +
      `(estimated input + output cap) did not fit in the ${left} left of ${whose}'s ${cap}-token cap ` +
      `(${committed} used${reserved ? `, ${reserved} reserved by calls in flight` : ''})`
    );
  }
  return undefined;
}
