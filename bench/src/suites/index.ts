import type { Suite } from '../types.js';
import { requestReply } from './request-reply.js';

/** Every suite, in the order they run. Add a new suite here. */
export const suites: readonly Suite[] = [requestReply];
