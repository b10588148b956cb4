import { ApiError, login, startExternalSignIn, useExternalToken } from '../api.js';
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
  replace(ctx.main, form, ctx.config.external_sign_in ? externalForm(ctx, onSignedIn) : null);
  form.querySelector('input').focus();
}

// Where an external identity provider is configured, its token signs the reader in as the user the
// API maps it to (tenant and role from its claims).
function externalForm(ctx, onSignedIn) {
  const error = h('p', { class: 'error', role: 'alert' });
  const token = h('textarea', { name: 'token', rows: 3, required: true, autocomplete: 'off', spellcheck: 'false' });
  const signInUrl = ctx.config.external_sign_in_url;
  const redirect = signInUrl ? h('button', { type: 'button', class: 'primary', 'data-action': 'external-sign-in',
    text: t('sign_in_at_provider') }) : null;
  if (redirect) redirect.addEventListener('click', () => startExternalSignIn(signInUrl));
  const form = h('form', { class: 'card login external' },
    h('h2', { text: t('sign_in_external') }),
    redirect,
    h('label', {}, h('span', { text: t('external_token') }), token),
    h('button', { type: 'submit', text: t('sign_in') }), error);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    try {
      useExternalToken(token.value);
      token.value = '';
      await onSignedIn();
    } catch (e) {
      error.textContent = e instanceof ApiError && e.status === 401 ? t('external_refused') : (e.message || t('error_generic'));
    }
  });
  return form;
}
