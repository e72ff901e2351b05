import { readFile } from 'node:fs/promises';
import { posix } from 'node:path';
import picomatch from 'picomatch';
import { z } from 'zod';
import { ID_PATTERN, ReinsError, parse } from '@reins/protocol';
import { NotFoundError, ProtocolError } from '@reins/protocol';

// Semantics, in one place:
// - A rule *applies* to a call when its `match` globs all match (role, agent, run, tool) and its
//   `args` conditions hold. Conditions are the same for every effect: `allow` + `{amount max 100}`
//   allows small amounts; `deny` + `{url hosts [evil.com]}` denies calls to evil.com.
// - Hostile or missing argument values (a `..` path segment, an unparsable URL, a string where a
//   number belongs, an absent field) always resolve toward deny: they never satisfy an allow or
//   approve condition and always satisfy a deny condition.
// - Precedence among applying rules: deny > approve > allow; the first rule of the winning
//   effect (document order) names the decision. Nothing applies → deny: named after the first
//   allow/approve rule whose globs matched but whose conditions refused the arguments, else
//   `default.deny`.
// - Programmatic argument checks (zod schemas or predicates per tool, from code) must all pass
//   before an allow or approve stands; a failure denies with rule `args.<tool>` (or the check id).
// - Tool names (in rules and calls) are ASCII ids: a homoglyph such as `reаd_file` with a
//   Cyrillic а is not a valid tool name and is denied before any rule is consulted.
// - Overlays (`narrowPolicy`) are evaluated separately and the strictest decision wins, so an
//   overlay can add denies and approvals and restrict allows but never allow what base refuses.

/** A glob over ids: ASCII letters, digits, `_`, `-`, and the wildcards `*` and `?`. */
const Glob = z
  .string()
  .regex(/^[A-Za-z0-9_*?-]{1,128}$/, 'must be an ASCII glob over [A-Za-z0-9_-] with * and ?');
const ArgPath = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,15}$/, 'must be a dotted argument path')
  .refine((p) => !p.split('.').some((s) => FORBIDDEN.has(s)), 'forbidden path segment');
const FORBIDDEN = new Set(['__proto__', 'constructor', 'prototype']);
const RuleId = z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/, 'must match [A-Za-z0-9_.:-]{1,128}');
const HostPattern = z
  .string()
  .regex(/^(\*\.)?[a-z0-9-]+(\.[a-z0-9-]+)*$/, 'must be a lower-case host or *.host');

/** A declarative argument condition. All operators given must hold. */
export const ArgRule = z
  .object({
    /** Dotted path into the arguments (`amount`, `target.path`). */
    path: ArgPath,
    /** The value is a number ≤ max. */
    max: z.number().finite().optional(),
    /** The value is a number ≥ min. */
    min: z.number().finite().optional(),
    /** The value is a path (no `..` segments) under one of these directories. */
    prefix: z.array(z.string().min(1).max(1024)).min(1).max(64).optional(),
    /** The value is an http(s) URL whose host is listed (`*.example.com` for subdomains). */
    hosts: z.array(HostPattern).min(1).max(256).optional(),
    /** The value equals one of these. */
    oneOf: z
      .array(z.union([z.string(), z.number(), z.boolean()]))
      .min(1)
      .max(1024)
      .optional(),
    /** The whole string value matches this regular expression (implicitly anchored). */
    pattern: z.string().min(1).max(1024).optional(),
  })
  .strict()
  .refine(
    (r) =>
      r.max !== undefined ||
      r.min !== undefined ||
      r.prefix !== undefined ||
      r.hosts !== undefined ||
      r.oneOf !== undefined ||
      r.pattern !== undefined,
    'an argument rule needs max, min, prefix, hosts, oneOf or pattern',
  )
  .refine((r) => {
    if (r.pattern === undefined) return true;
    try {
      new RegExp(r.pattern, 'u');
      return true;
    } catch {
      return false;
    }
  }, 'pattern is not a valid regular expression');
export type ArgRule = z.infer<typeof ArgRule>;

/** The effect of a rule. */
export const PolicyEffect = z.enum(['allow', 'deny', 'approve']);
export type PolicyEffect = z.infer<typeof PolicyEffect>;

/** One policy rule. */
export const PolicyRule = z
  .object({
    id: RuleId,
    description: z.string().max(1024).optional(),
    match: z
      .object({ role: Glob.optional(), agent: Glob.optional(), run: Glob.optional(), tool: Glob })
      .strict(),
    effect: PolicyEffect,
    args: z.array(ArgRule).max(64).default([]),
  })
  .strict();
export type PolicyRule = z.infer<typeof PolicyRule>;

/**
 * A policy document (JSON). `default` is `deny` for a deployment policy; a run overlay may
 * say `inherit` (calls no overlay rule covers are left to the base) or `deny` (an allow-list).
 */
export const PolicyDocument = z
  .object({
    version: z.literal(1).default(1),
    default: z.enum(['deny', 'inherit']).optional(),
    rules: z.array(PolicyRule).max(10_000),
  })
  .strict()
  .refine((d) => new Set(d.rules.map((r) => r.id)).size === d.rules.length, {
    message: 'rule ids must be unique',
    path: ['rules'],
  })
  .refine((d) => d.rules.every((r) => !r.id.startsWith('default.')), {
    message: 'rule ids starting with "default." are reserved',
    path: ['rules'],
  });
export type PolicyDocument = z.infer<typeof PolicyDocument>;

/** What a policy is asked about. */
export interface PolicyInput {
  role: string;
  agentId: string;
  runId: string;
  tool: string;
  args: Record<string, unknown>;
}

/** A policy decision; `rule` is the deciding rule's id or `default.deny`. */
export interface PolicyDecision {
  effect: PolicyEffect;
  rule: string;
  reason: string;
}

/**
 * A programmatic argument check for one tool: a zod schema the arguments must satisfy, or a
 * predicate returning `true` (pass) or a reason string (fail). A throwing predicate denies.
 */
export type ArgCheck =
  z.ZodType | ((args: Record<string, unknown>, input: PolicyInput) => true | false | string);

/** Options of `compilePolicy` / `loadPolicyFile`. */
export interface PolicyOptions {
  /** Programmatic checks per exact tool name, with an optional id for decisions. */
  argChecks?: Record<string, ArgCheck | { id: string; check: ArgCheck }[]>;
  /** When given, tools outside this set are denied as unknown before any rule is consulted. */
  knownTools?: Iterable<string>;
}

interface CompiledRule {
  rule: PolicyRule;
  matches: (input: PolicyInput) => boolean;
  conditions: ((args: Record<string, unknown>) => Verdict)[];
}

interface CompiledLayer {
  readonly overlay: boolean;
  readonly defaultDeny: boolean;
  readonly rules: readonly CompiledRule[];
}

/** A compiled policy: a base plus any narrowing overlays. Build with `compilePolicy`. */
export interface Policy {
  readonly kind: 'reins.policy';
  readonly document: PolicyDocument;
  readonly overlays: readonly PolicyDocument[];
  /** @internal */
  readonly layers: readonly CompiledLayer[];
  /** @internal */
  readonly checks: ReadonlyMap<string, readonly { id: string; check: ArgCheck }[]>;
  /** @internal */
  readonly knownTools: ReadonlySet<string> | undefined;
}

type Verdict = { ok: 'pass' } | { ok: 'fail' | 'hostile'; reason: string };
const PASS: Verdict = { ok: 'pass' };

function lookup(args: Record<string, unknown>, path: string): { found: boolean; value: unknown } {
  let cur: unknown = args;
  for (const seg of path.split('.')) {
    if (typeof cur !== 'object' || cur === null || Array.isArray(cur) || !Object.hasOwn(cur, seg)) {
      return { found: false, value: undefined };
    }
    cur = (cur as Record<string, unknown>)[seg];
  }
  return { found: true, value: cur };
}

function normalizePrefix(p: string): string {
  const n = posix.normalize(p);
  return n.endsWith('/') ? n : `${n}/`;
}

function hostMatches(host: string, pattern: string): boolean {
  if (pattern.startsWith('*.')) return host.endsWith(pattern.slice(1));
  return host === pattern;
}

function compileArgRule(r: ArgRule): (args: Record<string, unknown>) => Verdict {
  const prefixes = r.prefix?.map(normalizePrefix);
  const re = r.pattern === undefined ? undefined : new RegExp(`^(?:${r.pattern})$`, 'u');
  return (args) => {
    const { found, value } = lookup(args, r.path);
    if (!found) return { ok: 'hostile', reason: `argument ${r.path} is missing` };
    if (r.max !== undefined || r.min !== undefined) {
      if (typeof value !== 'number' || !Number.isFinite(value)) {
        return { ok: 'hostile', reason: `argument ${r.path} is not a number` };
      }
      if (r.max !== undefined && value > r.max) {
        return { ok: 'fail', reason: `${r.path} ${value} is above the limit ${r.max}` };
      }
      if (r.min !== undefined && value < r.min) {
        return { ok: 'fail', reason: `${r.path} ${value} is below the minimum ${r.min}` };
      }
    }
    if (prefixes) {
      if (typeof value !== 'string' || value.length === 0 || value.length > 4096) {
        return { ok: 'hostile', reason: `argument ${r.path} is not a path` };
      }
      if (value.includes('\0') || value.includes('\\') || value.split('/').includes('..')) {
        return { ok: 'hostile', reason: `path ${r.path} contains "..", a backslash or NUL` };
      }
      const n = posix.normalize(value);
      if (!prefixes.some((p) => n === p.slice(0, -1) || n.startsWith(p))) {
        return { ok: 'fail', reason: `path ${r.path} is outside ${r.prefix?.join(', ') ?? ''}` };
      }
    }
    if (r.hosts) {
      let url: URL;
      try {
        if (typeof value !== 'string') throw new TypeError('not a string');
        url = new URL(value);
      } catch {
        return { ok: 'hostile', reason: `argument ${r.path} is not a URL` };
      }
      if (url.protocol !== 'https:' && url.protocol !== 'http:') {
        return { ok: 'hostile', reason: `URL ${r.path} has scheme ${url.protocol}` };
      }
      const host = url.hostname.toLowerCase().replace(/\.$/, '');
      if (!r.hosts.some((h) => hostMatches(host, h))) {
        return { ok: 'fail', reason: `host ${host} of ${r.path} is not listed` };
      }
    }
    if (r.oneOf) {
      if (!r.oneOf.includes(value as string | number | boolean)) {
        return { ok: 'fail', reason: `argument ${r.path} is not one of the allowed values` };
      }
    }
    if (re) {
      if (typeof value !== 'string') {
        return { ok: 'hostile', reason: `argument ${r.path} is not a string` };
      }
      if (!re.test(value)) return { ok: 'fail', reason: `argument ${r.path} does not match` };
    }
    return PASS;
  };
}

function compileRule(rule: PolicyRule): CompiledRule {
  const opts = { dot: true, nobrace: true, noextglob: true, nonegate: true };
  const glob = (p: string | undefined) => (p === undefined ? () => true : picomatch(p, opts));
  const role = glob(rule.match.role);
  const agent = glob(rule.match.agent);
  const run = glob(rule.match.run);
  const tool = glob(rule.match.tool);
  return {
    rule,
    matches: (i) => tool(i.tool) && role(i.role) && agent(i.agentId) && run(i.runId),
    conditions: rule.args.map(compileArgRule),
  };
}

function compileLayer(doc: PolicyDocument, overlay: boolean): CompiledLayer {
  return {
    overlay,
    defaultDeny: !overlay || doc.default === 'deny',
    rules: doc.rules.map(compileRule),
  };
}

/**
 * Validates and compiles a policy document (a deployment policy: default deny). Throws a
 * `ProtocolError` naming the failing fields for an invalid document.
 */
export function compilePolicy(document: unknown, options: PolicyOptions = {}): Policy {
  const doc = parse(PolicyDocument, document, 'policy');
  if (doc.default === 'inherit') {
    throw new ProtocolError('policy: a deployment policy cannot have default "inherit"');
  }
  const checks = new Map<string, { id: string; check: ArgCheck }[]>();
  for (const [tool, c] of Object.entries(options.argChecks ?? {})) {
    if (!ID_PATTERN.test(tool)) throw new ProtocolError(`policy: invalid tool name ${tool}`);
    checks.set(tool, Array.isArray(c) ? c : [{ id: `args.${tool}`, check: c }]);
  }
  return {
    kind: 'reins.policy',
    document: doc,
    overlays: [],
    layers: [compileLayer(doc, false)],
    checks,
    knownTools: options.knownTools === undefined ? undefined : new Set(options.knownTools),
  };
}

/**
 * Reads, validates and compiles a JSON policy file. Throws a `NotFoundError` when the file
 * cannot be read and a `ProtocolError` (with the path and failing fields) when it is invalid.
 */
export async function loadPolicyFile(path: string, options: PolicyOptions = {}): Promise<Policy> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (cause) {
    const code = (cause as { code?: unknown }).code;
    throw new NotFoundError(`policy file ${path} cannot be read (${String(code ?? cause)})`, {
      cause,
      details: { path },
    });
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (cause) {
    const msg = cause instanceof Error ? cause.message : 'syntax error';
    throw new ProtocolError(`policy file ${path} is not valid JSON: ${msg}`, {
      cause,
      details: { path },
    });
  }
  try {
    return compilePolicy(raw, options);
  } catch (err) {
    if (err instanceof ReinsError) {
      throw new ProtocolError(`policy file ${path}: ${err.message}`, {
        cause: err,
        details: { path, ...err.details },
      });
    }
    throw err;
  }
}

/**
 * A policy narrowed by a run overlay (a document, e.g. `RunStartRequest.policy`). The overlay
 * is evaluated on its own and the strictest decision wins (deny > approve > allow), so it can
 * add denies and approvals and restrict allows but never allow what `base` refuses. Throws a
 * `ProtocolError` for an invalid overlay.
 */
export function narrowPolicy(base: Policy, overlay: unknown): Policy {
  const doc = parse(PolicyDocument, overlay, 'policy overlay');
  return {
    ...base,
    overlays: [...base.overlays, doc],
    layers: [...base.layers, compileLayer(doc, true)],
  };
}

const SEVERITY: Record<PolicyEffect, number> = { allow: 0, approve: 1, deny: 2 };

function deny(rule: string, reason: string): PolicyDecision {
  return { effect: 'deny', rule, reason };
}

function evaluateLayer(layer: CompiledLayer, input: PolicyInput): PolicyDecision | null {
  let firstDeny: CompiledRule | undefined;
  let firstApprove: CompiledRule | undefined;
  let firstAllow: CompiledRule | undefined;
  let refused: { rule: string; reason: string } | undefined;
  for (const c of layer.rules) {
    if (!c.matches(input)) continue;
    let verdict: Verdict = PASS;
    for (const cond of c.conditions) {
      const v = cond(input.args);
      if (v.ok !== 'pass') {
        verdict = v;
        if (v.ok === 'hostile') break;
      }
    }
    if (c.rule.effect === 'deny') {
      if (verdict.ok !== 'fail') firstDeny ??= c;
      if (firstDeny) break; // nothing outranks a deny
    } else if (verdict.ok === 'pass') {
      if (c.rule.effect === 'approve') firstApprove ??= c;
      else firstAllow ??= c;
    } else {
      refused ??= { rule: c.rule.id, reason: verdict.reason };
    }
  }
  const pick = firstDeny ?? firstApprove ?? firstAllow;
  if (pick) {
    const what =
      pick.rule.effect === 'deny'
        ? 'denies'
        : pick.rule.effect === 'approve'
          ? 'requires approval for'
          : 'allows';
    return {
      effect: pick.rule.effect,
      rule: pick.rule.id,
      reason: `rule ${pick.rule.id} ${what} ${input.tool}`,
    };
  }
  if (refused)
    return deny(refused.rule, `rule ${refused.rule} refuses the arguments: ${refused.reason}`);
  if (!layer.defaultDeny) return null;
  return deny(
    'default.deny',
    layer.overlay
      ? `the run policy does not allow ${input.tool}`
      : `no rule allows ${input.tool} for role ${input.role}`,
  );
}

function runCheck(c: { id: string; check: ArgCheck }, input: PolicyInput): true | string {
  try {
    if (typeof c.check === 'function') {
      const r = c.check(input.args, input);
      return r === true ? true : typeof r === 'string' ? r : 'argument check failed';
    }
    const r = c.check.safeParse(input.args);
    if (r.success) return true;
    return r.error.issues
      .slice(0, 3)
      .map((i) => `${i.path.map(String).join('.') || '(args)'}: ${i.message}`)
      .join('; ');
  } catch {
    return 'argument check threw';
  }
}

const compiled = new WeakMap<object, Policy>();

/**
 * Decides whether a call may happen: `allow`, `deny` or `approve` (a human must agree), with
 * the deciding rule's id and a reason. Never throws: invalid ids or tool names, unknown tools
 * and anything no rule allows are denied (`default.deny`). Accepts a compiled `Policy` or a
 * document (compiled once and cached; an invalid document denies everything).
 */
export function evaluatePolicy(
  policy: Policy | PolicyDocument,
  input: PolicyInput,
): PolicyDecision {
  let p: Policy;
  if ('kind' in policy && policy.kind === 'reins.policy') {
    p = policy;
  } else {
    const cached = compiled.get(policy);
    if (cached) p = cached;
    else {
      try {
        p = compilePolicy(policy);
      } catch (err) {
        return deny('default.deny', `invalid policy: ${err instanceof Error ? err.message : ''}`);
      }
      compiled.set(policy, p);
    }
  }
  if (typeof input.tool !== 'string' || !ID_PATTERN.test(input.tool)) {
    const shown = typeof input.tool === 'string' ? JSON.stringify(input.tool.slice(0, 80)) : '?';
    return deny('default.deny', `unknown tool ${shown}: tool names are ASCII [A-Za-z0-9_-]`);
  }
  for (const [what, v] of [
    ['role', input.role],
    ['agentId', input.agentId],
    ['runId', input.runId],
  ] as const) {
    if (typeof v !== 'string' || !ID_PATTERN.test(v)) {
      return deny('default.deny', `invalid ${what}`);
    }
  }
  if (typeof input.args !== 'object' || input.args === null || Array.isArray(input.args)) {
    return deny('default.deny', 'arguments must be an object');
  }
  if (p.knownTools && !p.knownTools.has(input.tool)) {
    return deny('default.deny', `unknown tool ${input.tool}`);
  }
  let decision: PolicyDecision | null = null;
  for (const layer of p.layers) {
    const d = evaluateLayer(layer, input);
    if (d && (decision === null || SEVERITY[d.effect] > SEVERITY[decision.effect])) decision = d;
    if (decision?.effect === 'deny') return decision;
  }
  if (decision === null) return deny('default.deny', `no rule allows ${input.tool}`);
  for (const c of p.checks.get(input.tool) ?? []) {
    const r = runCheck(c, input);
    if (r !== true) return deny(c.id, `arguments of ${input.tool} refused: ${r}`);
  }
  return decision;
}
