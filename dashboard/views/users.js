// Users (owners): add (a generated password is shown once), change role, remove. The API keeps
// the last owner; its refusal is shown as it says.
import { api, getAll } from '../api.js';
import { h, replace } from '../dom.js';
import { formatDate, t } from '../i18n.js';
import { errorText, secretPanel } from './common.js';

const ROLES = ['owner', 'staff', 'viewer'];

export async function renderUsers(ctx) {
  const slot = h('div', { class: 'slot' });
  const message = h('div', { class: 'message' });
  const tbody = h('tbody');
  const error = h('p', { class: 'error', role: 'alert' });
  const form = h('form', { class: 'inline-form', 'aria-label': t('add_user') },
    h('label', {}, h('span', { text: t('email') }), h('input', { name: 'email', type: 'email', required: true, autocomplete: 'off' })),
    h('label', {}, h('span', { text: t('role') }), h('select', { name: 'role' }, ROLES.map((r) => h('option', { value: r, selected: r === 'viewer', text: t(`role_${r}`) })))),
    h('button', { type: 'submit', class: 'primary', text: t('add_user') }), error);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    try {
      const created = await api('POST', '/api/users', { email: String(data.get('email')).trim(), role: String(data.get('role')) });
      form.reset(); error.textContent = '';
      if (created.password) {
        replace(slot, secretPanel('user_created', [[t('email'), created.email, 'user-email'], [t('login_password'), created.password, 'user-password']], [], () => replace(slot)));
      }
      refresh();
    } catch (e) { error.textContent = e.message || t('error_generic'); }
  });

  replace(ctx.main, h('div', { class: 'page-head' }, h('h1', { text: t('nav_users') })), slot, message,
    h('section', { class: 'card' }, h('h2', { text: t('add_user') }), form),
    h('div', { class: 'table-wrap' }, h('table', {},
      h('thead', {}, h('tr', {}, ['email', 'role', 'created', 'actions'].map((k) => h('th', { scope: 'col', text: t(k) })))), tbody)));

  async function refresh() {
    let users;
    try { users = await getAll('/api/users'); replace(message); } catch (e) { replace(message, errorText(e)); return; }
    replace(tbody, users.map((u) => {
      const select = h('select', { 'aria-label': t('role_of', { email: u.email }) },
        ROLES.map((r) => h('option', { value: r, selected: r === u.role, text: t(`role_${r}`) })));
      select.addEventListener('change', async () => {
        try { await api('PATCH', `/api/users/${u.id}`, { role: select.value }); replace(message); } catch (e) { replace(message, errorText(e)); select.value = u.role; }
      });
      const removeButton = h('button', { type: 'button', class: 'danger small', text: t('remove'),
        disabled: u.id === ctx.me.id,
        onclick: async () => {
          try { await api('DELETE', `/api/users/${u.id}`); refresh(); } catch (e) { replace(message, errorText(e)); }
        } });
      return h('tr', { 'data-user': u.email },
        h('td', { 'data-label': t('email'), text: u.email }),
        h('td', { 'data-label': t('role') }, select),
        h('td', { 'data-label': t('created'), text: formatDate(u.created_at) }),
        h('td', { 'data-label': t('actions') }, removeButton));
    }));
  }
  await refresh();
  return { refresh };
}
