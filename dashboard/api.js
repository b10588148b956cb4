// The API client. Where the tokens live, and why:
// - the access token (short-lived) only in this module's memory: no storage API exposes it, and it
//   is gone when the tab closes;
// - the refresh token in sessionStorage, so a reload in the same tab keeps the user signed in.
//   sessionStorage is per origin and per tab: scripts of other origins cannot read it, other tabs
//   do not share it, and it is cleared with the tab. Only a script running in this origin could
//   read it, and the page allows none but its own files (CSP script-src 'self', no inline script,
//   all data rendered as text). Refresh tokens rotate on every use and logout revokes them.
// - A one-time device credential or generated password is never passed here to any storage.

import { has, t } from './i18n.js';

const REFRESH_KEY = 'mqtt-saas.refresh';
const SIGN_IN_STATE_KEY = 'mqtt-saas.sign-in-state';
let accessToken = null;
let accessExpiresAt = 0;
let refreshing = null;
let onSignedOut = () => {};

// A problem's message in the reader's language where the page knows its type; otherwise the API's
// own fixed detail (English), which always says what to do.
function problemMessage(status, problem) {
  const kind = problem && typeof problem.type === 'string' ? problem.type.split(':').pop() : null;
  const key = kind ? `problem_${kind.replace(/-/g, '_')}` : null;
  if (key && has(key)) return t(key);
  return (problem && (problem.detail || problem.title)) || `HTTP ${status}`;
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problemMessage(status, problem));
    this.status = status;
    this.problem = problem || null;
  }
}

export function setSignedOutHandler(handler) {
  onSignedOut = handler;
}

function keep(tokens) {
  accessToken = tokens.access_token;
  accessExpiresAt = Date.now() + (tokens.expires_in - 15) * 1000;
  sessionStorage.setItem(REFRESH_KEY, tokens.refresh_token);
}

function forget() {
  accessToken = null;
  accessExpiresAt = 0;
  sessionStorage.removeItem(REFRESH_KEY);
}

async function send(method, path, body, token, contentType = 'application/json') {
  const headers = { Accept: 'application/json, application/problem+json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = contentType;
    payload = contentType === 'application/json' ? JSON.stringify(body) : body;
  }
  const response = await fetch(path, { method, headers, body: payload, credentials: 'omit', cache: 'no-store' });
  const type = response.headers.get('content-type') || '';
  const data = response.status === 204 ? null : type.includes('json') ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, typeof data === 'object' ? data : null);
  return data;
}

export async function login(tenant, email, password) {
  keep(await send('POST', '/api/auth/login', { tenant, email, password }));
}

// Sends the reader to the identity provider to sign in. The random state, kept in this tab's
// sessionStorage, is what makes the provider's answer (a token in the URL) acceptable: a link
// carrying somebody else's token, which this tab never asked for, has no state it knows.
export function startExternalSignIn(signInUrl) {
  const bytes = crypto.getRandomValues(new Uint8Array(32));
  const state = btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  sessionStorage.setItem(SIGN_IN_STATE_KEY, state);
  const back = `${location.origin}${location.pathname}`;
  let url;
  if (signInUrl.includes('{state}')) {
    // A provider that does not echo OAuth's state (Supabase's /authorize) gets it inside its redirect URL.
    url = signInUrl.replaceAll('{state}', encodeURIComponent(state));
  } else {
    const target = new URL(signInUrl);
    target.searchParams.set('state', state);
    if (!target.searchParams.has('redirect_uri') && !target.searchParams.has('redirect_to')) {
      target.searchParams.set('redirect_uri', back);
    }
    url = target.toString();
  }
  location.assign(url);
}

// The provider's answer to a sign-in this tab started: taken only when its state is the one this tab
// stored, which is spent either way (one answer per sign-in). False: not an answer to ours.
export function takeExternalAnswer(token, state) {
  const expected = sessionStorage.getItem(SIGN_IN_STATE_KEY);
  sessionStorage.removeItem(SIGN_IN_STATE_KEY);
  if (!expected || !state || state !== expected || !token) return false;
  useExternalToken(token);
  return true;
}

// An external identity provider's access token (pasted, or the answer to startExternalSignIn): kept
// in memory only and used until it expires; there is no refresh token, so the reader signs in again then.
export function useExternalToken(token) {
  const parts = String(token).trim().split('.');
  if (parts.length !== 3) throw new ApiError(401, null);
  let claims;
  try {
    claims = JSON.parse(atob(parts[1].replace(/-/g, '+').replace(/_/g, '/')));
  } catch {
    throw new ApiError(401, null);
  }
  sessionStorage.removeItem(REFRESH_KEY);
  accessToken = parts.join('.');
  accessExpiresAt = typeof claims.exp === 'number' ? claims.exp * 1000 : Date.now() + 300_000;
}

// One refresh at a time: refresh tokens rotate, and presenting a used one twice looks like theft
// to the API (it would revoke the family).
function refresh() {
  if (!refreshing) {
    const token = sessionStorage.getItem(REFRESH_KEY);
    refreshing = (async () => {
      if (!token) throw new ApiError(401, null);
      try {
        keep(await send('POST', '/api/auth/refresh', { refresh_token: token }));
      } catch (error) {
        if (error instanceof ApiError && error.status === 401) forget();
        throw error;
      }
    })().finally(() => { refreshing = null; });
  }
  return refreshing;
}

export async function resume() {
  if (!sessionStorage.getItem(REFRESH_KEY)) return false;
  try {
    await refresh();
    return true;
  } catch {
    return false;
  }
}

export async function logout() {
  const token = sessionStorage.getItem(REFRESH_KEY);
  forget();
  if (token) {
    try { await send('POST', '/api/auth/logout', { refresh_token: token }); } catch { /* signed out anyway */ }
  }
}

export async function api(method, path, body, contentType) {
  if (!accessToken || Date.now() > accessExpiresAt) {
    try { await refresh(); } catch { signedOut(); throw new ApiError(401, null); }
  }
  try {
    return await send(method, path, body, accessToken, contentType);
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) throw error;
    try { await refresh(); } catch { signedOut(); throw error; }
    return send(method, path, body, accessToken, contentType);
  }
}

function signedOut() {
  forget();
  onSignedOut();
}

// Which operations this API offers (config.json lists them, from the API's OpenAPI document): a
// view whose endpoint is not deployed says so instead of failing.
let operations = null;
export function setOperations(list) {
  operations = new Set(list || []);
}

export function offers(method, path) {
  return operations !== null && operations.has(`${method} ${path}`);
}

export async function getAll(path, limit = 200) {
  const items = [];
  let cursor = null;
  for (let page = 0; page < 50; page += 1) {
    const sep = path.includes('?') ? '&' : '?';
    const url = `${path}${sep}limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ''}`;
    const data = await api('GET', url);
    items.push(...(data.items || []));
    cursor = data.next_cursor;
    if (!cursor) break;
  }
  return items;
}
