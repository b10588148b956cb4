// The device page's profile parts: which profile decodes the device (staff and owners pick another:
// its broker ACL follows at once), exactly what to type into the device's own settings page for that
// profile, and (staff and owners) its dead letters tried against a profile or an edited spec (a dry
// run: what each would store, nothing written), the change applied, and the dead letters replayed
// (each reading stored once). What the decoder saw (Sparkplug gaps, rebirths, births, deaths) is
// listed when there is any.
import { api, offers } from '../api.js';
import { h, replace } from '../dom.js';
import { formatDate, formatNumber, formatValue, has, t } from '../i18n.js';
import { codeBlock, copyButton, errorText, section } from './common.js';
import { kindName, loadProfiles, NATIVE_FORMS, parsedSpec, problemBox, specText } from './profiles.js';

const WRITERS = ['owner', 'staff'];
// Sparkplug's primary host id the drain publishes its STATE as (shared/broker/contract.py
// SPARKPLUG_HOST_ID; the browser test compares the two).
const SPARKPLUG_HOST_ID = 'mqtt-saas';
const SHOWN_READINGS = 4;
// Settings the reader switches or picks rather than types: shown as words, with no copy button.
const CHOICES = new Set(['enable', 'tls', 'rpc_notifications', 'generic_status', 'store_forward']);
const EVENT_PAGE = 10;

// What the reader types into the device: [label key, value, field id] rows and code blocks.
function setup(profile, where) {
  const { host, port, slug, name, username } = where;
  const prefix = `t/${slug}/d/${name}`;
  const user = username || t('setup_no_credential');
  const password = [t('setup_password'), null, 'password'];
  const rows = [];
  const blocks = [];
  let intro = 'setup_native';
  if (profile.name === 'tasmota') {
    intro = 'setup_tasmota';
    rows.push([t('setup_host'), host, 'host'], [t('setup_port'), String(port), 'port'], [t('setup_client'), user, 'client'],
      [t('setup_user'), user, 'user'], password, [t('setup_topic'), name, 'topic'],
      [t('setup_full_topic'), `t/${slug}/d/%topic%/%prefix%/`, 'full_topic']);
    blocks.push(codeBlock(t('setup_tasmota_console'), 'SetOption52 1\nTelePeriod 60'));
  } else if (profile.name === 'shelly-gen2') {
    intro = 'setup_shelly';
    rows.push([t('setup_enable'), t('setup_on'), 'enable'], [t('setup_server'), `${host}:${port}`, 'server'],
      [t('setup_client_id'), user, 'client_id'], [t('setup_username'), user, 'username'], password,
      [t('setup_mqtt_prefix'), prefix, 'mqtt_prefix'], [t('setup_tls'), t('setup_tls_value'), 'tls'],
      [t('setup_rpc_notifications'), t('setup_on'), 'rpc_notifications'], [t('setup_generic_status'), t('setup_off'), 'generic_status']);
  } else if (profile.name === 'homeassistant-discovery') {
    intro = 'setup_esphome';
    blocks.push(codeBlock(t('setup_esphome_yaml'), [
      'mqtt:',
      `  broker: ${host}`,
      `  port: ${port}`,
      `  username: ${user}`,
      '  password: !secret mqtt_password',
      `  client_id: ${user}`,
      `  topic_prefix: ${prefix}`,
      `  discovery_prefix: ${prefix}/homeassistant`,
      '  log_topic: null',
      '  certificate_authority: !secret broker_ca',
    ].join('\n')));
  } else if (profile.name === 'sparkplug-b') {
    intro = 'setup_sparkplug';
    rows.push([t('setup_server_url'), `ssl://${host}:${port}`, 'server_url'], [t('setup_client_id'), user, 'client_id'],
      [t('setup_username'), user, 'username'], password, [t('setup_group_id'), slug, 'group_id'],
      [t('setup_edge_node_id'), name, 'edge_node_id'], [t('setup_primary_host_id'), SPARKPLUG_HOST_ID, 'primary_host_id'],
      [t('setup_store_forward'), t('setup_on'), 'store_forward']);
  } else {
    if (!profile.builtin) intro = 'setup_own';
    rows.push([t('setup_host'), host, 'host'], [t('setup_port'), String(port), 'port'], [t('setup_client_id'), user, 'client_id'],
      [t('setup_username'), user, 'username'], password, [t('setup_topic_prefix'), prefix, 'topic_prefix']);
    blocks.push(h('p', { class: 'muted small', text: t('setup_publishes') }),
      h('ul', { class: 'forms', 'data-setup': 'topics' },
        [...NATIVE_FORMS, ...profile.publish_forms].map((form) => h('li', {}, h('code', { text: `${prefix}/${form}` })))));
  }
  return h('div', { class: 'setup', 'data-profile': profile.name },
    h('p', { text: t(intro) }),
    rows.length ? h('dl', { class: 'kv' }, rows.map(([label, value, id]) => [
      h('dt', { text: label }),
      value === null ? h('dd', { 'data-setup': id, class: 'muted', text: t('setup_password_value') })
        : CHOICES.has(id) ? h('dd', {}, h('strong', { 'data-setup': id, text: value }))
          : h('dd', {}, h('code', { class: 'copyable', 'data-setup': id, text: value }), copyButton(value)),
    ])) : null,
    blocks);
}

function readingText(r) {
  return `${r.metric} = ${formatValue(r.value)} · ${formatDate(r.ts)}`;
}

function outcomeCell(item) {
  if (item.outcome === 'stored') {
    const more = item.reading_count - Math.min(item.readings.length, SHOWN_READINGS);
    return h('td', { 'data-label': t('dl_outcome') },
      h('span', { class: 'badge outcome-stored', text: t('outcome_stored') }),
      h('ul', { class: 'readings' }, item.readings.slice(0, SHOWN_READINGS).map((r) => h('li', {}, h('code', { text: readingText(r) }))),
        more > 0 ? h('li', { class: 'muted', text: t('dl_more', { n: formatNumber(more) }) }) : null));
  }
  if (item.outcome === 'failed') {
    return h('td', { 'data-label': t('dl_outcome') },
      h('span', { class: 'badge outcome-failed', text: t('outcome_failed') }), ' ',
      h('code', { text: item.new_reason }), item.new_detail ? h('div', { class: 'small', text: item.new_detail }) : null);
  }
  return h('td', { 'data-label': t('dl_outcome') }, h('span', { class: 'badge outcome-skipped', text: t('outcome_not_replayable') }));
}

function dryRunTable(result) {
  if (!result.items.length) return h('p', { class: 'muted', 'data-dry-run': 'empty', text: t('dry_run_none') });
  return [
    h('p', { class: 'dry-run-summary', text: t('dry_run_summary', {
      n: formatNumber(result.dead_letters), stored: formatNumber(result.would_store), readings: formatNumber(result.readings),
      failing: formatNumber(result.still_failing), skipped: formatNumber(result.not_replayable) }) }),
    h('div', { class: 'table-wrap' }, h('table', { class: 'data dead-letters' },
      h('thead', {}, h('tr', {}, ['dl_received', 'dl_topic', 'dl_reason', 'dl_outcome'].map((k) => h('th', { scope: 'col', text: t(k) })))),
      h('tbody', {}, result.items.map((item) => h('tr', { 'data-dead-letter': item.id, 'data-outcome': item.outcome },
        h('td', { 'data-label': t('dl_received'), text: formatDate(item.received_at) }),
        h('td', { 'data-label': t('dl_topic') }, h('code', { text: item.topic })),
        h('td', { 'data-label': t('dl_reason') }, h('code', { text: item.reason }), item.profile ? h('div', { class: 'muted small', text: item.profile }) : null),
        outcomeCell(item)))))),
  ];
}

export async function profileSections(ctx, device) {
  const canWrite = ctx.can(...WRITERS) && offers('PUT', '/api/devices/{device_id}/profile');
  const canTry = ctx.can(...WRITERS) && offers('POST', '/api/devices/{device_id}/dead-letters/dry-run');
  let profiles = [];
  try { profiles = await loadProfiles(); } catch { profiles = []; }
  const byName = () => new Map(profiles.map((p) => [p.name, p]));
  const current = () => byName().get(device.profile) || { name: device.profile, builtin: true, kind: 'native', publish_forms: [], spec: null };
  const where = () => ({
    host: ctx.config.broker_host || location.hostname,
    port: ctx.config.broker_port || 8883,
    slug: ctx.me.tenant_slug,
    name: device.name,
    username: (device.credentials || [])[0]?.username || null,
  });

  // -- the profile and what to type into the device ------------------------------------------------
  const profileMessage = h('div', { class: 'message', role: 'status' });
  const setupBox = h('div', { class: 'setup-box' });
  const currentLine = h('p', { class: 'profile-current' });
  const picker = h('select', { name: 'profile' });
  const pickerForm = canWrite ? h('form', { class: 'inline-form', 'aria-label': t('device_profile_assign') },
    h('label', {}, h('span', { text: t('device_profile_pick') }), picker),
    h('button', { type: 'submit', class: 'primary', 'data-action': 'assign-profile', text: t('device_profile_assign') })) : null;
  pickerForm?.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (picker.value === device.profile) return;
    try {
      await assign(picker.value);
    } catch (e) { replace(profileMessage, errorText(e)); }
  });

  function options(select, selected, own) {
    const group = (label, list) => (list.length ? h('optgroup', { label },
      list.map((p) => h('option', { value: p.name, selected: p.name === selected, text: p.name }))) : null);
    replace(select, own ? h('option', { value: '', selected: selected === '', text: t('dry_run_own', { profile: device.profile }) }) : null,
      group(t('profile_builtin'), profiles.filter((p) => p.builtin)), group(t('profile_own'), profiles.filter((p) => !p.builtin)));
  }

  function drawProfile() {
    const p = current();
    replace(currentLine, t('device_profile_current'), ' ',
      h('a', { href: `#/profiles/${encodeURIComponent(p.name)}`, 'data-field': 'profile', text: p.name }),
      ` · ${kindName(p.kind)}`, p.description ? h('span', { class: 'muted', text: ` · ${p.description}` }) : null);
    options(picker, device.profile, false);
    replace(setupBox, setup(p, where()));
  }

  async function assign(name) {
    const result = await api('PUT', `/api/devices/${device.id}/profile`, { profile: name });
    device.profile = result.profile;
    try { profiles = await loadProfiles(); } catch { /* the names shown stay right; counts catch up */ }
    drawProfile();
    drawCandidates();
    replace(profileMessage, h('p', { class: result.broker_synced ? 'ok' : 'warning',
      text: result.broker_synced ? t('device_profile_assigned', { device: device.name, profile: name }) : t('device_profile_not_synced') }));
  }

  const profileCard = h('section', { class: 'card', 'data-section': 'profile' },
    h('h2', { text: t('device_profile') }), currentLine, pickerForm, profileMessage,
    h('h3', { text: t('device_setup') }), setupBox);

  // -- dead letters: dry run, apply, replay ---------------------------------------------------------
  const candidate = h('select', { name: 'candidate', 'aria-label': t('dry_run_profile') });
  const specArea = h('textarea', { name: 'spec', rows: 14, spellcheck: 'false', autocomplete: 'off', 'aria-label': t('profile_spec') });
  const specEdit = h('details', { class: 'spec-edit' }, h('summary', { text: t('dry_run_edit_spec') }), specArea,
    h('p', { class: 'muted small', text: t('profile_spec_hint') }));
  const tryError = h('div', { class: 'error', role: 'alert' });
  const results = h('div', { class: 'dry-run', 'aria-live': 'polite' });
  const applyBar = h('div', { class: 'apply' });
  const replayMessage = h('div', { class: 'message', role: 'status' });
  const tryForm = h('form', { class: 'form dry-run-form', 'aria-label': t('dry_run_button') },
    h('label', {}, h('span', { text: t('dry_run_profile') }), candidate), specEdit,
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'primary', 'data-action': 'dry-run', text: t('dry_run_button') }),
      h('button', { type: 'button', 'data-action': 'replay', text: t('replay_button'), onclick: () => replay() })),
    tryError);
  let tried = null; // what the shown dry run tried: { name, spec (edited, or null) }

  const chosen = () => byName().get(candidate.value || device.profile);
  function drawCandidates() {
    const keep = candidate.value;
    options(candidate, byName().has(keep) ? keep : '', true);
    fillSpec();
  }
  function fillSpec() {
    const p = chosen();
    specArea.value = p && p.spec ? specText(p.spec) : '';
    specArea.disabled = !(p && p.spec);
    if (specArea.disabled) specEdit.open = false;
  }
  candidate.addEventListener('change', fillSpec);

  // The spec to try instead of the chosen profile: only when it was edited.
  function editedSpec() {
    const p = chosen();
    if (!specEdit.open || specArea.disabled) return null;
    const spec = parsedSpec(specArea.value, tryError);
    if (!spec) return undefined;
    return JSON.stringify(spec) === JSON.stringify(p.spec) ? null : spec;
  }

  async function dryRun(name, spec) {
    const body = spec ? { spec } : (name === device.profile ? {} : { profile: name });
    const result = await api('POST', `/api/devices/${device.id}/dead-letters/dry-run`, body);
    tried = { name, spec };
    replace(results, dryRunTable(result));
    drawApply(result);
  }

  tryForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    replace(tryError);
    replace(replayMessage);
    const spec = editedSpec();
    if (spec === undefined) return;
    try { await dryRun(chosen().name, spec); } catch (e) { problemBox(tryError, e); }
  });

  function drawApply(result) {
    const target = byName().get(tried.name);
    const error = h('div', { class: 'error', role: 'alert' });
    let control = null;
    if (tried.spec && target && !target.builtin) {
      control = h('button', { type: 'button', class: 'primary', 'data-action': 'apply',
        text: t('apply_save', { profile: target.name }), onclick: () => apply(error, async () => {
          const body = { spec: tried.spec };
          if (target.description) body.description = target.description;
          await api('PUT', `/api/profiles/${encodeURIComponent(target.name)}`, body);
          return target.name;
        }) });
    } else if (tried.spec) {
      const nameInput = h('input', { name: 'new_profile', required: true, maxlength: 63, pattern: '[a-z0-9][a-z0-9\\-]{0,62}',
        autocomplete: 'off', spellcheck: 'false', value: `${tried.name}-${device.name}`.slice(0, 63).toLowerCase() });
      control = h('form', { class: 'inline-form', 'aria-label': t('apply_save_new') },
        h('label', {}, h('span', { text: t('apply_new_name') }), nameInput),
        h('button', { type: 'submit', class: 'primary', 'data-action': 'apply', text: t('apply_save_new') }));
      control.addEventListener('submit', (event) => {
        event.preventDefault();
        apply(error, async () => {
          const created = await api('POST', '/api/profiles', { name: nameInput.value.trim(), spec: tried.spec,
            description: t('apply_new_description', { profile: tried.name, device: device.name }).slice(0, 500) });
          return created.name;
        });
      });
    } else if (tried.name !== device.profile) {
      control = h('button', { type: 'button', class: 'primary', 'data-action': 'apply',
        text: t('apply_assign', { device: device.name, profile: tried.name }), onclick: () => apply(error, async () => tried.name) });
    }
    replace(applyBar, control && result.would_store ? [h('p', { class: 'muted small', text: t('apply_hint') }), control, error] : null);
  }

  // Saves (or creates) what was tried, gives it to the device, and shows the dry run of its own
  // profile now: what a replay will store.
  async function apply(error, save) {
    replace(error);
    try {
      const name = await save();
      if (name !== device.profile) await assign(name);
      else {
        try { profiles = await loadProfiles(); } catch { /* as before */ }
        drawProfile();
      }
      drawCandidates();
      candidate.value = '';
      fillSpec();
      specEdit.open = false;
      await dryRun(device.profile, null);
      replace(replayMessage, h('p', { class: 'ok', text: t('applied', { device: device.name, profile: device.profile }) }));
    } catch (e) { problemBox(error, e); }
  }

  async function replay() {
    replace(tryError);
    try {
      const result = await api('POST', `/api/devices/${device.id}/dead-letters/replay`);
      replace(replayMessage, h('p', { class: 'ok', 'data-replayed': result.replayed, text: t('replay_result', {
        replayed: formatNumber(result.replayed), stored: formatNumber(result.stored_readings),
        duplicates: formatNumber(result.duplicates), failing: formatNumber(result.still_failing) }) }));
      replace(applyBar);
      await dryRun(device.profile, null);
      replace(applyBar);
    } catch (e) { problemBox(tryError, e); }
  }

  const deadLetterCard = canTry ? h('section', { class: 'card', 'data-section': 'dead-letters' },
    h('h2', { text: t('dead_letters_title') }), h('p', { class: 'muted', text: t('dead_letters_intro') }),
    tryForm, replayMessage, results, applyBar) : null;

  // -- what the decoder saw ------------------------------------------------------------------------
  const eventList = h('div', { class: 'decoder-events' });
  const eventsCard = offers('GET', '/api/devices/{device_id}/decoder-events')
    ? section('decoder_events', eventList) : null;
  if (eventsCard) eventsCard.hidden = true;
  async function drawEvents() {
    if (!eventsCard) return;
    try {
      const data = await api('GET', `/api/devices/${device.id}/decoder-events?limit=${EVENT_PAGE}`);
      const items = data.items || [];
      eventsCard.hidden = !items.length;
      replace(eventList, items.length ? h('ul', { class: 'event-list' }, items.map((e) => h('li', { 'data-decoder-event': e.kind },
        h('strong', { text: has(`decoder_${e.kind}`) ? t(`decoder_${e.kind}`) : e.kind }), ' ',
        h('span', { class: 'muted small', text: formatDate(e.at) }),
        Object.keys(e.detail || {}).length ? h('div', {}, h('code', { text: JSON.stringify(e.detail) })) : null))) : null);
    } catch (e) { replace(eventList, errorText(e)); eventsCard.hidden = false; }
  }

  drawProfile();
  drawCandidates();
  const loading = [drawEvents()];
  if (deadLetterCard) loading.push(dryRun(device.profile, null).catch((e) => problemBox(tryError, e)));
  await Promise.all(loading);
  return { nodes: [profileCard, deadLetterCard, eventsCard], refresh: drawEvents };
}
