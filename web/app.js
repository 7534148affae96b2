// The page: take or choose a photo, read it as `edgeskin predict` would, show
// the answer. Everything runs here; nothing is sent anywhere.

import {decodeFile, pixelsOf, toModelInput, toImageData} from './preprocess.js';
import {readModelInfo} from './modelzip.js';
import {gateReasons, cannotJudge} from './gate.js';
import {createClassifier, classify, decide, label, diagnosisLine, warmUp, DISCLAIMER} from './classify.js';

const $ = (id) => document.getElementById(id);
const state = {model: null, classifier: null, modelName: '', threshold: 0.5, point: '', last: null, stream: null, count: 0};
const KNOWN_POINTS = ['screening', 'balanced', 'specific'];

function setStatus(text, kind = '') {
  $('status').textContent = text;
  $('status').className = kind;
}

async function loadModel(bytes, name) {
  const model = readModelInfo(bytes, name);
  const classifier = await createClassifier(bytes);
  warmUp(classifier, model.size);
  if (state.classifier) state.classifier.close();
  Object.assign(state, {model, classifier, modelName: name});
  const points = model.operatingPoints;
  choosePoint(model.defaultPoint in points ? model.defaultPoint : Object.keys(points)[0] || '');
  renderPoints();
  $('model-name').textContent = `Model: ${name}. Operating points: ` +
    (Object.entries(points).map(([k, t]) => `${k} ${t.toFixed(3)}`).join(', ') || 'none (threshold 0.5)');
}

function choosePoint(name) {
  state.point = name;
  if (name && name in state.model.operatingPoints) state.threshold = state.model.operatingPoints[name];
  $('threshold').value = String(state.threshold);
  $('threshold-value').textContent = state.threshold.toFixed(3);
  render();
}

function renderPoints() {
  const box = $('points');
  box.querySelectorAll('label').forEach((el) => el.remove());
  const names = Object.keys(state.model.operatingPoints);
  names.sort((a, b) => (KNOWN_POINTS.indexOf(a) + 1 || 99) - (KNOWN_POINTS.indexOf(b) + 1 || 99));
  for (const name of [...names, 'custom']) {
    const item = document.createElement('label');
    item.innerHTML = `<input type="radio" name="point" value="${name}"> ${name}`;
    const input = item.querySelector('input');
    input.checked = name === (state.point || 'custom');
    input.disabled = name === 'custom';
    input.addEventListener('change', () => choosePoint(name));
    box.append(item);
  }
}

/** Decode, crop and resize, run the model and the gate; then show the answer. */
async function analyse(getPixels) {
  const started = performance.now();
  try {
    const img = await getPixels();
    const size = state.model.size;
    const decoded = performance.now();
    const rgb = toModelInput(img, size);
    const resized = performance.now();
    const scores = classify(state.classifier, rgb, size, state.model.diagnoses);
    const classified = performance.now();
    const reasons = gateReasons(state.model.gate, img.width, img.height, rgb, size, scores.outOfDomain);
    const end = performance.now();
    // Where the time goes, for scripts/web_bench.py: decode, crop + resize, model, gate.
    const steps = [decoded - started, resized - decoded, classified - resized, end - classified];
    state.last = {img, rgb, size, scores, reasons, ms: end - started, steps};
  } catch (err) {
    state.last = {error: err.message};
  }
  state.count += 1; // tests wait on it: a new answer, not a re-render of the old one
  render();
}

function showPreview(rgb, size) {
  const canvas = $('preview');
  canvas.width = canvas.height = size;
  canvas.getContext('2d').putImageData(toImageData(rgb, size), 0, 0);
}

function renderAnswer(result, last) {
  const p = last.scores.malignant_probability;
  const level = decide(p, state.threshold, state.model.operatingPoints.specific ?? state.threshold);
  $('level').textContent = level;
  result.dataset.level = level;
  result.dataset.label = label(p, state.threshold);
  result.dataset.probability = String(p);
  result.className = level.split(' ')[0];
  const point = state.point && state.point !== 'custom' ? ` (${state.point})` : '';
  $('probability').textContent = `malignant_probability ${p.toFixed(3)} at threshold ${state.threshold.toFixed(3)}${point}`;
  const top = last.scores.diagnosis;
  $('detail').textContent = top ? diagnosisLine(top) : '';
  if (top) result.dataset.diagnosis = top.map(([dx, q]) => `${dx}:${q}`).join(' ');
}

function renderUnusable(result, last) {
  // No probability for an image the model cannot judge: it would read as an answer.
  $('level').textContent = 'Cannot judge this photo';
  $('probability').textContent = 'No risk level is given for it.';
  // gate.cannot_judge's sentence, the words the Streamlit app and `predict` use.
  $('detail').textContent = cannotJudge(last.reasons) +
    ' Hold the camera steady, the lesion centred and in focus, evenly lit.';
  Object.assign(result.dataset, {label: 'unusable', level: 'unusable', reasons: last.reasons.join(' ')});
  result.className = 'unusable';
}

function render() {
  const last = state.last;
  const result = $('result');
  if (!last || !state.model) return;
  $('intro').hidden = true;
  result.hidden = false;
  for (const key of Object.keys(result.dataset)) delete result.dataset[key];
  result.dataset.count = String(state.count);
  $('disclaimer').textContent = DISCLAIMER;
  $('preview').hidden = Boolean(last.error);
  if (last.error) {
    $('level').textContent = 'No answer';
    $('probability').textContent = '';
    $('detail').textContent = last.error;
    Object.assign(result.dataset, {label: 'error', level: 'error'});
    result.className = 'error';
    return;
  }
  showPreview(last.rgb, last.size);
  result.dataset.threshold = String(state.threshold);
  result.dataset.ms = last.ms.toFixed(1);
  result.dataset.steps = last.steps.map((t) => t.toFixed(1)).join(' ');
  if (last.reasons.length) renderUnusable(result, last);
  else renderAnswer(result, last);
  result.scrollIntoView({block: 'nearest'});
}

async function openCamera() {
  try {
    state.stream = await navigator.mediaDevices.getUserMedia(
      {video: {facingMode: 'environment', width: {ideal: 1920}, height: {ideal: 1080}}, audio: false});
  } catch (err) {
    state.last = {error: `The camera is not available (${err.name || err.message}). Choose a photo instead.`};
    render();
    return;
  }
  const video = $('video');
  video.srcObject = state.stream;
  await video.play();
  $('settings').open = false;
  toggleCamera(true);
  window.scrollTo(0, 0); // the whole viewfinder in sight, Capture under the thumb
}

function toggleCamera(on) {
  $('camera').hidden = !on;
  $('intro').hidden = on || Boolean(state.last);
  $('result').hidden = on || !state.last;
  for (const id of ['open-camera', 'choose']) $(id).hidden = on;
  for (const id of ['capture', 'close-camera']) $(id).hidden = !on;
}

function closeCamera() {
  if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
  state.stream = null;
  $('video').srcObject = null;
  toggleCamera(false);
}

function capture() {
  const video = $('video');
  const img = pixelsOf(video, video.videoWidth, video.videoHeight);
  closeCamera();
  return analyse(async () => img);
}

async function useModelFile(file) {
  setStatus(`Loading ${file.name}…`);
  try {
    await loadModel(new Uint8Array(await file.arrayBuffer()), file.name);
    setStatus(`Using ${file.name}.`, 'ok');
    // The photo on screen is read again by the new model, not left with the old one's answer.
    if (state.last && state.last.img) await analyse(async () => state.last.img);
  } catch (err) {
    setStatus(`Cannot use ${file.name}: ${err.message}. Still using ${state.modelName}.`, 'error');
  }
}

function wireControls() {
  $('photo').addEventListener('change', (e) => {
    const file = e.target.files[0];
    e.target.value = ''; // the same photo chosen again must run again
    if (file) analyse(() => decodeFile(file));
  });
  $('open-camera').addEventListener('click', openCamera);
  $('close-camera').addEventListener('click', closeCamera);
  $('capture').addEventListener('click', capture);
  $('threshold').addEventListener('input', (e) => {
    state.threshold = Number(e.target.value);
    state.point = 'custom';
    $('threshold-value').textContent = state.threshold.toFixed(3);
    $('points').querySelectorAll('input').forEach((i) => { i.checked = i.value === 'custom'; });
    render();
  });
  $('model-file').addEventListener('change', (e) => {
    const file = e.target.files[0];
    e.target.value = '';
    if (file) useModelFile(file);
  });
}

function setReady() {
  $('open-camera').disabled = !(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  $('choose').removeAttribute('aria-disabled');
  setStatus('Ready. Nothing you choose leaves this device.', 'ok');
  document.body.dataset.state = 'ready';
}

async function start() {
  if ('serviceWorker' in navigator) navigator.serviceWorker.register('sw.js').catch(() => {});
  wireControls();
  try {
    const response = await fetch('model.tflite');
    if (!response.ok) throw new Error(`model.tflite: HTTP ${response.status}`);
    await loadModel(new Uint8Array(await response.arrayBuffer()), 'the shipped model');
    setReady();
  } catch (err) {
    setStatus(`Could not load the model: ${err.message}`, 'error');
    document.body.dataset.state = 'error';
  }
}

start();
