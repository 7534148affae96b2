// The pixels the model reads, exactly as `edgeskin predict` makes them:
// EXIF orientation applied, alpha on white, the largest centred square,
// then Pillow's bilinear resize (edgeskin/imageio.py: open_rgb, center_square,
// to_model_input). Canvas drawImage smooths differently (up to 10 levels off),
// so the resize is a port of Pillow's libImaging/Resample.c, fixed-point
// rounding included; the tests hold it to Pillow pixel for pixel.

// Pillow keeps 8-bit coefficients in 32-bit integers: 32 - 8 - 2 bits.
const PRECISION_BITS = 22;
const ONE = 1 << PRECISION_BITS;
const HALF = 1 << (PRECISION_BITS - 1);

export class ImageReadError extends Error {}

/** Decode an image file (Blob) into upright RGBA pixels on white: {width, height, data}. */
export async function decodeFile(file) {
  let bitmap;
  try {
    // No colour-space conversion: Pillow ignores embedded ICC profiles too.
    bitmap = await createImageBitmap(file, {imageOrientation: 'from-image', colorSpaceConversion: 'none'});
  } catch (err) {
    throw new ImageReadError(`${file.name || 'this file'} is not an image this browser can read (JPG or PNG)`);
  }
  try {
    return pixelsOf(bitmap, bitmap.width, bitmap.height);
  } finally {
    bitmap.close();
  }
}

/** RGBA pixels of anything drawImage takes (ImageBitmap, video frame), composited on white. */
export function pixelsOf(source, width, height) {
  if (!width || !height) throw new ImageReadError('the image has no pixels');
  const canvas = new OffscreenCanvas(width, height);
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  // Transparent pixels have no colour of their own: show them on white, as Pillow's open_rgb does.
  ctx.fillStyle = '#fff';
  ctx.fillRect(0, 0, width, height);
  ctx.drawImage(source, 0, 0, width, height);
  const {data} = ctx.getImageData(0, 0, width, height);
  return {width, height, data};
}

/** The largest centred square, as Pillow's center_square crops it: {left, top, side}. */
export function centerSquare(width, height) {
  const side = Math.min(width, height);
  return {left: Math.floor((width - side) / 2), top: Math.floor((height - side) / 2), side};
}

/** Bilinear (triangle) filter, support 1, as in Resample.c. */
function triangle(x) {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

/**
 * Pillow's precompute_coeffs + normalize_coeffs_8bpc for a box [0, inSize):
 * per output pixel, the first input index, the count, and integer weights.
 * When downscaling the triangle is widened by the scale (antialiasing).
 */
export function coefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1);
  const support = filterscale; // triangle support (1) times filterscale
  const ksize = Math.ceil(support) * 2 + 1;
  const starts = new Int32Array(outSize);
  const counts = new Int32Array(outSize);
  const weights = new Int32Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1 / filterscale; // Pillow multiplies by the reciprocal; dividing can differ in the last bit
    const xmin = Math.max(Math.trunc(center - support + 0.5), 0);
    const n = Math.min(Math.trunc(center + support + 0.5), inSize) - xmin;
    const w = new Float64Array(n);
    let total = 0;
    for (let x = 0; x < n; x++) {
      w[x] = triangle((x + xmin - center + 0.5) * ss);
      total += w[x];
    }
    for (let x = 0; x < n; x++) {
      const k = total !== 0 ? w[x] / total : w[x];
      weights[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * ONE) : Math.trunc(0.5 + k * ONE);
    }
    starts[xx] = xmin;
    counts[xx] = n;
  }
  return {ksize, starts, counts, weights};
}

function clip8(sum) {
  if (sum >= ONE * 256) return 255;
  if (sum <= 0) return 0;
  return Math.floor(sum / ONE);
}

/**
 * Resize the (left, top, side) square of RGBA pixels to size x size RGB,
 * horizontal pass first with the intermediate rounded to 8 bits, as Pillow does.
 */
export function resizeSquare(img, crop, size) {
  const {left, top, side} = crop;
  const h = coefficients(side, size);
  const v = coefficients(side, size);
  // Only the rows the vertical pass reads: Pillow's ybox_first .. ybox_last.
  const first = v.starts[0];
  const last = v.starts[size - 1] + v.counts[size - 1];
  const temp = new Uint8Array((last - first) * size * 3);
  for (let y = first; y < last; y++) {
    const row = ((top + y) * img.width + left) * 4;
    const outRow = (y - first) * size * 3;
    for (let xx = 0; xx < size; xx++) {
      const k0 = xx * h.ksize;
      const n = h.counts[xx];
      let r = HALF, g = HALF, b = HALF;
      for (let x = 0, i = row + h.starts[xx] * 4; x < n; x++, i += 4) {
        const k = h.weights[k0 + x];
        r += img.data[i] * k;
        g += img.data[i + 1] * k;
        b += img.data[i + 2] * k;
      }
      temp[outRow + xx * 3] = clip8(r);
      temp[outRow + xx * 3 + 1] = clip8(g);
      temp[outRow + xx * 3 + 2] = clip8(b);
    }
  }
  const out = new Uint8Array(size * size * 3);
  for (let yy = 0; yy < size; yy++) {
    const k0 = yy * v.ksize;
    const ymin = v.starts[yy] - first;
    for (let i = 0; i < size * 3; i++) {
      let sum = HALF;
      for (let y = 0; y < v.counts[yy]; y++) sum += temp[(ymin + y) * size * 3 + i] * v.weights[k0 + y];
      out[yy * size * 3 + i] = clip8(sum);
    }
  }
  return out;
}

/** Crop without resizing: the square is already the model's size. */
function cropSquare(img, crop) {
  const {left, top, side} = crop;
  const out = new Uint8Array(side * side * 3);
  const data = img.data;
  for (let y = 0, j = 0; y < side; y++) {
    for (let x = 0, i = ((top + y) * img.width + left) * 4; x < side; x++, i += 4, j += 3) {
      out[j] = data[i];
      out[j + 1] = data[i + 1];
      out[j + 2] = data[i + 2];
    }
  }
  return out;
}

/** The model input of decoded RGBA pixels: a size x size RGB Uint8Array, as to_model_input makes it. */
export function toModelInput(img, size) {
  const crop = centerSquare(img.width, img.height);
  return crop.side === size ? cropSquare(img, crop) : resizeSquare(img, crop, size);
}

/** RGB model input as ImageData, what MediaPipe is handed (it would stretch anything not square). */
export function toImageData(rgb, size) {
  const rgba = new Uint8ClampedArray(size * size * 4);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    rgba[j] = rgb[i];
    rgba[j + 1] = rgb[i + 1];
    rgba[j + 2] = rgb[i + 2];
    rgba[j + 3] = 255;
  }
  return new ImageData(rgba, size, size);
}
