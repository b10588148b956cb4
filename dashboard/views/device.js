// Device page: details, latest values, a chart per numeric metric over 1 h / 24 h / 7 d / 30 d
// (server-side buckets: min/max band and average), its profile and what to type into the device,
// recent commands; staff and owners send commands, pick the profile, try it on the device's dead
// letters and replay them (views/device_profile.js), rotate the credential (shown once), disable,
// enable and delete.
import { api, offers } from '../api.js';
import { h, replace } from '../dom.js';
import { currentLocale, formatDate, formatValue, t } from '../i18n.js';
import { credentialPanel, deviceStatus, errorText, lastSeen, latestValues, loadUPlot, section, statusBadge, unavailable } from './common.js';

const RANGES = { '1h': 3600, '24h': 86400, '7d': 7 * 86400, '30d': 30 * 86400 };
let range = '24h';

function seriesPoints(data) {
  const rows = Array.isArray(data) ? data : (data.points || data.buckets || data.items || []);
  const xs = []; const mins = []; const avgs = []; const maxs = [];
  for (const row of rows) {
    const ts = row.ts ?? row.bucket ?? row.time ?? row.t;
    const avg = row.avg ?? row.value ?? null;
    xs.push(new Date(ts).getTime() / 1000);
    avgs.push(avg);
    mins.push(row.min ?? avg);
    maxs.push(row.max ?? avg);
  }
  return [xs, mins, avgs, maxs];
}

function chartOptions(metric, unit, width) {
  const fmt = new Intl.DateTimeFormat(currentLocale(), range === '1h' || range === '24h'
    ? { hour: 'numeric', minute: '2-digit' } : { month: 'short', day: 'numeric' });
  const num = new Intl.NumberFormat(currentLocale(), { maximumFractionDigits: 2 });
  return {
    width, height: 220,
    title: unit ? `${metric} (${unit})` : metric,
    legend: { show: true },
    series: [
      { value: (u, v) => (v == null ? '—' : formatDate(v * 1000)) },
      { label: t('chart_min'), stroke: 'rgba(37,99,235,0.35)', width: 1, value: (u, v) => (v == null ? '—' : num.format(v)) },
      { label: t('chart_avg'), stroke: '#1d4ed8', width: 2, value: (u, v) => (v == null ? '—' : num.format(v)) },
      { label: t('chart_max'), stroke: 'rgba(37,99,235,0.35)', width: 1, value: (u, v) => (v == null ? '—' : num.format(v)) },
    ],
    bands: [{ series: [3, 1], fill: 'rgba(37,99,235,0.12)' }],
    axes: [
      // Repeated labels (ticks closer than the format's unit) are left blank.
      { space: 90, values: (u, splits) => splits.map((v) => fmt.format(new Date(v * 1000))).map((label, i, all) => (i && all[i - 1] === label ? '' : label)) },
      { values: (u, splits) => splits.map((v) => num.format(v)), size: 60 },
    ],
  };
}

export async function renderDevice(ctx, id) {
  const device = await api('GET', `/api/devices/${encodeURIComponent(id)}`);
  const canEdit = ctx.can('owner', 'staff');
  const head = h('div', { class: 'page-head' });
  const slot = h('div', { class: 'slot' });
  const values = h('div', { class: 'latest-grid' });
  const charts = h('div', { class: 'charts' });
  const commands = h('div', { class: 'commands' });
  const commandList = h('ul', { class: 'command-list' });
  const historyList = h('ul', { class: 'status-history' });
  const hasHistory = offers('GET', '/api/devices/{device_id}/status-history');
  let commandFormShown = false;
  const message = h('div', { class: 'message' });
  const rangeButtons = h('div', { class: 'ranges', role: 'group', 'aria-label': t('range') },
    Object.keys(RANGES).map((key) => h('button', { type: 'button', 'aria-pressed': key === range ? 'true' : 'false',
      'data-range': key, text: t(`range_${key}`), onclick: () => { range = key; markRange(); drawCharts(true); } })));
  let plots = [];
  let latest = null;

  function markRange() {
    for (const b of rangeButtons.querySelectorAll('button')) b.setAttribute('aria-pressed', b.dataset.range === range ? 'true' : 'false');
  }

  function drawHead(d) {
    const actions = canEdit ? h('div', { class: 'actions' },
      h('button', { type: 'button', 'data-action': 'edit', text: t('edit'), onclick: () => edit(d) }),
      h('button', { type: 'button', 'data-action': 'rotate', text: t('rotate'), onclick: () => confirmThen(t('rotate_confirm'), rotate) }),
      d.enabled
        ? h('button', { type: 'button', 'data-action': 'disable', text: t('disable'), onclick: () => setEnabled(false) })
        : h('button', { type: 'button', 'data-action': 'enable', text: t('enable'), onclick: () => setEnabled(true) }),
      h('button', { type: 'button', class: 'danger', 'data-action': 'delete', text: t('delete'), onclick: () => confirmThen(t('delete_confirm', { name: d.name }), remove) }))
      : null;
    replace(head,
      h('div', {}, h('p', {}, h('a', { href: '#/fleet', text: `← ${t('nav_fleet')}` })),
        h('h1', {}, h('span', { text: d.name }), ' ', statusBadge(deviceStatus(d))),
        h('p', { class: 'muted' }, [d.display_name, d.type, d.location].filter(Boolean).join(' · '),
          ' ', t('col_last_seen'), ': ', lastSeen(d.last_seen)),
        d.tags && d.tags.length ? h('ul', { class: 'tags' }, d.tags.map((tag) => h('li', { text: tag }))) : null),
      actions);
  }

  // An inline confirmation instead of window.confirm: keyboard-usable, translatable, no modal dialog.
  function confirmThen(question, action) {
    const box = h('div', { class: 'card confirm', role: 'alertdialog', 'aria-label': question },
      h('p', { text: question }),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'danger', 'data-action': 'confirm', text: t('confirm'), onclick: () => { replace(slot); action(); } }),
        h('button', { type: 'button', text: t('cancel'), onclick: () => replace(slot) })));
    replace(slot, box);
    box.querySelector('button').focus();
  }

  function edit(d) {
    const error = h('p', { class: 'error', role: 'alert' });
    const input = (name, value) => h('label', {}, h('span', { text: t(`device_${name}`) }),
      h('input', { name, value: value ?? '', autocomplete: 'off' }));
    const form = h('form', { class: 'card form', 'aria-label': t('edit') },
      input('display_name', d.display_name), input('type', d.type), input('location', d.location),
      input('tags', (d.tags || []).join(', ')), h('p', { class: 'muted small', text: t('device_tags_hint') }),
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary', text: t('save') }),
        h('button', { type: 'button', text: t('cancel'), onclick: () => replace(slot) })), error);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const body = {};
      for (const key of ['display_name', 'type', 'location']) body[key] = String(data.get(key) || '').trim() || null;
      body.tags = String(data.get('tags') || '').split(',').map((x) => x.trim()).filter(Boolean);
      try {
        const saved = await api('PATCH', `/api/devices/${device.id}`, body);
        Object.assign(device, saved);
        replace(slot);
        drawHead(device);
      } catch (e) { error.textContent = e.message || t('error_generic'); }
    });
    replace(slot, form);
    form.querySelector('input').focus();
  }

  async function rotate() {
    try {
      const result = await api('POST', `/api/devices/${device.id}/credentials/rotate`, { overlap_s: 0 });
      replace(slot, credentialPanel(ctx, result.credential, () => replace(slot)));
      drawHead(result.device);
    } catch (e) { replace(message, errorText(e)); }
  }

  async function setEnabled(enabled) {
    try {
      drawHead(await api('POST', `/api/devices/${device.id}/${enabled ? 'enable' : 'disable'}`));
    } catch (e) { replace(message, errorText(e)); }
  }

  async function remove() {
    try {
      await api('DELETE', `/api/devices/${device.id}`);
      ctx.go('#/fleet');
    } catch (e) { replace(message, errorText(e)); }
  }

  function drawValues() {
    if (latest === null) { replace(values, unavailable(t('latest_values'))); return; }
    if (!latest.length) { replace(values, h('p', { class: 'muted', text: t('no_readings') })); return; }
    replace(values, latest.map((v) => h('div', { class: 'reading', 'data-metric': v.metric },
      h('div', { class: 'metric', text: v.metric }),
      h('div', { class: 'value', text: formatValue(v.value, v.unit) }),
      h('div', { class: 'muted small', text: v.ts ? formatDate(v.ts) : '' }))));
  }

  // Charts are built once per metric set and range; a refresh only swaps their data (setData), so
  // nothing on the page moves when new buckets arrive.
  let chartKey = null;
  const chartBoxes = new Map();
  async function drawCharts(rebuild = false) {
    if (!offers('GET', '/api/devices/{device_id}/series')) { replace(charts, unavailable(t('charts'))); return; }
    const numeric = (latest || []).filter((v) => typeof v.value === 'number');
    if (!numeric.length) { replace(charts, h('p', { class: 'muted', text: t('no_numeric') })); chartKey = null; return; }
    const key = `${range}|${numeric.map((v) => v.metric).join('|')}`;
    if (rebuild || key !== chartKey) {
      for (const p of plots) p.destroy();
      plots = [];
      chartBoxes.clear();
      for (const v of numeric) chartBoxes.set(v.metric, { box: h('div', { class: 'chart', 'data-metric': v.metric }), plot: null });
      replace(charts, [...chartBoxes.values()].map((c) => c.box));
      chartKey = key;
    }
    const to = new Date();
    const from = new Date(to.getTime() - RANGES[range] * 1000);
    await Promise.all(numeric.map(async (v) => {
      const entry = chartBoxes.get(v.metric);
      try {
        const params = new URLSearchParams({ metric: v.metric, from: from.toISOString(), to: to.toISOString(), max_points: '300' });
        const data = await api('GET', `/api/devices/${device.id}/series?${params}`);
        const points = seriesPoints(data);
        if (entry.plot) { entry.plot.setData(points); return; }
        if (!points[0].length) { replace(entry.box, h('p', { class: 'muted', text: `${v.metric}: ${t('no_readings_range')}` })); return; }
        replace(entry.box);
        const uPlot = await loadUPlot();
        entry.plot = new uPlot(chartOptions(v.metric, data.unit ?? v.unit, Math.max(260, entry.box.clientWidth)), points, entry.box);
        plots.push(entry.plot);
      } catch (e) { replace(entry.box, errorText(e)); }
    }));
  }

  async function drawCommands() {
    const canList = offers('GET', '/api/devices/{device_id}/commands');
    const canSend = canEdit && offers('POST', '/api/devices/{device_id}/commands');
    if (!canList && !canSend) { replace(commands, unavailable(t('commands'))); return; }
    if (!commandFormShown) {
      replace(commands, canSend ? buildCommandForm() : null, commandList);
      commandFormShown = true;
    }
    if (!canList) return;
    try {
      const data = await api('GET', `/api/devices/${device.id}/commands?limit=10`);
      const rows = data.items || [];
      replace(commandList, rows.length ? rows.map((c) => h('li', { 'data-command': c.id },
        h('code', { text: c.name }), ' ',
        h('code', { class: 'muted', text: JSON.stringify(c.args || {}) }), ' ',
        h('span', { class: `badge command-${c.status}`, text: t(`command_${c.status}`) }), ' ',
        h('span', { class: 'muted small', text: formatDate(c.created_at) }),
        c.result ? h('span', { class: 'muted small', text: ` · ${c.result}` }) : null))
        : h('li', { class: 'muted', text: t('no_commands') }));
    } catch (e) { replace(commandList, errorText(e)); }
  }

  async function drawHistory() {
    if (!hasHistory) return;
    try {
      const data = await api('GET', `/api/devices/${device.id}/status-history?limit=10`);
      const rows = data.items || [];
      replace(historyList, rows.length ? rows.map((c) => h('li', {},
        statusBadge(c.status), ' ',
        h('span', { class: 'muted small', text: formatDate(c.at) })))
        : h('li', { class: 'muted', text: t('status_never_seen') }));
    } catch (e) { replace(historyList, errorText(e)); }
  }

  function buildCommandForm() {
    const error = h('p', { class: 'error', role: 'alert' });
    const form = h('form', { class: 'inline-form', 'aria-label': t('send_command') },
      h('label', {}, h('span', { text: t('command_name') }),
        h('input', { name: 'name', required: true, autocomplete: 'off', pattern: '[a-z][a-z0-9_]{0,63}', placeholder: 'set_point' })),
      h('label', {}, h('span', { text: t('command_payload') }),
        h('input', { name: 'args', autocomplete: 'off', placeholder: '{"value": 72.5}' })),
      h('button', { type: 'submit', class: 'primary', text: t('send_command') }), error);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      let args;
      try {
        args = data.get('args') ? JSON.parse(String(data.get('args'))) : {};
        if (!args || typeof args !== 'object' || Array.isArray(args)) throw new Error('not an object');
      } catch { error.textContent = t('invalid_json'); return; }
      try {
        await api('POST', `/api/devices/${device.id}/commands`, { name: String(data.get('name')), args });
        form.reset(); error.textContent = '';
      } catch (e) { error.textContent = e.message || t('error_generic'); }
      drawCommands();
    });
    return form;
  }

  drawHead(device);
  // Loaded on the first device page: the fleet, which every visit opens with, does not pay for it.
  const profile = offers('GET', '/api/profiles')
    ? await (await import('./device_profile.js')).profileSections(ctx, device) : { nodes: [], refresh: async () => {} };
  replace(ctx.main, head, slot, message,
    section('latest_values', values),
    h('section', { class: 'card' }, h('div', { class: 'section-head' }, h('h2', { text: t('charts') }), rangeButtons), charts),
    section('status_history', hasHistory ? historyList : unavailable(t('status_history'))),
    profile.nodes,
    section('commands', commands));

  async function refresh() {
    try {
      const fresh = await api('GET', `/api/devices/${device.id}`);
      Object.assign(device, fresh);
      if (!slot.childElementCount) drawHead(device);
      latest = await latestValues(device.id).catch(() => null);
      drawValues();
      await Promise.all([drawCharts(), drawCommands(), drawHistory(), profile.refresh()]);
    } catch (e) { replace(message, errorText(e)); }
  }

  const onResize = () => { for (const p of plots) p.setSize({ width: Math.max(260, p.root.parentElement.clientWidth), height: 220 }); };
  window.addEventListener('resize', onResize);
  latest = await latestValues(device.id).catch(() => null);
  drawValues();
  await Promise.all([drawCharts(), drawCommands(), drawHistory()]);
  return { refresh, dispose() { window.removeEventListener('resize', onResize); for (const p of plots) p.destroy(); } };
}
