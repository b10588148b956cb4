// Ingest monitor (staff, owners): messages per minute, dead letters by reason with their payloads
// as text, drain runs with lag; usage against the plan's quotas; the audit log (owners).
// Endpoints that are not deployed say so. Unknown shapes are shown as key/value tables: every
// value, a payload included, goes into the page as text.
import { api, getAll, offers } from '../api.js';
import { h, replace } from '../dom.js';
import { currentLocale, formatDate, formatNumber, t } from '../i18n.js';
import { errorText, loadUPlot, unavailable } from './common.js';

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d/;

function scalar(value, key = '') {
  if (value === null || value === undefined) return '—';
  if (typeof value === 'number') return /percent|pct/.test(key) ? `${formatNumber(value, { maximumFractionDigits: 1 })} %` : formatNumber(value);
  if (typeof value === 'string' && ISO.test(value)) return formatDate(value);
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}

function isPayloadKey(key) {
  return /^(payload|payload_preview|body|raw_payload)$/.test(key);
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

function table(columns, rows, rowAttrs = () => ({})) {
  if (!rows.length) return h('p', { class: 'muted', text: t('none') });
  return h('div', { class: 'table-wrap' }, h('table', { class: 'data' },
    h('thead', {}, h('tr', {}, columns.map(([label]) => h('th', { scope: 'col', text: label })))),
    h('tbody', {}, rows.map((row) => h('tr', rowAttrs(row), columns.map(([label, render]) => {
      const content = render(row);
      return h('td', { 'data-label': label }, content instanceof Node ? content : String(content ?? '—'));
    }))))));
}

// The ingest overview of GET /api/admin/ingest. A dead letter's payload is shown from the API's
// payload_preview (control characters already escaped) as text inside <pre>: markup stays markup.
function ingestView(data) {
  const perMinute = data.messages_per_minute || [];
  const total = (key) => perMinute.reduce((sum, m) => sum + (m[key] || 0), 0);
  const dead = (data.dead_letters && data.dead_letters.items) || [];
  return [
    h('div', { class: 'counts' },
      [['messages', 'ingest_messages'], ['readings', 'ingest_readings'], ['dead_lettered', 'ingest_dead']].map(([key, label]) =>
        h('div', { class: 'count' }, h('span', { class: 'count-n', text: formatNumber(total(key)) }),
          h('span', { class: 'count-label', text: t(label, { minutes: data.minutes }) })))),
    h('h3', { text: t('ingest_per_minute') }),
    h('div', { class: 'chart chart-small', 'data-chart': 'per-minute' }),
    table([[t('ingest_minute'), (m) => formatDate(m.minute, { timeStyle: 'short' })], [t('ingest_messages_col'), (m) => formatNumber(m.messages)],
      [t('ingest_readings_col'), (m) => formatNumber(m.readings)], [t('ingest_dead_col'), (m) => formatNumber(m.dead_lettered)]], perMinute.slice(-15).reverse()),
    h('h3', { text: t('ingest_reasons') }),
    table([[t('ingest_reason'), (r) => h('code', { text: r.reason })], [t('ingest_count'), (r) => formatNumber(r.count)],
      [t('ingest_last'), (r) => formatDate(r.last_at)]], data.dead_letters_by_reason || []),
    h('h3', { text: t('ingest_dead_letters') }),
    table([[t('ingest_received'), (d) => formatDate(d.received_at)], [t('col_device'), (d) => d.device_name || '—'],
      [t('ingest_reason'), (d) => h('code', { text: d.reason })], [t('ingest_detail'), (d) => d.detail],
      [t('ingest_payload'), (d) => h('pre', { class: 'payload', text: d.payload_preview + (d.payload_truncated ? ' …' : '') })]],
    dead, (d) => ({ 'data-dead-letter': d.id })),
    h('h3', { text: t('ingest_runs') }),
    table([[t('ingest_started'), (r) => formatDate(r.started_at)], [t('col_status'), (r) => r.status],
      [t('ingest_duration'), (r) => (r.duration_ms == null ? '—' : `${formatNumber(r.duration_ms, { maximumFractionDigits: 0 })} ms`)],
      [t('ingest_lag'), (r) => (r.max_lag_ms == null ? '—' : `${formatNumber(r.max_lag_ms / 1000, { maximumFractionDigits: 1 })} s`)]],
    (data.recent_runs || []).slice(0, 10)),
    h('h3', { text: t('ingest_quiet', { minutes: data.quiet_minutes }) }),
    table([[t('col_device'), (d) => h('a', { href: `#/device/${d.id}`, text: d.name })], [t('col_last_seen'), (d) => formatDate(d.last_seen)],
      [t('ingest_dead_col'), (d) => formatNumber(d.dead_letters)], [t('ingest_reason'), (d) => d.last_reason || '—']], data.quiet_devices || []),
  ];
}

const QUOTAS = ['devices', 'users', 'alert_rules', 'profiles', 'messages_this_hour'];

// GET /api/usage: each quota as a bar against the plan's limit (none: unlimited).
function usageView(data) {
  const quotas = data.quotas || {};
  return [
    h('p', {}, t('usage_plan'), ': ', h('strong', { text: data.plan }),
      data.raw_retention_days != null ? ` · ${t('usage_retention', { days: formatNumber(data.raw_retention_days) })}` : ''),
    h('div', { class: 'quotas' }, QUOTAS.filter((key) => quotas[key]).map((key) => {
      const q = quotas[key];
      const percent = q.percent == null ? 0 : Math.min(100, q.percent);
      return h('div', { class: `quota${q.percent >= 90 ? ' quota-high' : ''}`, 'data-quota': key },
        h('div', { class: 'quota-head' }, h('span', { text: t(`quota_${key}`) }),
          h('span', { class: 'quota-n', text: q.limit == null ? `${formatNumber(q.used)} / ∞`
            : `${formatNumber(q.used)} / ${formatNumber(q.limit)} (${formatNumber(q.percent ?? 0, { maximumFractionDigits: 1 })} %)` })),
        h('progress', { max: 100, value: percent, 'aria-label': t(`quota_${key}`) }));
    })),
    data.messages_over_quota_this_hour
      ? h('p', { class: 'warning', text: t('usage_over_quota', { n: formatNumber(data.messages_over_quota_this_hour) }) }) : null,
  ];
}

// GET /api/audit: newest first; actors shown by email where the user still exists.
function auditView(data, emails) {
  return table([[t('audit_at'), (e) => formatDate(e.at)],
    [t('audit_actor'), (e) => (e.actor_user_id ? emails.get(e.actor_user_id) || e.actor_user_id.slice(0, 8) : t('audit_system'))],
    [t('audit_action'), (e) => h('code', { text: e.action })],
    [t('audit_target'), (e) => [e.target_type, e.target_id].filter(Boolean).join(' ') || '—'],
    [t('audit_source'), (e) => e.source_address || '—'],
    [t('ingest_detail'), (e) => (e.detail && Object.keys(e.detail).length ? JSON.stringify(e.detail) : '—')]], data.items || []);
}

// Messages and dead letters per minute over the window, minutes without traffic as zeros. The
// chart is made once and moved into each redraw, which only swaps its data.
function perMinuteData(data) {
  const byMinute = new Map((data.messages_per_minute || []).map((m) => [Math.floor(new Date(m.minute).getTime() / 60000), m]));
  const now = Math.floor(Date.now() / 60000);
  const xs = []; const messages = []; const dead = [];
  for (let minute = now - (data.minutes || 60) + 1; minute <= now; minute += 1) {
    const m = byMinute.get(minute);
    xs.push(minute * 60); messages.push(m ? m.messages : 0); dead.push(m ? m.dead_lettered : 0);
  }
  return [xs, messages, dead];
}

// Draws into the box's holder: moves `chart` there with the new points, or returns a new chart.
async function drawPerMinute(box, data, chart) {
  const holder = box.querySelector('[data-chart=per-minute]');
  if (!holder) return chart;
  const points = perMinuteData(data);
  if (chart) {
    holder.append(chart.root);
    chart.setData(points);
    return chart;
  }
  const uPlot = await loadUPlot();
  const fmt = new Intl.DateTimeFormat(currentLocale(), { hour: 'numeric', minute: '2-digit' });
  return new uPlot({
    width: Math.max(260, holder.clientWidth), height: 160,
    series: [{ value: (u, v) => (v == null ? '—' : fmt.format(new Date(v * 1000))) },
      { label: t('ingest_messages_col'), stroke: '#1d4ed8', width: 2, fill: 'rgba(37,99,235,0.10)', points: { show: false } },
      { label: t('ingest_dead_col'), stroke: '#b91c1c', width: 2, points: { show: false } }],
    axes: [{ space: 90, values: (u, splits) => splits.map((v) => fmt.format(new Date(v * 1000))) }, { size: 50 }],
    scales: { y: { range: (u, min, max) => [0, Math.max(1, max)] } },
  }, points, holder);
}

export async function renderIngest(ctx) {
  const parts = [
    ['ingest_monitor', 'GET', '/api/admin/ingest', ['owner', 'staff']],
    ['usage', 'GET', '/api/usage', ['owner', 'staff', 'viewer']],
    ['audit', 'GET', '/api/audit?limit=20', ['owner']],
  ].filter(([, , , roles]) => ctx.can(...roles));
  const boxes = parts.map(([key]) => h('div', { class: 'data-box', 'data-part': key }));
  replace(ctx.main, h('div', { class: 'page-head' }, h('h1', { text: t('nav_ingest') })),
    parts.map(([key], i) => h('section', { class: 'card' }, h('h2', { text: t(key) }), boxes[i])));

  // This view's own chart: a view left while still loading is disposed after the next one has
  // drawn, and must destroy its chart, not the one on screen.
  let perMinuteChart = null;
  async function refresh() {
    await Promise.all(parts.map(async ([key, method, path], i) => {
      if (!offers(method, path.split('?')[0])) { replace(boxes[i], unavailable(t(key))); return; }
      try {
        const data = await api(method, path);
        if (key === 'ingest_monitor') {
          if (perMinuteChart) perMinuteChart.root.remove();
          replace(boxes[i], ingestView(data));
          perMinuteChart = await drawPerMinute(boxes[i], data, perMinuteChart);
        }
        else if (key === 'usage') replace(boxes[i], usageView(data));
        else if (key === 'audit') {
          const users = offers('GET', '/api/users') ? await getAll('/api/users').catch(() => []) : [];
          replace(boxes[i], auditView(data, new Map(users.map((u) => [u.id, u.email]))));
        } else replace(boxes[i], dataView(data));
      } catch (e) { replace(boxes[i], errorText(e)); }
    }));
  }
  await refresh();
  return { refresh, dispose() { if (perMinuteChart) perMinuteChart.destroy(); perMinuteChart = null; } };
}
