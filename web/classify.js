// From a model and a model input to an answer: MediaPipe runs the model, the
// page decides. MediaPipe applies the Platt score calibration from the model's
// metadata itself, so its 'malignant' score is edgeskin's calibrated
// malignant_probability. The decision words are those of the Streamlit app
// (edgeskin/app.py: decide, diagnosis_line).

import {ImageClassifier} from './mediapipe/vision_bundle.mjs';
import {toImageData} from './preprocess.js';

export const DISCLAIMER = 'A screening aid, not a diagnosis. It can miss melanoma and it raises false alarms. ' +
  'Any lesion that is new, changing, bleeding or worrying must be seen by a doctor, whatever this page says.';

export const DX_NAMES = {
  akiec: 'actinic keratosis / intraepithelial carcinoma', bcc: 'basal cell carcinoma',
  bkl: 'benign keratosis-like lesion', df: 'dermatofibroma', mel: 'melanoma',
  nv: 'melanocytic naevus', vasc: 'vascular lesion',
};
export const TOP_DIAGNOSES = 3;

/** The MediaPipe fileset of this site: the SIMD build only, served beside the page, never from a CDN. */
export function localFileset(base = location.href) {
  return {
    wasmLoaderPath: new URL('mediapipe/wasm/vision_wasm_internal.js', base).href,
    wasmBinaryPath: new URL('mediapipe/wasm/vision_wasm_internal.wasm', base).href,
  };
}

/** A MediaPipe ImageClassifier for model bytes that filters nothing out. */
export async function createClassifier(bytes, fileset = localFileset()) {
  return ImageClassifier.createFromOptions(fileset, {
    baseOptions: {modelAssetBuffer: bytes, delegate: 'CPU'},
    runningMode: 'IMAGE',
    maxResults: -1,
    // MediaPipe reads a threshold <= 0 as "unset" and would fall back on one in
    // the model's metadata; the smallest positive value keeps every category
    // with a non-zero score, 'malignant' below the operating point included.
    scoreThreshold: 1e-9,
  });
}

/** One throwaway run: the first one sets up the interpreter (hundreds of ms); better at load than on a photo. */
export function warmUp(classifier, size) {
  classifier.classify(new ImageData(new Uint8ClampedArray(size * size * 4).fill(128), size, size));
}

/** Scores of one head by category name; MediaPipe leaves out a category scored exactly 0. */
function scoresByName(head) {
  const out = {};
  for (const c of head ? head.categories : []) out[c.categoryName] = c.score;
  return out;
}

/** The most probable diagnoses as [dx, probability], renormalised as edgeskin's runtime does. */
export function topDiagnoses(head, diagnoses, k = TOP_DIAGNOSES) {
  if (!head || !diagnoses.length) return null;
  const byName = scoresByName(head);
  const p = diagnoses.map((dx) => byName[dx] || 0);
  const total = p.reduce((a, b) => a + b, 0);
  const q = total > 0 ? p.map((v) => v / total) : p;
  // Array.sort is stable, so ties keep the label order, as numpy's stable argsort does.
  const order = q.map((_, i) => i).sort((a, b) => q[b] - q[a]);
  return order.slice(0, k).map((i) => [diagnoses[i], q[i]]);
}

/**
 * What a MediaPipe result says: {malignant_probability, diagnosis, outOfDomain}.
 * outOfDomain is undefined unless the model has a head named `usable`
 * (scores `usable` / `out_of_domain`), whose verdict then replaces the
 * gate's distance check.
 */
export function readResult(result, diagnoses) {
  const heads = {};
  for (const h of result.classifications) heads[h.headName] = h;
  const primary = heads.probabilities || result.classifications[0];
  const usable = heads.usable ? scoresByName(heads.usable) : null;
  return {
    malignant_probability: scoresByName(primary).malignant || 0,
    diagnosis: topDiagnoses(heads.diagnosis, diagnoses),
    outOfDomain: usable ? (usable.out_of_domain || 0) > (usable.usable || 0) : undefined,
  };
}

/** Run the model on a size x size RGB model input. */
export function classify(classifier, rgb, size, diagnoses) {
  return readResult(classifier.classify(toImageData(rgb, size)), diagnoses);
}

/** Benign / uncertain (refer) / suspicious, from the threshold and the `specific` operating point (app.decide). */
export function decide(p, threshold, suspiciousAt) {
  if (p < threshold) return 'benign';
  if (p < Math.max(threshold, suspiciousAt)) return 'uncertain (refer)';
  return 'suspicious';
}

/** The two-way label `edgeskin predict` gives: malignant when p >= threshold. */
export function label(p, threshold) {
  return p >= threshold ? 'malignant' : 'benign';
}

/** The top diagnoses as one line under the decision, which they never override (app.diagnosis_line). */
export function diagnosisLine(top) {
  const items = top.map(([dx, p]) => `${DX_NAMES[dx] || dx} (${dx}) ${Math.round(100 * p)}%`).join(', ');
  return `Most likely diagnoses (an aid, not the decision): ${items}`;
}
