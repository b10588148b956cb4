// Alerts: events, open first (then acknowledged, then recently resolved), which staff and owners
// acknowledge or resolve with a comment; rules, listed for every role, created, switched on and off
// and deleted by staff and owners. A rule kind the page does not know (anomaly, later ones) is
// listed by its name with the fields the page understands; the rest is left out, not guessed at.
import { api, getAll, offers } from '../api.js';
import { h, replace } from '../dom.js';
import { formatDate, formatNumber, has, t } from '../i18n.js';
import { errorText, latestValues, problemLines } from './common.js';
import { refreshAlertBadge } from './alerts_nav.js';

const STATES = ['open', 'acknowledged', 'resolved'];
const SEVERITIES = ['critical', 'warning', 'info'];
// Open and acknowledged events are the work to do: a long first page. Resolved ones are history.
const PAGE = { open: 50, acknowledged: 50, resolved: 20 };
const MAX_PAGE = 200;
const WRITERS = ['owner', 'staff'];
const AGGREGATIONS = ['avg', 'min', 'max', 'last', 'count'];
const OPERATORS = ['>', '>=', '<', '<='];
const SCOPES = ['all', 'device', 'tag', 'type'];
// What the API answers with but does not take back (PUT has extra=forbid).
const READ_ONLY = ['id', 'created_by', 'created_at', 'updated_at', 'warnings'];

let filters = { state: '', severity: '' };

export function severityBadge(severity) {
  return h('span', { class: `badge sev sev-${severity}`, text: has(`severity_${severity}`) ? t(`severity_${severity}`) : severity });
}

function stateBadge(state) {
  return h('span', { class: `badge state state-${state}`, text: has(`state_${state}`) ? t(`state_${state}`) : state });
}

function kindName(kind) {
  return has(`kind_${kind}`) ? t(`kind_${kind}`) : kind;
}

function duration(seconds) {
  if (seconds == null) return null;
  if (seconds < 60) return t('dur_s', { n: formatNumber(seconds) });
  if (seconds < 3600 || seconds % 3600) return t('dur_min', { n: formatNumber(seconds / 60, { maximumFractionDigits: 1 }) });
  return t('dur_h', { n: formatNumber(seconds / 3600) });
}

function tabs(which) {
  return h('nav', { class: 'tabs', 'aria-label': t('nav_alerts') },
    h('a', { href: '#/alerts', 'aria-current': which === 'events' ? 'page' : null, text: t('alerts_events') }),
    h('a', { href: '#/alerts/rules', 'aria-current': which === 'rules' ? 'page' : null, text: t('alerts_rules') }));
}

function head(which, ...extra) {
  return h('div', { class: 'page-head' }, h('div', {}, h('h1', { text: t('nav_alerts') }), tabs(which)), extra);
}

export async function renderAlerts(ctx, which) {
  return which === 'rules' ? renderRules(ctx) : renderEvents(ctx);
}

// An auto-refresh redraws only what changed, and a redraw keeps the keyboard's place: the same
// button of the same event or rule, or the item itself when that button is gone.
function redrawKeepingFocus(container, attr, redraw) {
  const active = container.contains(document.activeElement) ? document.activeElement : null;
  const key = active?.closest(`[${attr}]`)?.getAttribute(attr);
  const action = active?.dataset.action;
  redraw();
  if (!key) return;
  const again = container.querySelector(`[${attr}="${CSS.escape(key)}"]`);
  ((action && again?.querySelector(`[data-action="${CSS.escape(action)}"]`)) || again)?.focus();
}

// -- events ------------------------------------------------------------------------------------

async function renderEvents(ctx) {
  const canWrite = ctx.can(...WRITERS) && offers('POST', '/api/alerts/events/{event_id}/acknowledge');
  const stateSelect = h('select', { name: 'state', 'aria-label': t('filter_state') },
    h('option', { value: '', text: t('filter_all_states') }),
    STATES.map((s) => h('option', { value: s, selected: filters.state === s, text: t(`state_${s}`) })));
  const severitySelect = h('select', { name: 'severity', 'aria-label': t('filter_severity') },
    h('option', { value: '', text: t('filter_all_severities') }),
    SEVERITIES.map((s) => h('option', { value: s, selected: filters.severity === s, text: t(`severity_${s}`) })));
  const message = h('div', { class: 'message' });
  const list = h('div', { class: 'event-sections', 'aria-busy': 'true' },
    h('p', { class: 'muted placeholder-line', text: t('loading') }));
  replace(ctx.main, head('events'),
    h('div', { class: 'toolbar', role: 'group', 'aria-label': t('filters') }, stateSelect, severitySelect),
    message, list);

  let rules = new Map();
  let stores = {};
  // An open comment form is the reader's work in progress: auto-refresh leaves the list alone then.
  let editing = false;
  // A filter change starts a new generation: an answer for the old filters arriving late is dropped.
  let generation = 0;
  let drawn = null;

  function reset() {
    generation += 1;
    stores = Object.fromEntries((filters.state ? [filters.state] : STATES).map((s) => [s, { items: [], cursor: null }]));
  }

  async function load(state, more = false) {
    const store = stores[state];
    const at = generation;
    const size = more ? PAGE[state] : Math.min(MAX_PAGE, Math.max(PAGE[state], store.items.length));
    const params = new URLSearchParams({ state, limit: String(size) });
    if (filters.severity) params.set('severity', filters.severity);
    if (more && store.cursor) params.set('cursor', store.cursor);
    const data = await api('GET', `/api/alerts/events?${params}`);
    if (at !== generation) return;
    store.items = more ? store.items.concat(data.items || []) : (data.items || []);
    store.cursor = data.next_cursor || null;
  }

  async function loadRules() {
    if (!offers('GET', '/api/alerts/rules')) return;
    try { rules = new Map((await getAll('/api/alerts/rules')).map((r) => [r.id, r])); } catch { /* names come with events */ }
  }

  function eventValue(event) {
    if (event.value == null) return null;
    const rule = rules.get(event.rule_id);
    if (event.rule_kind === 'no_data') return t('event_silent', { duration: duration(event.value) });
    return rule && rule.metric ? `${rule.metric} = ${formatNumber(event.value)}` : formatNumber(event.value);
  }

  function eventItem(event) {
    const slot = h('div', { class: 'event-form-slot' });
    const value = eventValue(event);
    const actions = canWrite && event.state !== 'resolved' ? h('div', { class: 'actions' },
      event.state === 'open' ? h('button', { type: 'button', 'data-action': 'acknowledge', text: t('acknowledge'),
        onclick: () => changeForm(event, 'acknowledge', slot) }) : null,
      h('button', { type: 'button', 'data-action': 'resolve', text: t('resolve'),
        onclick: () => changeForm(event, 'resolve', slot) })) : null;
    return h('li', { class: `event sev-${event.severity}`, 'data-event': event.id, 'data-state': event.state, tabindex: -1 },
      h('div', { class: 'event-head' }, severityBadge(event.severity), ' ',
        h('strong', { class: 'rule-name', text: event.rule_name }), ' ', stateBadge(event.state)),
      h('dl', { class: 'event-meta' },
        h('div', {}, h('dt', { text: t('col_device') }), h('dd', {}, h('a', { href: `#/device/${event.device_id}`, text: event.device_name }))),
        value ? h('div', {}, h('dt', { text: t('event_value') }), h('dd', { class: 'value', text: value })) : null,
        h('div', {}, h('dt', { text: t('event_opened') }),
          h('dd', {}, h('time', { datetime: event.opened_at, text: formatDate(event.opened_at) }))),
        event.acknowledged_at ? h('div', {}, h('dt', { text: t('event_acknowledged') }),
          h('dd', {}, h('time', { datetime: event.acknowledged_at, text: formatDate(event.acknowledged_at) }),
            event.acknowledged_by && ctx.me && event.acknowledged_by === String(ctx.me.id) ? ` (${t('by_you')})` : '')) : null,
        event.resolved_at ? h('div', {}, h('dt', { text: t('event_resolved') }),
          h('dd', {}, h('time', { datetime: event.resolved_at, text: formatDate(event.resolved_at) }),
            event.resolved_by ? (ctx.me && event.resolved_by === String(ctx.me.id) ? ` (${t('by_you')})` : '')
              : ` (${t('resolved_automatically')})`)) : null,
        event.comment ? h('div', {}, h('dt', { text: t('event_comment') }), h('dd', { class: 'comment', text: event.comment })) : null),
      actions, slot);
  }

  // Acknowledge or resolve with an optional comment, in the event's own card (no window.prompt).
  function changeForm(event, action, slot) {
    for (const other of list.querySelectorAll('.event-form-slot')) if (other !== slot) replace(other);
    const error = h('p', { class: 'error', role: 'alert' });
    const comment = h('textarea', { name: 'comment', rows: 2, maxlength: 1000 });
    const cancel = () => { replace(slot); editing = false; slot.closest('li')?.querySelector(`[data-action=${action}]`)?.focus(); };
    const form = h('form', { class: 'event-change', 'aria-label': t(action === 'acknowledge' ? 'acknowledge_event' : 'resolve_event') },
      h('label', {}, h('span', { text: t('comment_optional') }), comment),
      h('div', { class: 'actions' },
        h('button', { type: 'submit', class: 'primary', 'data-action': `confirm-${action}`, text: t(action) }),
        h('button', { type: 'button', text: t('cancel'), onclick: cancel })),
      error);
    form.addEventListener('keydown', (e) => { if (e.key === 'Escape') cancel(); });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const text = comment.value.trim();
      try {
        await api('POST', `/api/alerts/events/${encodeURIComponent(event.id)}/${action}`, text ? { comment: text } : undefined);
      } catch (err) { error.textContent = err.message || t('error_generic'); return; }
      editing = false;
      await refresh(true);
      list.querySelector(`li[data-event="${CSS.escape(event.id)}"]`)?.focus();
      refreshAlertBadge().catch(() => {});
    });
    replace(slot, form);
    editing = true;
    comment.focus();
  }

  function draw() {
    const states = Object.keys(stores);
    replace(list, states.map((state) => {
      const store = stores[state];
      const n = store.cursor ? `${formatNumber(store.items.length)}+` : formatNumber(store.items.length);
      return h('section', { class: 'card events', 'data-section': state, 'aria-label': t(`events_${state}`) },
        h('h2', {}, t(`events_${state}`), ' ', h('span', { class: 'muted', text: `(${n})` })),
        store.items.length
          ? h('ul', { class: 'event-list' }, store.items.map(eventItem))
          : h('p', { class: 'muted', text: t(`no_events_${state}`) }),
        store.cursor ? h('button', { type: 'button', 'data-action': 'more', text: t('more'),
          onclick: async (e) => {
            e.target.disabled = true;
            const shown = stores[state].items.length;
            try {
              await load(state, true);
              draw();
              // The keyboard goes on from the first event the button brought.
              list.querySelectorAll(`[data-section=${state}] li[data-event]`)[shown]?.focus();
            }
            catch (err) { replace(message, errorText(err)); e.target.disabled = false; }
          } }) : null);
    }));
    list.removeAttribute('aria-busy');
  }

  async function refresh(force = false) {
    if (editing && !force) return;
    const started = generation;
    try {
      await Promise.all([loadRules(), ...Object.keys(stores).map((s) => load(s))]);
      replace(message);
    } catch (e) { replace(message, errorText(e)); return; }
    if ((editing && !force) || started !== generation) return;
    const snapshot = JSON.stringify([stores, [...rules.values()]]);
    if (!force && snapshot === drawn) return;
    drawn = snapshot;
    redrawKeepingFocus(list, 'data-event', draw);
  }

  for (const [select, key] of [[stateSelect, 'state'], [severitySelect, 'severity']]) {
    select.addEventListener('change', () => { filters = { ...filters, [key]: select.value }; editing = false; reset(); refresh(true); });
  }
  reset();
  await refresh(true);
  return { refresh: () => refresh() };
}

// -- rules -------------------------------------------------------------------------------------

function scopeText(rule, devices) {
  if (rule.scope === 'device') {
    const device = devices.get(rule.device_id);
    return device ? h('a', { href: `#/device/${rule.device_id}`, text: device.name }) : `#${rule.device_id}`;
  }
  if (rule.scope === 'tag') return t('scope_tag_is', { tag: rule.tag });
  if (rule.scope === 'type') return t('scope_type_is', { type: rule.device_type });
  return has(`scope_${rule.scope}`) ? t(`scope_${rule.scope}`) : String(rule.scope);
}

// One line a reader can check: "avg(temp, 5 min) > 80 · clears at 70 · 3 in a row".
function conditionText(rule) {
  if (rule.kind === 'threshold') {
    const parts = [`${rule.aggregation}(${rule.metric}, ${duration(rule.window_s)}) ${rule.operator} ${formatNumber(rule.value)}`];
    if (rule.clear_value != null && rule.clear_value !== rule.value) parts.push(t('rule_clears_at', { value: formatNumber(rule.clear_value) }));
    if (rule.consecutive > 1) parts.push(t('rule_in_a_row', { n: formatNumber(rule.consecutive) }));
    return parts.join(' · ');
  }
  if (rule.kind === 'no_data') return t('rule_no_data_for', { duration: duration(rule.no_data_minutes * 60) });
  if (rule.kind === 'anomaly' && rule.metric && rule.sensitivity != null && rule.window_s) {
    return t('rule_anomaly_summary', { metric: rule.metric, sigma: formatNumber(rule.sensitivity), window: duration(rule.window_s) });
  }
  return [rule.metric, rule.window_s ? duration(rule.window_s) : null].filter(Boolean).join(' · ') || '—';
}

// The rule as PUT takes it: everything the API answered except its own fields and the empty ones.
function ruleBody(rule, changes) {
  const body = { ...rule, ...changes };
  for (const key of READ_ONLY) delete body[key];
  for (const [key, value] of Object.entries(body)) if (value === null) delete body[key];
  return body;
}

async function renderRules(ctx) {
  const canWrite = ctx.can(...WRITERS) && offers('POST', '/api/alerts/rules');
  const slot = h('div', { class: 'slot' });
  const message = h('div', { class: 'message' });
  const tbody = h('tbody', {}, h('tr', { class: 'placeholder' }, h('td', { colspan: canWrite ? 7 : 6, text: '\u00a0' })));
  const columns = ['rule_name', 'rule_kind', 'rule_scope', 'rule_condition', 'rule_severity', 'rule_enabled'];
  if (canWrite) columns.push('actions');
  const addButton = canWrite ? h('button', { type: 'button', class: 'primary', 'data-action': 'add-rule', text: t('rule_new'),
    onclick: () => showCreate() }) : null;
  replace(ctx.main, head('rules', addButton), slot, message,
    h('div', { class: 'table-wrap' }, h('table', { class: 'data rules' },
      h('caption', { class: 'sr-only', text: t('alerts_rules') }),
      h('thead', {}, h('tr', {}, columns.map((k) => h('th', { scope: 'col', text: t(k) })))), tbody)));

  let rules = [];
  let devices = new Map();
  let confirming = false;
  let drawn = null;

  function row(rule) {
    const enabled = canWrite
      ? h('button', { type: 'button', class: 'small toggle', 'data-action': 'toggle', 'aria-pressed': rule.enabled ? 'true' : 'false',
        'aria-label': t('rule_enabled_of', { name: rule.name }), text: t(rule.enabled ? 'on' : 'off'), onclick: () => toggle(rule) })
      : h('span', { text: t(rule.enabled ? 'on' : 'off') });
    const cells = [
      h('td', { 'data-label': t('rule_name') }, h('span', { class: 'rule-name', text: rule.name })),
      h('td', { 'data-label': t('rule_kind'), text: kindName(rule.kind) }),
      h('td', { 'data-label': t('rule_scope') }, scopeText(rule, devices)),
      h('td', { 'data-label': t('rule_condition') }, h('code', { text: conditionText(rule) })),
      h('td', { 'data-label': t('rule_severity') }, severityBadge(rule.severity)),
      h('td', { 'data-label': t('rule_enabled') }, enabled),
    ];
    if (canWrite) {
      const cell = h('td', { 'data-label': t('actions'), class: 'rule-actions' });
      const deleteButton = h('button', { type: 'button', class: 'danger small', 'data-action': 'delete', text: t('delete'),
        onclick: () => confirmDelete(rule, cell, deleteButton) });
      replace(cell, deleteButton);
      cells.push(cell);
    }
    return h('tr', { 'data-rule': rule.id, class: rule.enabled ? null : 'rule-off', tabindex: -1 }, cells);
  }

  // An inline confirmation in the rule's own row: keyboard-usable, translatable, no modal dialog.
  function confirmDelete(rule, cell, button) {
    confirming = true;
    const back = () => { confirming = false; replace(cell, button); button.focus(); };
    const box = h('div', { class: 'confirm', role: 'group', 'aria-label': t('rule_delete_confirm', { name: rule.name }) },
      h('p', { text: t('rule_delete_confirm', { name: rule.name }) }),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'danger small', 'data-action': 'confirm', text: t('confirm'),
          onclick: async () => {
            try { await api('DELETE', `/api/alerts/rules/${encodeURIComponent(rule.id)}`); } catch (e) { replace(message, errorText(e)); back(); return; }
            confirming = false;
            await refresh(true);
          } }),
        h('button', { type: 'button', class: 'small', text: t('cancel'), onclick: back })));
    box.addEventListener('keydown', (e) => { if (e.key === 'Escape') back(); });
    replace(cell, box);
    box.querySelector('button').focus();
  }

  async function toggle(rule) {
    try {
      await api('PUT', `/api/alerts/rules/${encodeURIComponent(rule.id)}`, ruleBody(rule, { enabled: !rule.enabled }));
      replace(message);
    } catch (e) { replace(message, errorText(e)); }
    await refresh(true);
    tbody.querySelector(`tr[data-rule="${CSS.escape(rule.id)}"] [data-action=toggle]`)?.focus();
  }

  async function loadDevices() {
    try { devices = new Map((await getAll('/api/devices')).map((d) => [d.id, d])); } catch { devices = new Map(); }
  }

  async function refresh(force = false) {
    if (confirming && !force) return;
    try {
      const [loaded] = await Promise.all([getAll('/api/alerts/rules'), devices.size ? null : loadDevices()]);
      rules = loaded;
      replace(message);
    } catch (e) { replace(message, errorText(e)); return; }
    if (confirming && !force) return;
    const snapshot = JSON.stringify(rules);
    if (!force && snapshot === drawn) return;
    drawn = snapshot;
    redrawKeepingFocus(tbody, 'data-rule', () => replace(tbody, rules.length ? rules.map(row)
      : h('tr', {}, h('td', { colspan: columns.length, class: 'muted', text: t('no_rules') }))));
  }

  function showCreate() {
    replace(slot, ruleForm(ctx, [...devices.values()], async () => { await refresh(true); }, () => {
      replace(slot); addButton?.focus();
    }));
    slot.querySelector('input[name=name]').focus();
  }

  await refresh(true);
  return { refresh: () => refresh() };
}

// The tenant's seen metrics, tags and types, for the form's suggestions: the latest values of each
// device (the metrics the drain stored), numeric ones only (a threshold compares numbers).
async function suggestions(devices) {
  const metrics = new Set();
  const results = await Promise.allSettled(devices.map((d) => latestValues(d.id)));
  for (const r of results) {
    if (r.status === 'fulfilled' && r.value) for (const v of r.value) if (typeof v.value === 'number') metrics.add(v.metric);
  }
  return {
    metrics: [...metrics].sort(),
    tags: [...new Set(devices.flatMap((d) => d.tags || []))].sort(),
    types: [...new Set(devices.map((d) => d.type).filter(Boolean))].sort(),
  };
}

let formSeq = 0;
function ruleForm(ctx, devices, onSaved, onClose) {
  formSeq += 1;
  const id = (name) => `rule-${name}-${formSeq}`;
  const error = h('div', { class: 'error', role: 'alert' });
  const warnings = h('div', { class: 'warnings', role: 'status' });
  const metricList = h('datalist', { id: id('metrics') });
  const tagList = h('datalist', { id: id('tags') });
  const typeList = h('datalist', { id: id('types') });
  const field = (key, control, hint) => h('label', {}, h('span', { text: t(key) }), control,
    hint ? h('span', { class: 'muted small hint', text: t(hint) }) : null);
  const select = (name, values, selected, text = (v) => v) => h('select', { name },
    values.map((v) => h('option', { value: v, selected: v === selected, text: text(v) })));
  const number = (name, attrs) => h('input', { name, type: 'number', inputmode: 'decimal', ...attrs });

  const kind = select('kind', ['threshold', 'no_data'], 'threshold', kindName);
  const threshold = h('fieldset', { class: 'group', 'data-group': 'threshold' },
    h('legend', { class: 'sr-only', text: t('kind_threshold') }),
    field('rule_metric', h('input', { name: 'metric', required: true, list: id('metrics'), autocomplete: 'off',
      pattern: '[A-Za-z0-9_][A-Za-z0-9_.\\-]{0,63}', spellcheck: 'false' }), 'rule_metric_hint'),
    h('div', { class: 'row' },
      field('rule_aggregation', select('aggregation', AGGREGATIONS, 'avg', (v) => t(`agg_${v}`))),
      field('rule_window', number('window_min', { required: true, min: 1, max: 1440, step: 1, value: 5 }))),
    h('div', { class: 'row' },
      field('rule_operator', select('operator', OPERATORS, '>', (v) => `${v} ${t(`op_${{ '>': 'gt', '>=': 'ge', '<': 'lt', '<=': 'le' }[v]}`)}`)),
      field('rule_value', number('value', { required: true, step: 'any' }))),
    field('rule_clear_value', number('clear_value', { step: 'any' }), 'rule_clear_hint'),
    field('rule_consecutive', number('consecutive', { required: true, min: 1, max: 100, step: 1, value: 1 }), 'rule_consecutive_hint'));
  const noData = h('fieldset', { class: 'group', 'data-group': 'no_data', hidden: true, disabled: true },
    h('legend', { class: 'sr-only', text: t('kind_no_data') }),
    field('rule_no_data_minutes', number('no_data_minutes', { required: true, min: 1, max: 10080, step: 1, value: 10 }), 'rule_no_data_hint'));

  const scope = select('scope', SCOPES, 'all', (v) => t(`scope_${v}`));
  const scopeGroups = {
    device: h('fieldset', { class: 'group', 'data-group': 'device', hidden: true, disabled: true },
      field('col_device', h('select', { name: 'device_id', required: true },
        devices.map((d) => h('option', { value: d.id, text: d.name }))))),
    tag: h('fieldset', { class: 'group', 'data-group': 'tag', hidden: true, disabled: true },
      field('rule_tag', h('input', { name: 'tag', required: true, list: id('tags'), autocomplete: 'off' }))),
    type: h('fieldset', { class: 'group', 'data-group': 'type', hidden: true, disabled: true },
      field('rule_type', h('input', { name: 'device_type', required: true, list: id('types'), autocomplete: 'off' }))),
  };

  const form = h('form', { class: 'card form rule-form', 'aria-label': t('rule_new') },
    h('h2', { text: t('rule_new') }),
    field('rule_name', h('input', { name: 'name', required: true, maxlength: 200, autocomplete: 'off' })),
    field('rule_kind', kind),
    threshold, noData,
    field('rule_scope', scope), Object.values(scopeGroups),
    field('rule_severity', select('severity', SEVERITIES, 'warning', (v) => t(`severity_${v}`))),
    metricList, tagList, typeList,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'primary', text: t('create') }),
      h('button', { type: 'button', text: t('cancel'), onclick: onClose })),
    error, warnings);

  const show = (group, on) => { group.hidden = !on; group.disabled = !on; };
  kind.addEventListener('change', () => { show(threshold, kind.value === 'threshold'); show(noData, kind.value === 'no_data'); });
  scope.addEventListener('change', () => { for (const [key, group] of Object.entries(scopeGroups)) show(group, scope.value === key); });
  form.addEventListener('keydown', (e) => { if (e.key === 'Escape') onClose(); });

  suggestions(devices).then(({ metrics, tags, types }) => {
    replace(metricList, metrics.map((m) => h('option', { value: m })));
    replace(tagList, tags.map((m) => h('option', { value: m })));
    replace(typeList, types.map((m) => h('option', { value: m })));
    form.dataset.metrics = String(metrics.length);
  }).catch(() => {});

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const text = (name) => String(data.get(name) ?? '').trim();
    const body = { name: text('name'), kind: kind.value, scope: scope.value, severity: text('severity') };
    if (body.kind === 'threshold') {
      Object.assign(body, { metric: text('metric'), aggregation: text('aggregation'), window_s: Math.round(Number(text('window_min')) * 60),
        operator: text('operator'), value: Number(text('value')), consecutive: Number(text('consecutive')) });
      if (text('clear_value') !== '') body.clear_value = Number(text('clear_value'));
    } else {
      body.no_data_minutes = Number(text('no_data_minutes'));
    }
    if (body.scope === 'device') body.device_id = Number(text('device_id'));
    if (body.scope === 'tag') body.tag = text('tag');
    if (body.scope === 'type') body.device_type = text('device_type');
    replace(error);
    replace(warnings);
    try {
      const saved = await api('POST', '/api/alerts/rules', body);
      const said = saved.warnings || [];
      replace(warnings, h('p', { class: 'ok', text: t('rule_created', { name: saved.name }) }),
        said.length ? h('ul', { class: 'warning' }, said.map((w) => h('li', { text: w }))) : null);
      form.querySelector('input[name=name]').value = '';
      await onSaved(saved);
    } catch (e) {
      const lines = problemLines(e);
      replace(error, h('p', { text: e.message || t('error_generic') }),
        lines.length ? h('ul', {}, lines.map((line) => h('li', { text: line }))) : null);
    }
  });
  return form;
}
