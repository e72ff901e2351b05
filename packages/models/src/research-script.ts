import { posix } from 'node:path';
import type { ChatMessage } from './messages.js';
import type { ScriptedRespond, ScriptedTurn } from './scripted-model.js';
import { readToolOutcome } from './tool-result.js';
import type { ToolOutcome } from './tool-result.js';

/** Options of `researchScript`. */
export interface ResearchScriptOptions {
  /** Directory to study, relative to the file tools' sandbox root (default `docs`). */
  dir?: string;
  /** Where to write the report (default `report.md`). */
  reportPath?: string;
  /** Which files count as documents (default markdown and text). */
  match?: RegExp;
  /** At most this many documents are read (default 50). */
  maxFiles?: number;
}

interface ToolExchange {
  name: string;
  args: Record<string, unknown>;
  outcome: ToolOutcome;
}

/** What the report says about one document. */
export interface DocumentSummary {
  path: string;
  words: number;
  headings: string[];
  firstSentence: string;
  error?: string;
}

function exchanges(conversation: readonly ChatMessage[]): ToolExchange[] {
  const calls = new Map<string, { name: string; args: Record<string, unknown> }>();
  const out: ToolExchange[] = [];
  for (const message of conversation) {
    if (message.role === 'assistant') {
      for (const call of message.toolCalls ?? []) {
        let args: Record<string, unknown> = {};
        try {
          const parsed: unknown = JSON.parse(call.arguments);
          if (typeof parsed === 'object' && parsed !== null)
            args = parsed as Record<string, unknown>;
        } catch {
          // a call the script did not make; its arguments stay empty
        }
        calls.set(call.id, { name: call.name, args });
      }
    } else if (message.role === 'tool') {
      const call = calls.get(message.toolCallId);
      if (call) out.push({ ...call, outcome: readToolOutcome(message.content) });
    }
  }
  return out;
}

function field(value: unknown, key: string): unknown {
  return typeof value === 'object' && value !== null
    ? (value as Record<string, unknown>)[key]
    : undefined;
}

/** Word count, markdown headings and first sentence of a document. */
export function summarizeDocument(path: string, text: string): DocumentSummary {
  const words = text.split(/\s+/).filter((w) => /[\p{L}\p{N}]/u.test(w)).length;
  const headings: string[] = [];
  const prose: string[] = [];
  for (const line of text.split(/\r?\n/)) {
    const heading = /^#{1,6}\s+(.+?)\s*#*\s*$/.exec(line);
    if (heading?.[1] !== undefined) headings.push(heading[1]);
    else if (line.trim() !== '' && !line.startsWith('```')) prose.push(line.trim());
  }
  const body = prose.join(' ').replace(/[*_`]/g, '');
  const sentence = /^(.+?[.!?])(\s|$)/.exec(body)?.[1] ?? body;
  const firstSentence = sentence.length > 200 ? `${sentence.slice(0, 197)}...` : sentence;
  return { path, words, headings, firstSentence };
}

/** The markdown report the research script writes. */
export function renderReport(dir: string, docs: readonly DocumentSummary[]): string {
  const total = docs.reduce((n, d) => n + d.words, 0);
  const lines = [
    `# Report on ${dir}`,
    '',
    `${docs.length} documents, ${total} words in total.`,
    '',
  ];
  for (const doc of docs) {
    lines.push(`## ${doc.path}`, '');
    if (doc.error !== undefined) {
      lines.push(`- Unreadable: ${doc.error}`, '');
      continue;
    }
    lines.push(`- Words: ${doc.words}`);
    lines.push(`- Headings: ${doc.headings.length > 0 ? doc.headings.join('; ') : '(none)'}`);
    lines.push(`- First sentence: ${doc.firstSentence === '' ? '(none)' : doc.firstSentence}`, '');
  }
  return lines.join('\n');
}

/**
 * A script for `createScriptedModel` that does real offline research with the file tools
 * (`list_files`, `read_file`, `write_file`): list `dir` → read every document (in one turn of
 * parallel calls) → write a report (word counts, headings, first sentences) → answer. Each turn is
 * decided from the tool results in the conversation, so it reacts to what the tools returned:
 * failed reads are reported as unreadable, a failed listing or write ends with an explanation.
 */
export function researchScript(options: ResearchScriptOptions = {}): ScriptedRespond {
  const dir = options.dir ?? 'docs';
  const reportPath = options.reportPath ?? 'report.md';
  const match = options.match ?? /\.(md|markdown|txt)$/i;
  const maxFiles = options.maxFiles ?? 50;

  return (conversation): ScriptedTurn => {
    const seen = exchanges(conversation);
    const last = (name: string) => seen.filter((e) => e.name === name).at(-1);

    const listing = last('list_files');
    if (listing === undefined) {
      return {
        content: `Listing ${dir}.`,
        toolCalls: [{ name: 'list_files', args: { path: dir } }],
      };
    }
    if (!listing.outcome.ok) return `I could not list ${dir}: ${listing.outcome.error.message}`;
    const entries = field(listing.outcome.output, 'entries');
    const files = (Array.isArray(entries) ? entries : [])
      .filter((e) => field(e, 'type') === 'file' && typeof field(e, 'name') === 'string')
      .map((e) => String(field(e, 'name')))
      .filter((name) => match.test(name))
      .sort()
      .slice(0, maxFiles)
      .map((name) => posix.join(dir, name));
    if (files.length === 0) return `There are no documents in ${dir}; nothing to summarise.`;

    const reads = new Map<string, ToolOutcome>();
    for (const e of seen) {
      if (e.name === 'read_file' && typeof e.args['path'] === 'string')
        reads.set(e.args['path'], e.outcome);
    }
    const unread = files.filter((f) => !reads.has(f));
    if (unread.length > 0) {
      return {
        content: `Reading ${unread.length} document${unread.length === 1 ? '' : 's'}.`,
        toolCalls: unread.map((path) => ({ name: 'read_file', args: { path } })),
      };
    }

    const docs = files.map((path): DocumentSummary => {
      const outcome = reads.get(path);
      if (outcome === undefined || !outcome.ok) {
        const error = outcome && !outcome.ok ? outcome.error.message : 'not read';
        return { path, words: 0, headings: [], firstSentence: '', error };
      }
      const text = field(outcome.output, 'content');
      return summarizeDocument(path, typeof text === 'string' ? text : '');
    });

    const written = last('write_file');
    if (written === undefined) {
      return {
        content: `Writing the report to ${reportPath}.`,
        toolCalls: [
          { name: 'write_file', args: { path: reportPath, content: renderReport(dir, docs) } },
        ],
      };
    }
    if (!written.outcome.ok)
      return `I could not write ${reportPath}: ${written.outcome.error.message}`;

    const readable = docs.filter((d) => d.error === undefined);
    const total = readable.reduce((n, d) => n + d.words, 0);
    const largest = [...readable].sort(
      (a, b) => b.words - a.words || a.path.localeCompare(b.path),
    )[0];
    const failed = docs.length - readable.length;
    return [
      `Wrote ${reportPath}: ${docs.length} documents in ${dir}, ${total} words in total.`,
      largest ? `Largest: ${largest.path} (${largest.words} words).` : '',
      failed > 0 ? `${failed} could not be read.` : '',
    ]
      .filter((s) => s !== '')
      .join(' ');
  };
}
