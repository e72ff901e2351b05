import * as vega from 'vega';

/**
 * Helvetica advance widths (AFM, thousandths of an em) of printable ASCII, from the space
 * (U+0020) to the tilde (U+007E). Arial and Liberation Sans share them.
 */
const ASCII = [
  278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278, 556, 556, 556,
  556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556, 1015, 667, 667, 722, 722, 667,
  611, 778, 722, 278, 500, 667, 556, 833, 722, 778, 667, 778, 722, 667, 611, 722, 667, 944, 667,
  667, 611, 278, 278, 278, 469, 556, 333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500,
  222, 833, 556, 556, 556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
];

/** The few other characters the bench labels use. */
const OTHER: Record<string, number> = {
  '×': 584,
  '÷': 584,
  '≤': 549,
  '≥': 549,
  µ: 556,
  '·': 278,
  '′': 250,
  '→': 1000,
  '…': 1000,
};

/**
 * Viewers that lack Helvetica and Arial fall back to wider faces (DejaVu Sans is up to 15%
 * wider than Helvetica): reserve that much more, so a label is never cut off at the chart's edge.
 */
const MARGIN = 1.18;

/** Width in pixels of one line of text in Helvetica at `fontSize`, a little generous. */
export function textWidth(text: string, fontSize: number, bold = false): number {
  let units = 0;
  for (const c of text) {
    const code = c.codePointAt(0) ?? 0;
    units += (code >= 32 && code <= 126 ? ASCII[code - 32] : OTHER[c]) ?? 600;
  }
  return (units / 1000) * fontSize * MARGIN * (bold ? 1.08 : 1);
}

/** The fields of a Vega text item that its width depends on. */
interface TextItem {
  text?: unknown;
  fontSize?: unknown;
  fontWeight?: unknown;
}

function itemWidth(item: TextItem, line?: unknown): number {
  const text = line ?? item.text;
  if (Array.isArray(text)) return Math.max(0, ...text.map((t) => itemWidth(item, t)));
  const size = Number(item.fontSize ?? 11) || 0;
  const weight = item.fontWeight;
  const bold = weight === 'bold' || (typeof weight === 'number' && weight >= 600);
  const str = typeof text === 'string' ? text : typeof text === 'number' ? String(text) : '';
  return textWidth(str.trim(), size, bold);
}

let installed = false;

/**
 * Makes Vega measure text with Helvetica metrics. Without a canvas (none in Node unless the
 * native `canvas` package is built) Vega guesses 0.8 em a character, which leaves a wide empty
 * band beside every label; Vega keeps this hook for headless renderers (vl-convert sets it too).
 * Does nothing when this Vega build has no `textMetrics`.
 */
export function useHelveticaMetrics(): void {
  if (installed) return;
  const metrics: unknown = Reflect.get(vega, 'textMetrics');
  if (typeof metrics !== 'object' || metrics === null || !('width' in metrics)) return;
  Reflect.set(metrics, 'width', itemWidth);
  installed = true;
}
