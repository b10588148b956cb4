// English, Bahasa Indonesia and Português (Brasil): chosen from navigator.languages, switchable,
// remembered in localStorage (a preference, nothing secret). Dates and numbers go through Intl in
// the reader's locale and time zone.

export const LOCALES = ['en', 'id', 'pt-BR'];
const STORE_KEY = 'mqtt-saas.lang';
let locale = 'en';
let messages = {};
let fallback = {};

export function pickLocale(preferred = navigator.languages || [navigator.language]) {
  const saved = localStorage.getItem(STORE_KEY);
  if (LOCALES.includes(saved)) return saved;
  for (const tag of preferred) {
    const lower = String(tag).toLowerCase();
    if (lower.startsWith('pt')) return 'pt-BR';
    if (lower === 'id' || lower.startsWith('id-') || lower === 'in' || lower.startsWith('ms')) return 'id';
    if (lower.startsWith('en')) return 'en';
  }
  return 'en';
}

async function fetchMessages(tag) {
  const response = await fetch(`i18n/${tag}.json`, { cache: 'no-cache' });
  if (!response.ok) throw new Error(`missing translations for ${tag}`);
  return response.json();
}

// The reader may pick another language while a file is still loading: only the latest pick applies,
// whichever file arrives last.
let latestPick = 0;
export async function setLocale(tag, remember = false) {
  if (!LOCALES.includes(tag)) tag = 'en';
  const pick = ++latestPick;
  if (!Object.keys(fallback).length) fallback = await fetchMessages('en');
  const loaded = tag === 'en' ? fallback : await fetchMessages(tag);
  if (pick !== latestPick) return;
  messages = loaded;
  locale = tag;
  if (remember) localStorage.setItem(STORE_KEY, tag);
  document.documentElement.lang = tag;
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
}

export function currentLocale() {
  return locale;
}

export function has(key) {
  return key in messages || key in fallback;
}

export function t(key, vars = {}) {
  const text = messages[key] ?? fallback[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

export function formatNumber(value, options = {}) {
  if (typeof value !== 'number' || !Number.isFinite(value)) return String(value);
  return new Intl.NumberFormat(locale, { maximumFractionDigits: 3, ...options }).format(value);
}

export function formatDate(value, options = { dateStyle: 'medium', timeStyle: 'medium' }) {
  if (!value) return '—';
  const date = value instanceof Date ? value : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return new Intl.DateTimeFormat(locale, options).format(date);
}

export function formatRelative(value, now = Date.now()) {
  if (!value) return t('never');
  const seconds = Math.round((new Date(value).getTime() - now) / 1000);
  const rtf = new Intl.RelativeTimeFormat(locale, { numeric: 'auto' });
  const abs = Math.abs(seconds);
  if (abs < 60) return rtf.format(seconds, 'second');
  if (abs < 3600) return rtf.format(Math.round(seconds / 60), 'minute');
  if (abs < 86400) return rtf.format(Math.round(seconds / 3600), 'hour');
  return rtf.format(Math.round(seconds / 86400), 'day');
}

// A reading's value: numbers through Intl, booleans and texts as they are (rendered as text).
export function formatValue(value, unit) {
  if (value === null || value === undefined) return '—';
  const text = typeof value === 'number' ? formatNumber(value) : typeof value === 'boolean' ? t(value ? 'true' : 'false') : String(value);
  return unit ? `${text} ${unit}` : text;
}
