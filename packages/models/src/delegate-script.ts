import type { ScriptedRespond, ScriptedTurn } from './scripted-model.js';
import { readToolOutcome } from './tool-result.js';

/** Options of `delegateScript`. */
export interface DelegateScriptOptions {
  /** Role to delegate to. */
  role: string;
  /** Sub-goal for the child run (default: the run's own goal). */
  goal?: string;
  /** USD carved out of this run's budget for the child. */
  budgetUsd?: number;
  /** Step cap of the child. */
  maxSteps?: number;
}

/**
 * A scripted lead: it delegates its goal to another role through the planner's `delegate` tool
 * (a child run with a carved-out budget), then answers with what the child reported. Offline
 * and deterministic, for demos and tests of delegation.
 */
export function delegateScript(options: DelegateScriptOptions): ScriptedRespond {
  return (conversation): ScriptedTurn => {
    const result = [...conversation].reverse().find((m) => m.role === 'tool');
    if (!result) {
      const goal = options.goal ?? conversation.find((m) => m.role === 'user')?.content ?? 'help';
      const args: Record<string, unknown> = { role: options.role, goal };
      if (options.budgetUsd !== undefined) args['budgetUsd'] = options.budgetUsd;
      if (options.maxSteps !== undefined) args['maxSteps'] = options.maxSteps;
      return { content: `Delegating to ${options.role}.`, toolCalls: [{ name: 'delegate', args }] };
    }
    const outcome = readToolOutcome(result.content);
    if (!outcome.ok) return `The ${options.role} could not be reached: ${outcome.error.message}`;
    const out = outcome.output as {
      answer?: unknown;
      childRunId?: unknown;
      stopReason?: unknown;
    } | null;
    if (out && typeof out.answer === 'string' && out.answer) {
      return `The ${options.role} (run ${String(out.childRunId)}) reports: ${out.answer}`;
    }
    return `The ${options.role} stopped without an answer (${typeof out?.stopReason === 'string' ? out.stopReason : 'unknown reason'}).`;
  };
}
