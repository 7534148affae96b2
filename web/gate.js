// "Cannot judge this photo": the input-quality and out-of-domain gate of
// edgeskin/gate.py, ported line for line (quality_stats, domain_features,
// Gate.reasons). Its limits travel in the model's edgeskin.json ("gate"), so
// a recalibrated model brings its own. Works on the size x size RGB model input.

export const REASON_TEXT = {
  too_small: 'the image is too small',
  extreme_aspect: 'the image is far from square',
  nearly_uniform: 'the image shows almost no structure',
  overexposed: 'the image is overexposed',
  underexposed: 'the image is underexposed',
  too_blurred: 'the image is too blurred',
  out_of_domain: 'the image does not look like a dermoscopic photo of a skin lesion',
};

/** Every other pixel in both directions (numpy's [::2, ::2]) as float RGB rows, scaled by 1/div. */
function halfResolution(rgb, size, div) {
  const n = Math.ceil(size / 2);
  const out = new Float64Array(n * n * 3);
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      const i = (2 * y * size + 2 * x) * 3;
      const j = (y * n + x) * 3;
      out[j] = rgb[i] / div;
      out[j + 1] = rgb[i + 1] / div;
      out[j + 2] = rgb[i + 2] / div;
    }
  }
  return {n, px: out};
}

function lumaOf(px, count) {
  const luma = new Float64Array(count);
  for (let i = 0; i < count; i++) luma[i] = px[3 * i] * 0.299 + px[3 * i + 1] * 0.587 + px[3 * i + 2] * 0.114;
  return luma;
}

function laplacian(luma, n) {
  const out = new Float64Array((n - 2) * (n - 2));
  let k = 0;
  for (let y = 1; y < n - 1; y++) {
    for (let x = 1; x < n - 1; x++) {
      const c = y * n + x;
      out[k++] = luma[c - 1] + luma[c + 1] + luma[c - n] + luma[c + n] - 4 * luma[c];
    }
  }
  return out;
}

function mean(a) {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i];
  return s / a.length;
}

/** Population variance (numpy's default ddof=0). */
function variance(a) {
  const m = mean(a);
  let s = 0;
  for (let i = 0; i < a.length; i++) s += (a[i] - m) ** 2;
  return s / a.length;
}

function share(a, test) {
  let k = 0;
  for (let i = 0; i < a.length; i++) if (test(a[i])) k++;
  return k / a.length;
}

/** Exposure, structure and sharpness at half resolution, on the 0..255 scale (gate.quality_stats). */
export function qualityStats(rgb, size) {
  const {n, px} = halfResolution(rgb, size, 1);
  const luma = lumaOf(px, n * n);
  return {
    contrast: Math.sqrt(variance(luma)),
    overexposed: share(luma, (v) => v >= 250),
    underexposed: share(luma, (v) => v <= 5),
    sharpness: variance(laplacian(luma, n)),
  };
}

const ringCache = new Map(); // the same few sizes every time, as gate._rings' lru_cache

/** Ring (0 centre, 1 middle, 2 border) of each pixel of an n x n image, as gate._rings. */
function rings(n) {
  if (!ringCache.has(n)) ringCache.set(n, computeRings(n));
  return ringCache.get(n);
}

function computeRings(n) {
  const ring = new Uint8Array(n * n);
  const c = (n - 1) / 2;
  for (let y = 0; y < n; y++) {
    for (let x = 0; x < n; x++) {
      const r = Math.hypot(y - c, x - c) / (n / 2);
      ring[y * n + x] = r < 0.35 ? 0 : r < 0.7 ? 1 : 2;
    }
  }
  return ring;
}

/** Per ring: channel means and log standard deviations (the first 18 features). */
function ringFeatures(px, ring, count) {
  const sums = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
  const squares = [[0, 0, 0], [0, 0, 0], [0, 0, 0]];
  const counts = [0, 0, 0];
  for (let i = 0; i < count; i++) {
    const k = ring[i];
    counts[k]++;
    for (let c = 0; c < 3; c++) {
      sums[k][c] += px[3 * i + c];
      squares[k][c] += px[3 * i + c] ** 2;
    }
  }
  const out = [];
  for (let k = 0; k < 3; k++) {
    const means = sums[k].map((s) => s / counts[k]);
    const logStds = squares[k].map((q, c) => Math.log(Math.sqrt(Math.max(q / counts[k] - means[c] ** 2, 0)) + 1e-3));
    out.push(...means, ...logStds);
  }
  return {out, sums, squares};
}

/** The 90th-percentile position numpy's partition picks: the k-th smallest. */
function kthSmallest(a, k) {
  return Float64Array.from(a).sort()[k];
}

/** Saturation, gradient, texture and colour-balance features (the last 10). */
function textureFeatures(px, n, sums, squares) {
  const count = n * n;
  const luma = lumaOf(px, count);
  const sat = new Float64Array(count);
  let blueish = 0;
  let greenish = 0;
  let cross = 0;
  for (let i = 0; i < count; i++) {
    const r = px[3 * i], g = px[3 * i + 1], b = px[3 * i + 2];
    const mx = Math.max(r, g, b);
    sat[i] = (mx - Math.min(r, g, b)) / (mx + 1e-3);
    if (b - r > 0.05) blueish++;
    if (g - r > 0.05) greenish++;
    cross += r * b;
  }
  const grad = new Float64Array((n - 1) * (n - 1));
  for (let y = 0; y < n - 1; y++) {
    for (let x = 0; x < n - 1; x++) {
      const c = y * n + x;
      grad[y * (n - 1) + x] = Math.abs(luma[c + n] - luma[c]) + Math.abs(luma[c + 1] - luma[c]);
    }
  }
  const k = Math.trunc(0.9 * (grad.length - 1));
  const total = (rows, c) => rows[0][c] + rows[1][c] + rows[2][c];
  const mr = total(sums, 0) / count, mb = total(sums, 2) / count;
  const sr = Math.sqrt(Math.max(total(squares, 0) / count - mr ** 2, 0));
  const sb = Math.sqrt(Math.max(total(squares, 2) / count - mb ** 2, 0));
  const corr = sr > 1e-6 && sb > 1e-6 ? (cross / count - mr * mb) / (sr * sb) : 0;
  const gradMean = mean(grad);
  return [mean(sat), Math.log(Math.sqrt(variance(sat)) + 1e-3), Math.log(gradMean + 1e-4),
    Math.log(Math.sqrt(variance(laplacian(luma, n))) + 1e-4),
    Math.log(kthSmallest(grad, k) + 1e-4) - Math.log(gradMean + 1e-4),
    share(luma, (v) => v < 0.1) - share(luma, (v) => v > 0.9), corr, mr - mb,
    Math.log(blueish / count + 1e-3), Math.log(greenish / count + 1e-3)];
}

/** The 28 colour-and-texture values of gate.domain_features. */
export function domainFeatures(rgb, size) {
  const {n, px} = halfResolution(rgb, size, 255);
  const ring = rings(n);
  const {out, sums, squares} = ringFeatures(px, ring, n * n);
  return out.concat(textureFeatures(px, n, sums, squares));
}

/** Mahalanobis distance of an image's features from the training images (Gate.distance). */
export function domainDistance(gate, rgb, size) {
  const f = domainFeatures(rgb, size);
  const m = gate.mean.length;
  const d = f.map((v, i) => v - gate.mean[i]);
  let q = 0;
  for (let i = 0; i < m; i++) {
    let row = 0;
    for (let j = 0; j < m; j++) row += d[j] * gate.precision[i * m + j];
    q += row * d[i];
  }
  return Math.sqrt(Math.max(q, 0));
}

/**
 * Why the image cannot be judged; [] when it can (Gate.reasons). width and
 * height are the upright image's before the crop. outOfDomain, when given,
 * is a model's own `usable` head's verdict: it replaces the distance and is
 * reported beside any failed quality check, as `edgeskin predict` does.
 */
export function gateReasons(gate, width, height, rgb, size, outOfDomain = undefined) {
  if (!gate) return outOfDomain ? ['out_of_domain'] : [];
  if (Math.min(width, height) < gate.min_short_side) return ['too_small'];
  const out = [];
  if (Math.max(width, height) / Math.min(width, height) > gate.max_aspect) out.push('extreme_aspect');
  const s = qualityStats(rgb, size);
  if (s.contrast < gate.min_contrast) out.push('nearly_uniform');
  if (s.overexposed > gate.max_overexposed) out.push('overexposed');
  if (s.underexposed > gate.max_underexposed) out.push('underexposed');
  if (s.sharpness < gate.min_sharpness && !out.includes('nearly_uniform')) out.push('too_blurred');
  // As Classifier._reasons: a model's own head speaks beside the quality checks;
  // the pixel distance, a weaker judge, only when nothing else is wrong.
  if (outOfDomain !== undefined) {
    if (outOfDomain) out.push('out_of_domain');
  } else if (out.length === 0 && domainDistance(gate, rgb, size) > gate.max_distance) {
    out.push('out_of_domain');
  }
  return out;
}

/** The sentence shown instead of a risk level (app.cannot_judge). */
export function cannotJudge(reasons) {
  return 'Cannot judge this photo: ' + reasons.map((r) => REASON_TEXT[r] || r).join('; ') + '. Retake it.';
}
