import type { Suite } from '../types.js';
import { authorizeSettle } from './authorize-settle.js';
import { budgetAccuracy } from './budget-accuracy.js';
import { governedStepSuite } from './governed-step.js';
import { haltAll } from './halt-all.js';
import { idleAgents } from './idle-agents.js';
import { peers } from './peers.js';
import { haltLatency } from './halt-latency.js';
import { requestReply } from './request-reply.js';
import { runResult } from './run-result.js';
import { scaleOut } from './scale-out.js';
import { stepCost } from './step-cost.js';
import { stepsPerRun } from './steps-per-run.js';
import { throughput } from './throughput.js';

/** Every suite, in the order they run. Add a new suite here. */
export const suites: readonly Suite[] = [
  requestReply,
  authorizeSettle,
  governedStepSuite,
  stepsPerRun,
  runResult,
  throughput,
  haltLatency,
  haltAll,
  budgetAccuracy,
  idleAgents,
  peers,
  stepCost,
  scaleOut,
];
