// Fleet overview: counts, every device with status, last seen and latest values; search and sort;
// staff and owners add devices here (the credential is shown once).
import { api, getAll, offers } from '../api.js';
import { h, replace } from '../dom.js';
import { formatNumber, t } from '../i18n.js';
import { credentialPanel, deviceStatus, errorText, lastSeen, latestValues, statusBadge, valueList } from './common.js';

const STATUSES = ['online', 'offline', 'never_seen', 'disabled'];
let state = { query: '', sort: 'name' };

export async function renderFleet(ctx) {
  const counts = h('div', { class: 'counts', role: 'group', 'aria-label': t('fleet_counts') },
    ['total', ...STATUSES].map((key) => h('div', { class: `count count-${key}` },
      h('span', { class: 'count-n', 'data-count': key, text: '—' }),
      h('span', { class: 'count-label', text: t(key === 'total' ? 'devices' : `status_${key}`) }))));
  const search = h('input', { type: 'search', value: state.query, placeholder: t('search_placeholder'),
    'aria-label': t('search') });
  const sort = h('select', { 'aria-label': t('sort_by') },
    ['name', 'status', 'last_seen'].map((key) => h('option', { value: key, selected: state.sort === key, text: t(`sort_${key}`) })));
  const slot = h('div', { class: 'slot' });
  const tbody = h('tbody', {}, [0, 1, 2].map(() => h('tr', { class: 'placeholder' }, h('td', { colspan: 4, text: '\u00a0' }))));
  const message = h('div', { class: 'message' });
  const table = h('table', { class: 'devices' },
    h('caption', { class: 'sr-only', text: t('nav_fleet') }),
    h('thead', {}, h('tr', {}, ['col_device', 'col_status', 'col_last_seen', 'col_latest'].map((k) => h('th', { scope: 'col', text: t(k) })))),
    tbody);
  const addButton = ctx.can('owner', 'staff')
    ? h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'primary', 'data-action': 'add-device', text: t('add_device'), onclick: () => showCreate() }),
      offers('POST', '/api/devices/bulk')
        ? h('button', { type: 'button', 'data-action': 'add-devices-csv', text: t('add_devices_csv'), onclick: () => showBulk() }) : null)
    : null;

  replace(ctx.main,
    h('div', { class: 'page-head' }, h('h1', { text: t('nav_fleet') }), addButton),
    counts, slot,
    h('div', { class: 'toolbar' }, search, sort),
    message,
    h('div', { class: 'table-wrap' }, table));

  let devices = [];
  let latest = new Map();

  function draw() {
    const q = state.query.trim().toLowerCase();
    const rows = devices.filter((d) => !q || [d.name, d.display_name, d.type, d.location, ...(d.tags || [])]
      .some((v) => v && String(v).toLowerCase().includes(q)));
    const order = { online: 0, offline: 1, never_seen: 2, disabled: 3 };
    // A refresh redraws the rows: keep the keyboard's place on the same device.
    const focused = tbody.contains(document.activeElement) ? document.activeElement.closest('tr')?.dataset.device : null;
    rows.sort((a, b) => {
      if (state.sort === 'status') return order[deviceStatus(a)] - order[deviceStatus(b)] || a.name.localeCompare(b.name);
      if (state.sort === 'last_seen') return String(b.last_seen || '').localeCompare(String(a.last_seen || '')) || a.name.localeCompare(b.name);
      return a.name.localeCompare(b.name);
    });
    replace(tbody, rows.map((d) => h('tr', { 'data-device': d.name },
      h('td', { 'data-label': t('col_device') },
        h('a', { href: `#/device/${d.id}`, text: d.name }),
        d.display_name ? h('div', { class: 'muted small', text: d.display_name }) : null),
      h('td', { 'data-label': t('col_status') }, statusBadge(deviceStatus(d))),
      h('td', { 'data-label': t('col_last_seen') }, lastSeen(d.last_seen)),
      h('td', { 'data-label': t('col_latest'), class: 'latest' }, valueList(latest.has(d.id) ? latest.get(d.id) : null)))));
    if (focused) tbody.querySelector(`tr[data-device="${CSS.escape(focused)}"] a`)?.focus();
    if (!rows.length) replace(tbody, h('tr', {}, h('td', { colspan: 4, class: 'muted', text: devices.length ? t('no_match') : t('no_devices') })));
  }

  async function drawCounts() {
    let values = null;
    if (offers('GET', '/api/fleet')) {
      try {
        const fleet = await api('GET', '/api/fleet');
        values = fleet.counts || fleet;
      } catch { values = null; }
    }
    if (!values) {
      values = Object.fromEntries(STATUSES.map((s) => [s, devices.filter((d) => deviceStatus(d) === s).length]));
    }
    const total = values.total ?? STATUSES.reduce((sum, s) => sum + (values[s] || 0), 0);
    for (const el of counts.querySelectorAll('[data-count]')) {
      const key = el.dataset.count;
      el.textContent = formatNumber(key === 'total' ? total : (values[key] || 0));
    }
  }

  async function refresh() {
    try {
      devices = await getAll('/api/devices');
      replace(message);
    } catch (error) {
      replace(message, errorText(error));
      return;
    }
    await drawCounts();
    draw();
    const results = await Promise.allSettled(devices.map(async (d) => [d.id, await latestValues(d.id)]));
    latest = new Map(results.filter((r) => r.status === 'fulfilled').map((r) => r.value));
    draw();
  }

  function showCreate() {
    const error = h('p', { class: 'error', role: 'alert' });
    const input = (name, required = false, pattern = null) => h('label', {}, h('span', { text: t(`device_${name}`) }),
      h('input', { name, required, pattern, autocomplete: 'off' }));
    const form = h('form', { class: 'card form', 'aria-label': t('add_device') },
      h('h2', { text: t('add_device') }),
      input('name', true, '[A-Za-z0-9][A-Za-z0-9_\\-]{0,63}'), input('display_name'), input('type'), input('location'), input('tags'),
      h('p', { class: 'muted small', text: t('device_tags_hint') }),
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary', text: t('create') }),
        h('button', { type: 'button', text: t('cancel'), onclick: () => replace(slot) })),
      error);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const data = new FormData(form);
      const body = { name: String(data.get('name')).trim() };
      for (const key of ['display_name', 'type', 'location']) {
        const value = String(data.get(key) || '').trim();
        if (value) body[key] = value;
      }
      const tags = String(data.get('tags') || '').split(',').map((s) => s.trim()).filter(Boolean);
      if (tags.length) body.tags = tags;
      try {
        const created = await api('POST', '/api/devices', body);
        replace(slot, credentialPanel(ctx, created.credential, () => replace(slot)));
        slot.querySelector('h2').focus?.();
        refresh();
      } catch (e) {
        error.textContent = e.message || t('error_generic');
      }
    });
    replace(slot, form);
    form.querySelector('input').focus();
  }

  // Commissioning many machines at once: a CSV in, every credential out once, as a table and as a
  // CSV file the reader saves themselves (made in memory, never kept by the page).
  function showBulk() {
    const error = h('p', { class: 'error', role: 'alert' });
    const text = h('textarea', { name: 'csv', rows: 6, required: true, spellcheck: 'false',
      placeholder: 'name,display_name,type,location,tags\npress-02,Press 2,press,Hall A,line1;hydraulic' });
    const file = h('input', { type: 'file', accept: '.csv,text/csv', 'aria-label': t('csv_file') });
    file.addEventListener('change', async () => { if (file.files[0]) text.value = await file.files[0].text(); });
    const form = h('form', { class: 'card form', 'aria-label': t('add_devices_csv') },
      h('h2', { text: t('add_devices_csv') }),
      h('p', { class: 'muted small', text: t('csv_hint') }), file,
      h('label', {}, h('span', { text: t('csv_text') }), text),
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary', text: t('create') }),
        h('button', { type: 'button', text: t('cancel'), onclick: () => replace(slot) })),
      error);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        const created = await api('POST', '/api/devices/bulk', text.value, 'text/csv');
        replace(slot, bulkCredentials(created.items || []));
        refresh();
      } catch (e) { error.textContent = e.message || t('error_generic'); }
    });
    replace(slot, form);
    text.focus();
  }

  function bulkCredentials(items) {
    const quote = (v) => `"${String(v).replace(/"/g, '""')}"`;
    const lines = [['name', 'username', 'client_id', 'password', 'host', 'port', 'topic'].join(',')].concat(items.map((d) => [
      d.name, d.credential.username, d.credential.client_id, d.credential.password, d.credential.broker_host,
      d.credential.broker_port, `${d.credential.topic_prefix}/telemetry`].map(quote).join(',')));
    const download = h('button', { type: 'button', text: t('csv_download') });
    download.addEventListener('click', () => {
      const url = URL.createObjectURL(new Blob([`${lines.join('\r\n')}\r\n`], { type: 'text/csv' }));
      const link = h('a', { href: url, download: 'device-credentials.csv' });
      link.click();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
    });
    const panel = h('section', { class: 'card secret', role: 'region', 'aria-label': t('cred_title') },
      h('h2', { text: t('bulk_created', { n: formatNumber(items.length) }) }),
      h('p', { class: 'warning', text: t('shown_once') }),
      h('div', { class: 'table-wrap' }, h('table', { class: 'data' },
        h('thead', {}, h('tr', {}, [t('col_device'), t('cred_username'), t('cred_password')].map((k) => h('th', { scope: 'col', text: k })))),
        h('tbody', {}, items.map((d) => h('tr', { 'data-created': d.name },
          h('td', { 'data-label': t('col_device'), text: d.name }),
          h('td', { 'data-label': t('cred_username') }, h('code', { text: d.credential.username })),
          h('td', { 'data-label': t('cred_password') }, h('code', { class: 'copyable', text: d.credential.password }))))))),
      h('div', { class: 'actions' }, download,
        h('button', { type: 'button', class: 'primary', text: t('done_saved'), onclick: () => replace(slot) })));
    return panel;
  }

  search.addEventListener('input', () => { state = { ...state, query: search.value }; draw(); });
  sort.addEventListener('change', () => { state = { ...state, sort: sort.value }; draw(); });
  await refresh();
  return { refresh };
}
