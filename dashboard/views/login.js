import { ApiError, login } from '../api.js';
import { h, replace } from '../dom.js';
import { t } from '../i18n.js';

export function renderLogin(ctx, onSignedIn) {
  const error = h('p', { class: 'error', role: 'alert', 'aria-live': 'assertive' });
  const field = (name, type, autocomplete, value = '') => h('label', {},
    h('span', { text: t(`login_${name}`) }),
    h('input', { name, type, autocomplete, required: true, value }));
  const submit = h('button', { type: 'submit', class: 'primary', text: t('sign_in') });
  const form = h('form', { class: 'card login', novalidate: false },
    h('h1', { text: t('sign_in_title') }),
    field('tenant', 'text', 'organization'),
    field('email', 'email', 'username'),
    field('password', 'password', 'current-password'),
    submit, error);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    submit.disabled = true;
    error.textContent = '';
    try {
      await login(String(data.get('tenant')).trim(), String(data.get('email')).trim(), String(data.get('password')));
      await onSignedIn();
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 401 ? t('login_refused')
        : e instanceof ApiError && e.status === 429 ? t('login_throttled') : (e.message || t('error_generic'));
    } finally {
      submit.disabled = false;
    }
  });
  replace(ctx.main, form);
  form.querySelector('input').focus();
}
