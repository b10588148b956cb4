// The nav's Alerts entry and its badge of open (unacknowledged) events: small, loaded with the page
// so every view shows the count; the alerts views themselves (views/alerts.js) load on first visit.
import { api, offers } from '../api.js';
import { h } from '../dom.js';
import { formatNumber, t } from '../i18n.js';

const MAX_PAGE = 200;

export function offersAlerts() {
  return offers('GET', '/api/alerts/events');
}

// One page of the API's largest size is enough for a count that matters; past it the badge says "200+".
const badge = h('span', { class: 'nav-badge zero', 'data-open-alerts': '0', 'aria-hidden': 'true', text: '0' });
const badgeText = h('span', { class: 'sr-only' });

export function alertsNavLabel() {
  return [h('span', { class: 'nav-label', text: t('nav_alerts') }), ' ', badge, badgeText];
}

export async function refreshAlertBadge() {
  if (!offersAlerts()) return;
  const data = await api('GET', `/api/alerts/events?state=open&limit=${MAX_PAGE}`);
  const n = (data.items || []).length;
  const text = data.next_cursor ? `${formatNumber(n)}+` : formatNumber(n);
  badge.textContent = text;
  badge.dataset.openAlerts = String(n);
  badge.classList.toggle('zero', n === 0);
  badgeText.textContent = n ? t('alerts_open_n', { n: text }) : '';
}
