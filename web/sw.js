// Offline: every file of the site is cached on the first visit and served
// from the cache afterwards, the model and the wasm included. The file list
// and the version are written in by edgeskin.web.build, so a rebuilt site
// (a new model, new code) replaces the old cache instead of mixing with it.

const VERSION = 'dev';
const FILES = [/* filled in by edgeskin.web.build */];
const CACHE = `edgeskin-${VERSION}`;

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(FILES)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  const stale = (key) => key.startsWith('edgeskin-') && key !== CACHE;
  event.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter(stale).map((key) => caches.delete(key))))
    .then(() => self.clients.claim()));
});

self.addEventListener('fetch', (event) => {
  if (event.request.method !== 'GET') return;
  event.respondWith(caches.open(CACHE)
    .then((cache) => cache.match(event.request, {ignoreSearch: true}))
    .then((hit) => hit || fetch(event.request)));
});
