// A role Reins does not ship: a reviewer that scores text. Everything a built-in actor has
// comes from the runtime: typed requests (zod), coded errors for bad input, heartbeats and
// presence (`reins ps`), traces (`reins trace`), and halts through `ctx.signal`.
import { setTimeout as delay } from 'node:timers/promises';
import { z } from 'zod';
import { ID_PATTERN } from '@reins/protocol';
import { defineActor, type Actor, type Runtime } from '@reins/runtime';

/** A review request. `runId` ties the work to a run: halting the run aborts it. */
export const ReviewRequest = z.object({
  runId: z.string().regex(ID_PATTERN),
  text: z.string().min(1).max(100_000),
  rubric: z
    .object({
      /** Fewer words than this is a finding. */
      minWords: z.number().int().min(0).max(10_000).default(20),
      /** Sentences longer than this many words are findings. */
      maxSentenceWords: z.number().int().min(1).max(1_000).default(35),
      /** Words that must not appear (case-insensitive). */
      banned: z.array(z.string().min(1).max(64)).max(100).default([]),
    })
    .prefault({}),
});
export type ReviewRequest = z.infer<typeof ReviewRequest>;

/** One thing the reviewer found. */
export const Finding = z.object({
  rule: z.enum(['too-short', 'long-sentence', 'banned-word']),
  message: z.string(),
  penalty: z.number(),
});
export type Finding = z.infer<typeof Finding>;

/** The review: a score from 0 to 100, a verdict and the findings behind it. */
export const Review = z.object({
  score: z.number().min(0).max(100),
  verdict: z.enum(['accept', 'revise', 'reject']),
  findings: z.array(Finding),
  sentences: z.number().int().nonnegative(),
  reviewer: z.string(),
});
export type Review = z.infer<typeof Review>;

/** The subject the reviewer serves under the deployment's prefix: `reins.v1.review`. */
export function reviewSubject(runtime: Runtime): string {
  return `${runtime.subjects.prefix}.review`;
}

/** Options of `startReviewer`. */
export interface ReviewerOptions {
  agentId?: string;
  /** Role (default `reviewer`); `reins halt --role reviewer` halts every reviewer. */
  role?: string;
  /**
   * Time spent per sentence, standing in for slow work such as a model call (default 0).
   * The wait is aborted by `ctx.signal`, like any real I/O should be.
   */
  msPerSentence?: number;
}

/** Scores `text` against `rubric` (pure; the actor adds tracing and cancellation). */
export function reviewSentence(
  sentence: string,
  rubric: ReviewRequest['rubric'],
): Finding | undefined {
  const words = sentence.split(/\s+/).filter(Boolean);
  const banned = words.find((w) =>
    rubric.banned.some((b) => w.toLowerCase().replace(/[^\p{L}\p{N}-]/gu, '') === b.toLowerCase()),
  );
  if (banned) {
    return { rule: 'banned-word', message: `banned word "${banned}"`, penalty: 30 };
  }
  if (words.length > rubric.maxSentenceWords) {
    return {
      rule: 'long-sentence',
      message: `sentence of ${words.length} words (max ${rubric.maxSentenceWords})`,
      penalty: 10,
    };
  }
  return undefined;
}

/**
 * Starts a reviewer on `runtime`. It serves `ReviewRequest`s in the `reviewer` queue group and
 * traces `review.start`, one `review.finding` per finding and `review.done` into the run.
 */
export async function startReviewer(
  runtime: Runtime,
  options: ReviewerOptions = {},
): Promise<Actor> {
  const role = options.role ?? 'reviewer';
  const msPerSentence = options.msPerSentence ?? 0;
  return runtime.start(
    defineActor({
      role,
      ...(options.agentId !== undefined ? { agentId: options.agentId } : {}),
      setup(actor) {
        actor.handle(
          reviewSubject(runtime),
          ReviewRequest,
          async (req, ctx) => {
            const sentences = req.text
              .split(/(?<=[.!?])\s+/)
              .map((s) => s.trim())
              .filter(Boolean);
            actor.trace(req.runId, 'review.start', { sentences: sentences.length });
            const findings: Finding[] = [];
            const words = req.text.split(/\s+/).filter(Boolean).length;
            if (words < req.rubric.minWords) {
              findings.push({
                rule: 'too-short',
                message: `${words} words (min ${req.rubric.minWords})`,
                penalty: 40,
              });
            }
            for (const [i, sentence] of sentences.entries()) {
              // A halt of this run, this agent, its role or everything aborts the signal: stop
              // here instead of finishing work nobody wants any more.
              ctx.signal.throwIfAborted();
              if (msPerSentence > 0) await delay(msPerSentence, undefined, { signal: ctx.signal });
              const finding = reviewSentence(sentence, req.rubric);
              if (finding) {
                findings.push(finding);
                actor.trace(req.runId, 'review.finding', { sentence: i, ...finding });
              }
            }
            const score = Math.max(0, 100 - findings.reduce((sum, f) => sum + f.penalty, 0));
            const verdict: Review['verdict'] =
              score >= 80 ? 'accept' : score >= 50 ? 'revise' : 'reject';
            actor.trace(req.runId, 'review.done', { score, verdict, findings: findings.length });
            ctx.logger.debug({ score, verdict }, 'reviewed');
            return {
              score,
              verdict,
              findings,
              sentences: sentences.length,
              reviewer: actor.agentId,
            };
          },
          { reply: Review, queue: role },
        );
      },
    }),
  );
}
