export { startPlanner, DELEGATE_TOOL } from './planner.js';
export type { PlannerOptions } from './planner.js';
export { RunState, PendingStep, RunStateStore } from './run-state.js';
export type { StoredState } from './run-state.js';
