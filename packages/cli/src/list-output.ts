import { usageError } from './errors.js';
import { printJson, println } from './output.js';

/** Options of every list command (`ps`, `runs`, `approvals`). */
export interface ListOptions {
  json?: boolean;
  /** `-q`: ids only, one a line. */
  quiet?: boolean;
  /** `--format json|jsonl|<template>`. */
  format?: string;
  /** `--wide`: whole ids and cells, whatever the terminal width. */
  wide?: boolean;
}

const FIELD = /\{\{\s*\.?([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)\s*\}\}/g;
const HAS_FIELD = /\{\{\s*\.?[A-Za-z_]/;

function field(item: unknown, path: string): string {
  let v: unknown = item;
  for (const key of path.split('.')) {
    v =
      typeof v === 'object' && v !== null && Object.hasOwn(v, key)
        ? (v as Record<string, unknown>)[key]
        : undefined;
  }
  if (v === undefined || v === null) return '';
  return typeof v === 'string' ? v : JSON.stringify(v);
}

/**
 * Renders `template` for one item: `{{runId}}` (or docker's `{{.runId}}`) is the field, dotted
 * paths reach inside (`{{budget.usd}}`), objects print as JSON, missing fields as nothing;
 * `\t` and `\n` are a tab and a newline.
 */
export function renderTemplate(template: string, item: unknown): string {
  return template
    .replaceAll('\\t', '\t')
    .replaceAll('\\n', '\n')
    .replace(FIELD, (_, path: string) => field(item, path));
}

/**
 * Prints a list the way `--json`, `-q` or `--format` ask, and returns true; false when none of
 * them is given (the command prints its table).
 */
export function printList<T>(
  items: readonly T[],
  options: ListOptions,
  id: (item: T) => string,
): boolean {
  const format = options.format ?? (options.json ? 'json' : undefined);
  if (options.quiet && options.format !== undefined) {
    throw usageError('give -q or --format, not both', "-q is --format '{{id}}' for the item’s id");
  }
  if (options.quiet) {
    for (const item of items) println(id(item));
    return true;
  }
  if (format === undefined) return false;
  if (format === 'json') printJson(items);
  else if (format === 'jsonl') for (const item of items) printJson(item);
  else if (!HAS_FIELD.test(format)) {
    throw usageError(
      `--format must be json, jsonl or a template with {{field}}, not ${JSON.stringify(format.slice(0, 60))}`,
      "e.g. --format '{{runId}}\\t{{status}}' (the fields are those of --json)",
    );
  } else for (const item of items) println(renderTemplate(format, item));
  return true;
}
