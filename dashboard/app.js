// The dashboard's entry: sign-in, the hash router, the header and the auto-refresh at the drain's
// cadence. Views live in views/*.js; each renders into <main> and may return {refresh, dispose}.
import { ApiError, api, logout, offers, resume, setOperations, setSignedOutHandler, takeExternalAnswer } from './api.js';
import { h, replace } from './dom.js';
import { pickLocale, setLocale, t } from './i18n.js';
import { renderLogin } from './views/login.js';
import { renderFleet } from './views/fleet.js';
import { renderDevice } from './views/device.js';
import { renderUsers } from './views/users.js';
import { renderIngest } from './views/ingest.js';
import { alertsNavLabel, offersAlerts, refreshAlertBadge } from './views/alerts_nav.js';

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const who = document.getElementById('who');
const signOutButton = document.getElementById('signout');
const langSelect = document.getElementById('lang');

const ctx = {
  me: null,
  config: { refresh_s: 60, ca_url: null, system_ca: false, external_sign_in: false, broker_host: null, broker_port: 8883, operations: [] },
  main,
  can(...roles) { return this.me !== null && roles.includes(this.me.role); },
  go(hash) { if (location.hash === hash) route(); else location.hash = hash; },
};

let current = null;
let timer = null;
let routeSeq = 0;

function navLinks() {
  const links = [['#/fleet', 'nav_fleet']];
  if (offersAlerts()) links.push(['#/alerts', 'nav_alerts']);
  if (offers('GET', '/api/profiles')) links.push(['#/profiles', 'nav_profiles']);
  if (ctx.can('owner', 'staff')) links.push(['#/ingest', 'nav_ingest']);
  if (ctx.can('owner')) links.push(['#/users', 'nav_users']);
  const here = location.hash.split('/').slice(0, 2).join('/');
  replace(nav, links.map(([href, key]) => h('a', { href, 'aria-current': here === href ? 'page' : null },
    key === 'nav_alerts' ? alertsNavLabel() : h('span', { class: 'nav-label', text: t(key) }))));
  refreshBadge();
}

// The open-alerts count beside "Alerts", whatever view is shown, at the same cadence as the view.
function refreshBadge() {
  if (ctx.me !== null && offersAlerts()) refreshAlertBadge().catch(() => { /* next tick */ });
}

function showHeader() {
  const signedIn = ctx.me !== null;
  nav.hidden = !signedIn;
  signOutButton.hidden = !signedIn;
  who.textContent = signedIn ? `${ctx.me.email} · ${t(`role_${ctx.me.role}`)}` : '';
  if (signedIn) navLinks();
}

async function route() {
  const seq = ++routeSeq;
  if (current && current.dispose) current.dispose();
  current = null;
  if (ctx.me === null) {
    showHeader();
    renderLogin(ctx, signedIn);
    return;
  }
  showHeader();
  const [, view, id] = location.hash.split('/');
  // Each route renders into a box of its own: a view still loading when the reader moves on (a
  // slow device page, say) finishes into a detached box, and never becomes the refreshed view.
  const box = h('div', { class: 'view' });
  replace(main, box);
  const viewCtx = Object.create(ctx, { main: { value: box } });
  let shown = null;
  try {
    if (view === 'device' && id) shown = await renderDevice(viewCtx, id);
    else if (view === 'users' && ctx.can('owner')) shown = await renderUsers(viewCtx);
    else if (view === 'ingest' && ctx.can('owner', 'staff')) shown = await renderIngest(viewCtx);
    else if (view === 'profiles' && offers('GET', '/api/profiles')) {
      const { renderProfiles } = await import('./views/profiles.js');
      shown = await renderProfiles(viewCtx, id);
    }
    else if (view === 'alerts' && offersAlerts()) {
      // Loaded on first visit: the page every other view opens with stays as light as it was.
      const { renderAlerts } = await import('./views/alerts.js');
      shown = await renderAlerts(viewCtx, id === 'rules' ? 'rules' : 'events');
    }
    else shown = await renderFleet(viewCtx);
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    replace(box, h('p', { class: 'error', role: 'alert', text: error.message || t('error_generic') }));
  }
  if (seq !== routeSeq) {
    if (shown && shown.dispose) shown.dispose();
    return;
  }
  current = shown;
}

async function signedIn() {
  ctx.me = await api('GET', '/api/me');
  if (!location.hash || location.hash === '#/login') location.hash = '#/fleet';
  else route();
}

function signedOutView() {
  ctx.me = null;
  route();
}

function scheduleRefresh() {
  clearInterval(timer);
  timer = setInterval(() => {
    if (document.visibilityState !== 'visible') return;
    if (current && current.refresh) {
      current.refresh().catch(() => { /* the view shows its own error; try again next tick */ });
    }
    refreshBadge();
  }, Math.max(1, ctx.config.refresh_s) * 1000);
}

async function start() {
  await setLocale(pickLocale());
  langSelect.value = document.documentElement.lang;
  langSelect.addEventListener('change', async () => {
    await setLocale(langSelect.value, true);
    route();
  });
  signOutButton.addEventListener('click', async () => {
    await logout();
    signedOutView();
  });
  setSignedOutHandler(signedOutView);
  window.addEventListener('hashchange', route);
  // The skip link focuses <main> itself: following its #main would be a route change.
  document.querySelector('.skip').addEventListener('click', (event) => { event.preventDefault(); main.focus(); });
  try {
    const response = await fetch('config.json', { cache: 'no-cache' });
    if (response.ok) ctx.config = { ...ctx.config, ...(await response.json()) };
  } catch { /* defaults */ }
  scheduleRefresh();
  setOperations(ctx.config.operations);
  // A token in the URL (#access_token=...) leaves the address bar and history at once, and signs in
  // only where a provider's sign-in is configured and as the answer to the one this tab started (its
  // state, from the fragment or, for providers that return it in the redirect URL, the query).
  const fragment = new URLSearchParams(location.hash.slice(1));
  const handed = fragment.get('access_token');
  if (handed || new URLSearchParams(location.search).has('state')) {
    const state = fragment.get('state') || new URLSearchParams(location.search).get('state');
    history.replaceState(null, '', `${location.pathname}#/fleet`);
    if (ctx.config.external_sign_in && ctx.config.external_sign_in_url) {
      try { if (takeExternalAnswer(handed, state)) { await signedIn(); return; } } catch { /* the sign-in form */ }
    }
  }
  if (await resume()) {
    try { await signedIn(); return; } catch { /* fall through to the sign-in form */ }
  }
  route();
}

start();
