import type { Budget, TraceEvent } from '@reins/protocol';
import { fitCell, formatUsd, progressBar, truncate, type Style } from './output.js';

/** Options of `TraceView`. */
export interface TraceViewOptions {
  style: Style;
  /** Writes one finished line (with its newline). */
  write: (text: string) => void;
  /** Redraw a status line in place (a terminal); otherwise status lines are printed. */
  live: boolean;
  /** Times are shown relative to this (default: the first event). */
  startedAt?: number;
  /** Show the run id on each line (when following many runs). */
  showRun?: boolean;
  /** Known caps of the root run, until its `run.start` event says. */
  budget?: Budget;
  /** Spent before the first event shown (`--from new`: the run's committed USD). */
  spentUsd?: number;
  /** Cut lines to this many columns (the terminal's; default: whole lines). */
  width?: number;
}

function num(v: unknown): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : 0;
}
function str(v: unknown): string {
  return typeof v === 'string' ? v : v === undefined ? '' : JSON.stringify(v);
}
function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Renders trace events as a tree: runs at the left, steps under their run, model and tool
 * calls under their step, and a delegated child run under the tool call that started it.
 * Keeps a budget bar and step counter (`[#####.....] $0.0012/$0.05  step 3/20`) that is
 * updated at each `model.result` and `step.end`: redrawn in place on a terminal, printed as
 * a line otherwise. Unknown events are shown with their data, never dropped.
 */
export class TraceView {
  readonly #o: TraceViewOptions;
  readonly #depth = new Map<string, number>();
  /** Highest step number seen per run (step numbers count from the run's start). */
  readonly #steps = new Map<string, number>();
  #root: string | undefined;
  #usd = 0;
  #budget: Budget;
  #status = '';
  #startedAt: number | undefined;

  constructor(options: TraceViewOptions) {
    this.#o = options;
    this.#budget = options.budget ?? {};
    this.#usd = options.spentUsd ?? 0;
    this.#startedAt = options.startedAt;
  }

  /** Model spend seen so far across the run tree (USD). */
  get usd(): number {
    return this.#usd;
  }

  /**
   * Steps so far across the runs shown: per run the highest step number seen (a step counts from
   * its `step.start`, as the tree shows it; numbers are the run's own, also with `--from new`).
   */
  get steps(): number {
    let n = 0;
    for (const v of this.#steps.values()) n += v;
    return n;
  }

  /** Runs whose events this view has placed (the root and delegated children). */
  get runs(): string[] {
    return [...this.#depth.keys()];
  }

  /** The status line as it stands: budget bar and step counter. */
  statusLine(): string {
    if (this.#o.showRun) {
      // Many unrelated runs: one root's caps would mean nothing (`step 92/20`).
      const runs = this.#depth.size;
      return `${runs} run${runs === 1 ? '' : 's'}  ${formatUsd(this.#usd)} spent  ${this.steps} step${this.steps === 1 ? '' : 's'}`;
    }
    const { usd, steps } = this.#budget;
    const money =
      usd !== undefined
        ? `${progressBar(usd > 0 ? this.#usd / usd : 1)} ${formatUsd(this.#usd)}/${formatUsd(usd)}`
        : `${formatUsd(this.#usd)} spent`;
    const stepText = steps !== undefined ? `step ${this.steps}/${steps}` : `step ${this.steps}`;
    return `${money}  ${stepText}`;
  }

  /** Adds one event to the view. */
  add(e: TraceEvent): void {
    this.#startedAt ??= e.ts;
    this.#root ??= e.runId;
    if (!this.#depth.has(e.runId)) this.#depth.set(e.runId, 0);
    const base = this.#depth.get(e.runId) ?? 0;
    const s = this.#o.style;
    const d = e.data;
    const who = s.byKey(e.agentId, e.agentId);
    let depth = base + 2;
    let text: string;
    let status = false;
    switch (e.event) {
      case 'run.start': {
        depth = base;
        if (e.runId === this.#root && isRecord(d['budget'])) {
          const b = d['budget'];
          this.#budget = {
            ...this.#budget,
            ...(typeof b['usd'] === 'number' ? { usd: b['usd'] } : {}),
            ...(typeof b['steps'] === 'number' ? { steps: b['steps'] } : {}),
          };
        }
        text = `${s.bold('▶ run')} ${e.runId} ${s.dim(truncate(str(d['goal']), 80))}`;
        break;
      }
      case 'run.end': {
        depth = base;
        const st = str(d['status']);
        const reason = str(d['stopReason']);
        const mark =
          st === 'completed' ? s.green('✓') : st === 'stopped' ? s.yellow('■') : s.red('✗');
        text = `${mark} ${s.bold(`run ${st}`)} ${e.runId}${reason ? ` ${s.yellow(reason)}` : ''}${
          typeof d['reason'] === 'string' ? s.dim(` ${truncate(d['reason'], 100)}`) : ''
        }`;
        break;
      }
      case 'step.start':
        depth = base + 1;
        this.#countStep(e.runId, num(d['step']), true);
        // A terminal's counter moves with the tree; a log gets its bar line at step.end.
        status = this.#o.live;
        text = `${s.bold(`step ${num(d['step']) || str(e.stepId)}`)} ${who}`;
        break;
      case 'step.end': {
        this.#countStep(e.runId, num(d['step']), false);
        status = true;
        if (typeof d['denied'] === 'string') {
          depth = base + 1;
          text = `${s.red('✗')} step ${num(d['step'])} denied ${s.yellow(d['denied'])}${
            typeof d['rule'] === 'string' ? s.dim(` (${d['rule']})`) : ''
          }`;
          break;
        }
        this.#refreshStatus();
        return;
      }
      case 'model.call':
        // The result line says everything the call line would; keep the tree short.
        return;
      case 'model.result': {
        const usd = num(d['usd']);
        this.#usd += usd;
        // A terminal redraws the bar at once; a log gets one bar line per step (at step.end).
        status = this.#o.live;
        const usage = isRecord(d['usage']) ? d['usage'] : {};
        const calls = Array.isArray(d['toolCalls']) ? d['toolCalls'].map(str) : [];
        text = `${s.cyan('model')} ${str(d['model'])} ${s.dim(
          `${num(usage['inputTokens'])}→${num(usage['outputTokens'])} tok ${formatUsd(usd)}`,
        )} → ${calls.length ? calls.join(', ') : s.green('answer')}`;
        break;
      }
      case 'tool.call':
        text = `${s.magenta('tool')} ${str(d['tool'])} ${s.dim(truncate(JSON.stringify(d['args'] ?? {}), 80))}`;
        break;
      case 'tool.start':
        return;
      case 'tool.end': {
        depth = base + 3;
        const outcome = str(d['outcome']);
        text = s.dim(
          `↳ ${e.agentId} ${outcome} ${num(d['durationMs'])}ms${d['replayed'] === true ? ' (replayed)' : ''}`,
        );
        break;
      }
      case 'tool.result': {
        depth = base + 3;
        if (d['ok'] === true) {
          text = `${s.green('→ ok')} ${s.dim(truncate(str(d['output']), 80))}`;
        } else {
          const err = isRecord(d['error']) ? d['error'] : {};
          text = `${s.red('→ error')} ${s.yellow(str(err['code']))} ${truncate(str(err['message']), 100)}`;
        }
        break;
      }
      case 'delegate.start': {
        const child = str(d['childRunId']);
        if (child) this.#depth.set(child, base + 3);
        text = `${s.blue('delegate')} → ${str(d['role'])} ${s.dim(`child run ${child}`)}`;
        break;
      }
      case 'step.retry': {
        depth = base + 1;
        const of = typeof d['maxAttempts'] === 'number' ? `/${num(d['maxAttempts'])}` : '';
        const next = (num(d['nextTryMs']) / 1000).toFixed(num(d['nextTryMs']) < 1000 ? 1 : 0);
        text = `${s.yellow(`↻ retry ${num(d['attempt'])}${of}`)} ${s.dim(`in ${next}s`)} ${s.yellow(
          str(d['code']),
        )} ${truncate(str(d['reason']), 120)}`;
        break;
      }
      case 'tool.waiting': {
        depth = base + 3;
        const id = str(d['approvalId']);
        text = `${s.yellow('⏸ waiting for approval')} ${id} ${s.dim(
          `— reins approve ${id}  |  reins deny ${id} --reason "…"`,
        )}`;
        break;
      }
      case 'approval.request':
        text = `${s.yellow('approval requested')} ${str(d['approvalId'])} ${s.dim(
          `${str(d['tool'])} (rule ${str(d['rule'])})`,
        )}`;
        break;
      case 'approval.decision': {
        const st = str(d['status']);
        const mark = st === 'approved' ? s.green('✓') : s.red('✗');
        text = `${mark} approval ${str(d['approvalId'])} ${st}${
          typeof d['by'] === 'string' ? ` by ${d['by']}` : ''
        }${typeof d['reason'] === 'string' ? s.dim(`: ${truncate(d['reason'], 80)}`) : ''}`;
        break;
      }
      case 'run.halt':
      case 'run.pause':
      case 'run.resume': {
        depth = base;
        const scope = isRecord(d['scope']) ? d['scope'] : {};
        const what =
          str(scope['kind']) === 'run'
            ? 'run'
            : `${str(scope['kind'])} ${str(scope['role'] ?? scope['agentId'] ?? '')}`.trim();
        const verb = e.event.slice(4);
        const colour = (t: string) => (verb === 'resume' ? s.green(t) : s.yellow(t));
        text = `${colour(`${verb === 'halt' ? '■ halted' : verb === 'pause' ? '⏸ paused' : '▶ resumed'}`)} ${s.dim(
          `(${what})`,
        )} ${truncate(str(d['reason']), 80)}${typeof d['by'] === 'string' ? s.dim(` by ${d['by']}`) : ''}`;
        break;
      }
      default:
        text = `${s.bold(e.event)} ${who} ${s.dim(truncate(JSON.stringify(d), 100))}`;
    }
    const t = ((e.ts - (this.#startedAt ?? e.ts)) / 1000).toFixed(3);
    const run = this.#o.showRun ? `${s.dim(e.runId.slice(-12).padStart(12))} ` : '';
    // A line that changes the counters gets the new status line under it, not the old one.
    this.#line(`${s.dim(`+${t}s`.padStart(9))} ${run}${'  '.repeat(depth)}${text}`, !status);
    if (status) this.#refreshStatus();
  }

  #countStep(runId: string, step: number, started: boolean): void {
    const seen = this.#steps.get(runId) ?? 0;
    // A step without a number (another planner's events) counts once, at its start.
    this.#steps.set(runId, step > 0 ? Math.max(seen, step) : seen + (started ? 1 : 0));
  }

  /** Clears the live status line (call before other output and at the end). */
  clearStatus(): void {
    if (this.#o.live && this.#status) this.#o.write('\r\x1b[K');
    this.#status = '';
  }

  #line(text: string, redraw = true): void {
    const had = this.#status;
    this.clearStatus();
    this.#o.write(`${this.#fit(text)}\n`);
    if (this.#o.live && had && redraw) this.#drawStatus(had);
  }

  #refreshStatus(): void {
    const line = this.statusLine();
    if (!this.#o.live) {
      this.#o.write(`${this.#fit(`${' '.repeat(10)}${this.#o.style.dim(line)}`)}\n`);
      return;
    }
    this.clearStatus();
    this.#drawStatus(line);
  }

  #drawStatus(line: string): void {
    this.#status = line;
    this.#o.write(this.#fit(`${' '.repeat(10)}${this.#o.style.bold(line)}`));
  }

  /** A line cut to the width, so a terminal never wraps it (a wrapped status line smears). */
  #fit(text: string): string {
    const width = this.#o.width ?? Infinity;
    return Number.isFinite(width) ? fitCell(text, width) : text;
  }
}
