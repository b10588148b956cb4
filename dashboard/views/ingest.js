// Ingest monitor (staff, owners): messages per minute, dead letters by reason with their payloads
// as text, drain runs with lag; usage against the plan's quotas; the audit log (owners).
// Endpoints that are not deployed say so. Unknown shapes are shown as key/value tables: every
// value, a payload included, goes into the page as text.
import { api, offers } from '../api.js';
import { h, replace } from '../dom.js';
import { formatDate, formatNumber, t } from '../i18n.js';
import { errorText, unavailable } from './common.js';

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d/;

function scalar(value, key = '') {
  if (value === null || value === undefined) return '—';
  if (typeof value === 'number') return /percent|pct/.test(key) ? `${formatNumber(value, { maximumFractionDigits: 1 })} %` : formatNumber(value);
  if (typeof value === 'string' && ISO.test(value)) return formatDate(value);
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

function isPayloadKey(key) {
  return /payload|body|raw|message/.test(key);
}

function cell(key, value) {
  if (isPayloadKey(key) && value !== null && value !== undefined) {
    return h('td', { 'data-label': key }, h('pre', { class: 'payload', text: typeof value === 'string' ? value : JSON.stringify(value, null, 1) }));
  }
  return h('td', { 'data-label': key, text: scalar(value, key) });
}

export function dataView(value) {
  if (Array.isArray(value)) {
    if (!value.length) return h('p', { class: 'muted', text: t('none') });
    if (value.every((v) => v && typeof v === 'object' && !Array.isArray(v))) {
      const keys = [...new Set(value.flatMap((v) => Object.keys(v)))];
      return h('div', { class: 'table-wrap' }, h('table', { class: 'data' },
        h('thead', {}, h('tr', {}, keys.map((k) => h('th', { scope: 'col', text: k })))),
        h('tbody', {}, value.map((row) => h('tr', {}, keys.map((k) => cell(k, row[k])))))));
    }
    return h('ul', {}, value.map((v) => h('li', { text: scalar(v) })));
  }
  if (value && typeof value === 'object') {
    return h('dl', { class: 'kv' }, Object.entries(value).map(([k, v]) => [
      h('dt', { text: k }),
      h('dd', {}, v && typeof v === 'object' ? dataView(v) : (isPayloadKey(k) ? h('pre', { class: 'payload', text: String(v) }) : scalar(v, k))),
    ]));
  }
  return h('span', { text: scalar(value) });
}

export async function renderIngest(ctx) {
  const parts = [
    ['ingest_monitor', 'GET', '/api/admin/ingest', ['owner', 'staff']],
    ['usage', 'GET', '/api/usage', ['owner', 'staff', 'viewer']],
    ['audit', 'GET', '/api/audit', ['owner']],
  ].filter(([, , , roles]) => ctx.can(...roles));
  const boxes = parts.map(([key]) => h('div', { class: 'data-box', 'data-part': key }));
  replace(ctx.main, h('div', { class: 'page-head' }, h('h1', { text: t('nav_ingest') })),
    parts.map(([key], i) => h('section', { class: 'card' }, h('h2', { text: t(key) }), boxes[i])));

  async function refresh() {
    await Promise.all(parts.map(async ([key, method, path], i) => {
      if (!offers(method, path)) { replace(boxes[i], unavailable(t(key))); return; }
      try { replace(boxes[i], dataView(await api(method, path))); } catch (e) { replace(boxes[i], errorText(e)); }
    }));
  }
  await refresh();
  return { refresh };
}
