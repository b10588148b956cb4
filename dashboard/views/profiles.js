// Device profiles: the built-ins and the tenant's own, listed for every role (#/profiles), each
// readable with its topics and spec (#/profiles/<name>); staff and owners create one (empty, or from
// a built-in's or another profile's spec), change its spec and description, and delete one no device
// uses. A spec is JSON (never code) the API validates: its reasons are shown beside the form.
import { api, getAll, offers } from '../api.js';
import { h, replace } from '../dom.js';
import { formatDate, formatNumber, has, t } from '../i18n.js';
import { errorText, problemLines } from './common.js';

const WRITERS = ['owner', 'staff'];
// The native forms every profile includes (shared/broker/contract.py DEVICE_PUBLISH_FORMS).
export const NATIVE_FORMS = ['telemetry', 'status', '+/state'];
// A profile to copy when the list's form opens (set by a profile page's "Copy" button).
let startFrom = '';

export function kindName(kind) {
  const key = `profile_kind_${String(kind).replace(/-/g, '_')}`;
  return has(key) ? t(key) : kind;
}

export function sourceBadge(profile) {
  return h('span', { class: `badge profile-${profile.builtin ? 'builtin' : 'own'}`,
    text: t(profile.builtin ? 'profile_builtin' : 'profile_own') });
}

// The API's reasons for a refused spec or body, as lines under the message.
export function problemBox(box, error) {
  const kind = error && error.problem && typeof error.problem.type === 'string' ? error.problem.type.split(':').pop() : '';
  const head = kind === 'invalid-profile' ? `${t('profile_invalid')} ${error.problem.detail}` : (error.message || t('error_generic'));
  const lines = problemLines(error);
  replace(box, h('p', { text: head }), lines.length ? h('ul', {}, lines.map((line) => h('li', { text: line }))) : null);
}

// The spec typed into a textarea: an object, or null with the reason shown in `box`.
export function parsedSpec(text, box) {
  let spec;
  try { spec = JSON.parse(text); } catch { spec = null; }
  if (!spec || typeof spec !== 'object' || Array.isArray(spec)) {
    replace(box, h('p', { text: t('profile_spec_not_json') }));
    return null;
  }
  return spec;
}

export function specText(spec) {
  return JSON.stringify(spec ?? { forms: [] }, null, 2);
}

export function loadProfiles() {
  return api('GET', '/api/profiles').then((data) => data.items || []);
}

export async function renderProfiles(ctx, name) {
  return name ? renderProfile(ctx, decodeURIComponent(name)) : renderList(ctx);
}

async function renderList(ctx) {
  const canWrite = ctx.can(...WRITERS) && offers('POST', '/api/profiles');
  const slot = h('div', { class: 'slot' });
  const message = h('div', { class: 'message' });
  const tbody = h('tbody', {}, h('tr', { class: 'placeholder' }, h('td', { colspan: 4, text: '\u00a0' })));
  const addButton = canWrite ? h('button', { type: 'button', class: 'primary', 'data-action': 'add-profile',
    text: t('profile_new'), onclick: () => showCreate('') }) : null;
  replace(ctx.main,
    h('div', { class: 'page-head' }, h('h1', { text: t('nav_profiles') }), addButton),
    h('p', { class: 'muted', text: t('profiles_intro') }),
    slot, message,
    h('div', { class: 'table-wrap' }, h('table', { class: 'data profiles' },
      h('caption', { class: 'sr-only', text: t('nav_profiles') }),
      h('thead', {}, h('tr', {}, ['profile_name', 'profile_kind', 'profile_description', 'profile_devices']
        .map((k) => h('th', { scope: 'col', text: t(k) })))),
      tbody)));

  let profiles = [];
  let drawn = null;

  function row(p) {
    return h('tr', { 'data-profile': p.name },
      h('td', { 'data-label': t('profile_name') }, h('a', { href: `#/profiles/${encodeURIComponent(p.name)}`, text: p.name }),
        ' ', sourceBadge(p)),
      h('td', { 'data-label': t('profile_kind'), text: kindName(p.kind) }),
      h('td', { 'data-label': t('profile_description'), text: p.description || '—' }),
      h('td', { 'data-label': t('profile_devices'), text: formatNumber(p.devices) }));
  }

  async function refresh() {
    try { profiles = await loadProfiles(); replace(message); } catch (e) { replace(message, errorText(e)); return; }
    const snapshot = JSON.stringify(profiles);
    if (snapshot === drawn) return;
    drawn = snapshot;
    replace(tbody, profiles.map(row));
  }

  function showCreate(from) {
    replace(slot, createForm(ctx, profiles, from, () => { replace(slot); addButton?.focus(); }));
    slot.querySelector('input[name=name]').focus();
  }

  await refresh();
  if (canWrite && startFrom) {
    const from = startFrom;
    startFrom = '';
    showCreate(from);
  }
  return { refresh };
}

function createForm(ctx, profiles, from, onClose) {
  const error = h('div', { class: 'error', role: 'alert' });
  const copyable = profiles.filter((p) => p.spec);
  const spec = h('textarea', { name: 'spec', rows: 16, spellcheck: 'false', autocomplete: 'off',
    'aria-label': t('profile_spec') });
  const source = h('select', { name: 'from' },
    h('option', { value: '', text: t('profile_start_empty') }),
    copyable.map((p) => h('option', { value: p.name, selected: p.name === from, text: p.name })));
  const fill = () => {
    const chosen = copyable.find((p) => p.name === source.value);
    spec.value = specText(chosen ? chosen.spec : null);
  };
  source.addEventListener('change', fill);
  fill();
  const form = h('form', { class: 'card form profile-form', 'aria-label': t('profile_new') },
    h('h2', { text: t('profile_new') }),
    h('label', {}, h('span', { text: t('profile_name') }),
      h('input', { name: 'name', required: true, maxlength: 63, pattern: '[a-z0-9][a-z0-9\\-]{0,62}', autocomplete: 'off',
        spellcheck: 'false' }),
      h('span', { class: 'muted small hint', text: t('profile_name_hint') })),
    h('label', {}, h('span', { text: t('profile_description') }),
      h('input', { name: 'description', maxlength: 500, autocomplete: 'off' })),
    h('label', {}, h('span', { text: t('profile_start_from') }), source),
    h('label', {}, h('span', { text: t('profile_spec') }), spec,
      h('span', { class: 'muted small hint', text: t('profile_spec_hint') })),
    h('div', { class: 'actions' },
      h('button', { type: 'submit', class: 'primary', text: t('create') }),
      h('button', { type: 'button', text: t('cancel'), onclick: onClose })),
    error);
  form.addEventListener('keydown', (e) => { if (e.key === 'Escape') onClose(); });
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    replace(error);
    const parsed = parsedSpec(spec.value, error);
    if (!parsed) return;
    const data = new FormData(form);
    const body = { name: String(data.get('name')).trim(), spec: parsed };
    const description = String(data.get('description') || '').trim();
    if (description) body.description = description;
    try {
      const created = await api('POST', '/api/profiles', body);
      ctx.go(`#/profiles/${encodeURIComponent(created.name)}`);
    } catch (e) { problemBox(error, e); }
  });
  return form;
}

async function renderProfile(ctx, name) {
  const profile = await api('GET', `/api/profiles/${encodeURIComponent(name)}`);
  const canWrite = ctx.can(...WRITERS);
  const editable = canWrite && !profile.builtin;
  const slot = h('div', { class: 'slot' });
  const message = h('div', { class: 'message', role: 'status' });
  const error = h('div', { class: 'error', role: 'alert' });
  const devicesCell = h('dd', { 'data-field': 'devices' });
  const updatedCell = h('dd', { 'data-field': 'updated' });

  const actions = canWrite ? h('div', { class: 'actions' },
    profile.spec ? h('button', { type: 'button', 'data-action': 'copy', text: t('profile_copy'),
      onclick: () => { startFrom = profile.name; ctx.go('#/profiles'); } }) : null,
    editable ? h('button', { type: 'button', class: 'danger', 'data-action': 'delete', text: t('delete'),
      onclick: () => confirmDelete() }) : null) : null;

  const publishCell = h('dd', { 'data-field': 'publishes' });
  const subscribeCell = h('dd', { 'data-field': 'subscribes' });
  const details = h('dl', { class: 'kv' },
    h('dt', { text: t('profile_kind') }), h('dd', { text: kindName(profile.kind) }),
    h('dt', { text: t('profile_devices') }), devicesCell,
    h('dt', { text: t('profile_topics') }), publishCell,
    h('dt', { text: t('profile_subscribes') }), subscribeCell,
    profile.builtin ? null : [h('dt', { text: t('profile_updated') }), updatedCell]);

  const description = h('input', { name: 'description', maxlength: 500, autocomplete: 'off', value: profile.description || '' });
  const spec = h(editable ? 'textarea' : 'pre', editable
    ? { name: 'spec', rows: 20, spellcheck: 'false', autocomplete: 'off', 'aria-label': t('profile_spec') }
    : { class: 'code spec', tabindex: 0, 'aria-label': t('profile_spec') });
  if (editable) spec.value = specText(profile.spec);
  else spec.textContent = profile.spec ? specText(profile.spec) : '';

  let specSection;
  if (editable) {
    const form = h('form', { class: 'form profile-form', 'aria-label': t('profile_edit') },
      h('label', {}, h('span', { text: t('profile_description') }), description),
      h('label', {}, h('span', { text: t('profile_spec') }), spec,
        h('span', { class: 'muted small hint', text: t('profile_spec_hint') })),
      h('div', { class: 'actions' }, h('button', { type: 'submit', class: 'primary', 'data-action': 'save', text: t('save') })),
      error);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      replace(error);
      replace(message);
      const parsed = parsedSpec(spec.value, error);
      if (!parsed) return;
      const body = { spec: parsed };
      if (description.value.trim()) body.description = description.value.trim();
      try {
        const saved = await api('PUT', `/api/profiles/${encodeURIComponent(profile.name)}`, body);
        Object.assign(profile, saved);
        spec.value = specText(saved.spec);
        drawFacts();
        replace(message, h('p', { class: saved.broker_synced ? 'ok' : 'warning',
          text: t(saved.broker_synced ? 'profile_saved' : 'profile_saved_not_synced') }));
      } catch (e) { problemBox(error, e); }
    });
    specSection = h('section', { class: 'card' }, h('h2', { text: t('profile_edit') }), form);
  } else {
    specSection = h('section', { class: 'card' }, h('h2', { text: t('profile_spec') }),
      profile.builtin ? h('p', { class: 'muted', text: t(profile.spec ? 'profile_builtin_readonly' : 'profile_no_spec') }) : null,
      profile.spec ? spec : null);
  }

  const lead = h('p', { class: 'muted' });
  let users = [];
  // The devices using it, by name (a profile in use cannot be deleted: these need another first).
  async function loadUsers() {
    if (!profile.devices) { users = []; return; }
    try { users = (await getAll('/api/devices')).filter((d) => d.profile === profile.name); } catch { users = []; }
  }

  function drawFacts() {
    lead.textContent = profile.description || '';
    replace(devicesCell, formatNumber(profile.devices), users.length ? ': ' : null,
      users.map((d, i) => [i ? ', ' : null, h('a', { href: `#/device/${d.id}`, text: d.name })]));
    updatedCell.textContent = formatDate(profile.updated_at);
    const topics = (forms) => h('ul', { class: 'forms' }, forms.map((f) => h('li', {}, h('code', { text: f }))));
    replace(publishCell, profile.sparkplug
      ? h('code', { text: 'spBv1.0/{tenant}/{NBIRTH|NDATA|NDEATH}/{device}, spBv1.0/{tenant}/{DBIRTH|DDATA|DDEATH}/{device}/+' })
      : topics([...NATIVE_FORMS, ...profile.publish_forms]));
    replace(subscribeCell, topics(['cmd', ...profile.subscribe_forms]));
  }

  function confirmDelete() {
    const box = h('div', { class: 'card confirm', role: 'alertdialog', 'aria-label': t('profile_delete_confirm', { name: profile.name }) },
      h('p', { text: t('profile_delete_confirm', { name: profile.name }) }),
      h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'danger', 'data-action': 'confirm', text: t('confirm'), onclick: async () => {
          replace(slot);
          try {
            await api('DELETE', `/api/profiles/${encodeURIComponent(profile.name)}`);
            ctx.go('#/profiles');
          } catch (e) { replace(message, errorText(e)); }
        } }),
        h('button', { type: 'button', text: t('cancel'), onclick: () => replace(slot) })));
    replace(slot, box);
    box.querySelector('button').focus();
  }

  await loadUsers();
  drawFacts();
  replace(ctx.main,
    h('div', { class: 'page-head' },
      h('div', {}, h('p', {}, h('a', { href: '#/profiles', text: `← ${t('nav_profiles')}` })),
        h('h1', {}, h('span', { text: profile.name }), ' ', sourceBadge(profile)), lead),
      actions),
    slot, message,
    h('section', { class: 'card' }, details),
    specSection);

  async function refresh() {
    try {
      const fresh = await api('GET', `/api/profiles/${encodeURIComponent(profile.name)}`);
      const changed = fresh.devices !== profile.devices;
      profile.devices = fresh.devices;
      if (changed) await loadUsers();
      drawFacts();
    } catch { /* the page keeps what it shows; a deleted profile is noticed on the next action */ }
  }
  return { refresh };
}
