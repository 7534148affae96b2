// A model's metadata, read from its own bytes. An edgeskin .tflite carries a
// ZIP archive appended after the flatbuffer (TFLite metadata's associated
// files, stored, not deflated): labels.txt, diagnosis_labels.txt,
// score_calibration.txt and edgeskin.json. MediaPipe reads the labels and the
// calibration but exposes neither the operating points nor the gate, so the
// page reads edgeskin.json here.

const EOCD = 0x06054b50; // end of central directory
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;

export class ModelFileError extends Error {}

function findEnd(view) {
  // The end record is 22 bytes plus a comment of at most 65535.
  const stop = Math.max(0, view.byteLength - 22 - 65535);
  for (let i = view.byteLength - 22; i >= stop; i--) {
    if (view.getUint32(i, true) === EOCD) return i;
  }
  return -1;
}

/** The stored files of the ZIP at the end of bytes, as {name: Uint8Array}; {} when there is none. */
export function readStoredZip(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const end = findEnd(view);
  if (end < 0) return {};
  const count = view.getUint16(end + 10, true);
  const size = view.getUint32(end + 12, true);
  const offset = view.getUint32(end + 16, true);
  // Offsets may count from the start of the archive rather than of the file:
  // the directory sits right before the end record either way.
  const shift = end - size - offset;
  const files = {};
  let p = offset + shift;
  for (let n = 0; n < count; n++) {
    if (view.getUint32(p, true) !== CENTRAL) throw new ModelFileError('the model metadata archive is damaged');
    const method = view.getUint16(p + 10, true);
    const stored = view.getUint32(p + 20, true);
    const nameLength = view.getUint16(p + 28, true);
    const extra = view.getUint16(p + 30, true);
    const comment = view.getUint16(p + 32, true);
    const local = view.getUint32(p + 42, true) + shift;
    const name = new TextDecoder().decode(bytes.subarray(p + 46, p + 46 + nameLength));
    if (view.getUint32(local, true) !== LOCAL) throw new ModelFileError(`the model metadata entry ${name} is damaged`);
    const start = local + 30 + view.getUint16(local + 26, true) + view.getUint16(local + 28, true);
    if (method === 0) files[name] = bytes.subarray(start, start + stored);
    p += 46 + nameLength + extra + comment;
  }
  return files;
}

function lines(file) {
  return file ? new TextDecoder().decode(file).split('\n').map((s) => s.trim()).filter(Boolean) : [];
}

/** TFLite flatbuffers carry the identifier "TFL3" at byte 4. */
export function isTflite(bytes) {
  return bytes.byteLength > 8 && String.fromCharCode(...bytes.subarray(4, 8)) === 'TFL3';
}

/**
 * What the page needs from a model file: {labels, diagnoses, operatingPoints
 * (name -> threshold), defaultPoint, gate, info}. Throws ModelFileError for
 * a file that is not an edgeskin model.
 */
export function readModelInfo(bytes, name = 'the model') {
  if (!isTflite(bytes)) throw new ModelFileError(`${name} is not a TFLite model (.tflite)`);
  const files = readStoredZip(bytes);
  if (!files['edgeskin.json']) throw new ModelFileError(`${name} carries no edgeskin metadata (edgeskin.json)`);
  let info;
  try {
    info = JSON.parse(new TextDecoder().decode(files['edgeskin.json']));
  } catch (err) {
    throw new ModelFileError(`${name}: its edgeskin.json is not valid JSON`);
  }
  const operatingPoints = {};
  for (const [key, point] of Object.entries(info.operating_points || {})) {
    operatingPoints[key] = Number(point.threshold);
  }
  return {
    info,
    labels: info.labels || lines(files['labels.txt']),
    diagnoses: info.diagnoses || lines(files['diagnosis_labels.txt']),
    operatingPoints,
    defaultPoint: info.default_operating_point || 'screening',
    gate: info.gate || null,
    size: (info.input && info.input.size) || 224,
  };
}
