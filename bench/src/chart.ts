import { logger, parse, View, Warn } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { meetsTarget } from './compare.js';
import { textWidth, useHelveticaMetrics } from './text-width.js';
import type { Better, RunReport } from './types.js';

/**
 * What the chart reads from a run: every figure with a raw NATS baseline, by suite. A
 * `RunReport` is one; so is a `latest.json` parsed back from disk.
 */
export interface ChartReport {
  timestamp: string;
  mode: RunReport['mode'];
  environment: RunReport['environment'];
  suites: {
    name: string;
    results: { metric: string; better: Better; ratio: number; target?: number | undefined }[];
  }[];
}

/** One bar: a figure's reins / raw ratio, with its target when it has one. */
interface Row {
  suite: string;
  /** Position in the run, so bars keep the table's order. */
  order: number;
  label: string;
  ratio: number;
  /** Where the value text starts: right of the bar, the parity line and the target. */
  end: number;
  text: string;
  target?: number;
  met?: boolean;
}

function rows(report: ChartReport): { rows: Row[]; omitted: number } {
  const out: Row[] = [];
  let omitted = 0;
  for (const s of report.suites) {
    const seen = new Set<string>();
    for (const r of s.results) {
      // A log scale has no place for 0, a negative or a missing ratio.
      if (!Number.isFinite(r.ratio) || r.ratio <= 0) {
        omitted++;
        continue;
      }
      let label = `${r.metric} (${r.better} is better)`;
      // y is a nominal scale per suite: two rows with one label would share a band.
      while (seen.has(label)) label += ' ′';
      seen.add(label);
      const row: Row = {
        suite: s.name,
        order: out.length,
        label,
        ratio: r.ratio,
        end: Math.max(r.ratio, 1),
        text: `${r.ratio.toFixed(2)}×`,
      };
      if (r.target !== undefined && Number.isFinite(r.target) && r.target > 0) {
        const met = meetsTarget(r) === true;
        row.target = r.target;
        row.met = met;
        row.end = Math.max(row.end, r.target);
        row.text += `  target ${r.better === 'lower' ? '≤' : '≥'} ${r.target.toFixed(2)}×: ${met ? 'met' : 'MISSED'}`;
      }
      out.push(row);
    }
  }
  return { rows: out, omitted };
}

/** Width of the plot area in pixels. */
const WIDTH = 560;
const FONT_SIZE = 11;

/**
 * The right end of the log axis: far enough that every value text, written right of its bar,
 * stays inside the plot. Widening the domain narrows every decade, hence the loop.
 */
function domainEnd(data: Row[], lo: number): number {
  let hi = Math.max(2, ...data.map((r) => r.end)) * 1.5;
  for (let i = 0; i < 50; i++) {
    const perDecade = WIDTH / Math.log10(hi / lo);
    const need = Math.max(
      ...data.map((r) => Math.log10(r.end) + (textWidth(r.text, FONT_SIZE) + 12) / perDecade),
    );
    if (need <= Math.log10(hi)) break;
    hi = 10 ** need;
  }
  return hi;
}

/** Log-scale ticks (1, 2, 5 per decade) inside [lo, hi]. */
function ticks(lo: number, hi: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of [1, 2, 5]) {
      const v = Number((m * 10 ** e).toPrecision(1));
      if (v >= lo && v <= hi) out.push(v);
    }
  }
  return out;
}

/**
 * The Vega-Lite spec of the chart: one horizontal bar per figure from parity (1×) to its
 * reins / raw ratio on a log scale, grouped and coloured by suite, each target marked with a
 * black tick and labelled met or MISSED. Figures whose ratio a log scale cannot show (0, NaN)
 * are left out and counted in the subtitle.
 */
export function chartSpec(report: ChartReport): TopLevelSpec {
  const { rows: data, omitted } = rows(report);
  const lo = Math.min(0.5, ...data.map((r) => r.ratio)) / 1.5;
  const hi = domainEnd(data, lo);
  const env = report.environment;
  const when = report.timestamp.replace('T', ' ').replace(/:\d\d(\.\d+)?Z$/, ' UTC');
  const suites = report.suites.map((s) => s.name);
  const y = {
    field: 'label',
    type: 'nominal',
    sort: { field: 'order', op: 'min' },
    title: null,
  } as const;
  return {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: {
      text: 'Reins / raw NATS, measured in the same run (median of per-round ratios)',
      subtitle: [
        `${report.mode} run, ${when} · ${env.cpus} × ${env.cpuModel} · ${env.platform} · ` +
          `node ${env.node} · nats-server ${env.natsServer}`,
        'Bars run from parity (1×) to the ratio: right of 1× Reins is the larger figure. ' +
          'Black tick: target.' +
          (omitted > 0 ? ` ${omitted} figure(s) without a finite ratio left out.` : ''),
      ],
      anchor: 'start',
      fontSize: 15,
      subtitleFontSize: 11,
      subtitleColor: '#555',
      offset: 12,
    },
    data: { values: data },
    facet: {
      row: {
        field: 'suite',
        type: 'nominal',
        sort: suites,
        title: null,
        header: {
          labelAngle: 0,
          labelOrient: 'top',
          labelAnchor: 'start',
          labelFontWeight: 'bold',
          labelFontSize: 12,
          labelPadding: 4,
        },
      },
    },
    spacing: 10,
    resolve: { scale: { y: 'independent' } },
    spec: {
      width: WIDTH,
      height: { step: 17 },
      layer: [
        {
          mark: { type: 'bar', height: { band: 0.7 } },
          encoding: {
            y,
            x: {
              field: 'ratio',
              type: 'quantitative',
              scale: { type: 'log', domain: [lo, hi], nice: false, clamp: true },
              axis: {
                values: ticks(lo, hi),
                labelExpr: "format(datum.value, '~g') + '×'",
                title: 'reins / raw (log scale)',
                gridColor: '#e4e4e4',
              },
            },
            x2: { datum: 1 },
            color: { field: 'suite', type: 'nominal', sort: suites, legend: null },
          },
        },
        { mark: { type: 'rule', color: '#333', strokeWidth: 1.5 }, encoding: { x: { datum: 1 } } },
        {
          mark: { type: 'tick', color: '#000', thickness: 3, size: 15 },
          encoding: { y, x: { field: 'target', type: 'quantitative' } },
        },
        {
          mark: { type: 'text', align: 'left', dx: 5, fontSize: FONT_SIZE },
          encoding: {
            y,
            x: { field: 'end', type: 'quantitative' },
            text: { field: 'text' },
            color: {
              condition: [
                { test: 'datum.met === false', value: '#c62828' },
                { test: 'datum.met === true', value: '#2e7d32' },
              ],
              value: '#222',
            },
          },
        },
      ],
    },
    config: {
      font: 'Helvetica, Arial, sans-serif',
      view: { stroke: '#ccc' },
      axis: { labelFontSize: FONT_SIZE, labelLimit: 0 },
      background: '#fff',
      padding: 12,
    },
  };
}

/**
 * Vega-Lite warns about every layer of a facet with an independent y scale, because each layer
 * filters its own fork of the data; here every fork comes from the one `data.values`, which is
 * what it then assumes. Any other warning still reaches stderr.
 */
const BENIGN = new Set([
  'Detected faceted independent scales that union domain of the same fields from different ' +
    'source. We will assume that this is the same field from a different fork of the same data ' +
    'source. However, if this is not the case, the result view size may be incorrect.',
]);

const compileLogger = logger(Warn, 'error', (method, level, args) => {
  if (typeof args[0] === 'string' && BENIGN.has(args[0])) return;
  console.error(level, ...args);
});

/**
 * The chart as an SVG document, rendered headlessly by Vega (no browser, no canvas). Rejects
 * when Vega cannot compile or render the spec.
 */
export async function chartSvg(report: ChartReport): Promise<string> {
  useHelveticaMetrics();
  const { spec } = compile(chartSpec(report), { logger: compileLogger });
  const view = new View(parse(spec), { renderer: 'none' });
  try {
    return `${await view.toSVG()}\n`;
  } finally {
    view.finalize();
  }
}
