import { api, offers } from '../api.js';
import { copyText, h } from '../dom.js';
import { formatDate, formatRelative, formatValue, t } from '../i18n.js';

export function deviceStatus(device) {
  return device.enabled === false ? 'disabled' : device.status;
}

export function statusBadge(status) {
  return h('span', { class: `badge status-${status}`, text: t(`status_${status}`) });
}

export function lastSeen(value) {
  return h('time', { datetime: value || null, title: value ? formatDate(value) : null, text: formatRelative(value) });
}

export function unavailable(what) {
  return h('p', { class: 'unavailable', text: t('not_available', { what }) });
}

export function errorText(error) {
  return h('p', { class: 'error', role: 'alert', text: (error && error.message) || t('error_generic') });
}

// What a 422 says of each invalid part of the request: pydantic's reason, without its "Value error, "
// prefix, and the field it is about (not "body").
export function problemLines(error) {
  const params = (error && error.problem && error.problem['invalid-params']) || [];
  return params.map((p) => {
    const field = String(p.name || '').replace(/^body\.?/, '');
    return String(p.reason || '').replace(/^Value error, /, '') + (field ? ` (${field})` : '');
  });
}

// Latest values of a device: [{metric, value, unit, ts}], whichever of value/value_bool/value_text
// the API filled.
export async function latestValues(deviceId) {
  if (!offers('GET', '/api/devices/{device_id}/latest')) return null;
  const data = await api('GET', `/api/devices/${encodeURIComponent(deviceId)}/latest`);
  const rows = Array.isArray(data) ? data : (data.items || data.metrics || []);
  return rows.map((row) => ({
    metric: row.metric ?? row.name,
    value: row.value ?? row.value_bool ?? row.value_text ?? null,
    unit: row.unit ?? null,
    ts: row.ts ?? row.time ?? row.at ?? null,
  }));
}

export function valueList(values) {
  if (values === null) return h('span', { class: 'muted', text: t('latest_unavailable') });
  if (!values.length) return h('span', { class: 'muted', text: '—' });
  return h('ul', { class: 'values' }, values.map((v) => h('li', {},
    h('span', { class: 'metric', text: v.metric }), ' ',
    h('span', { class: 'value', title: v.ts ? formatDate(v.ts) : null, text: formatValue(v.value, v.unit) }))));
}

// A secret shown once (device credential, generated password): kept only in these DOM nodes,
// never in storage, a variable of a longer life, or the URL; gone when the panel is closed.
export function secretPanel(titleKey, rows, extras = [], onDone = () => {}) {
  const panel = h('section', { class: 'card secret', role: 'region', 'aria-label': t(titleKey) },
    h('h2', { text: t(titleKey) }),
    h('p', { class: 'warning', text: t('shown_once') }),
    h('dl', { class: 'kv' }, rows.map(([label, value, testid]) => [
      h('dt', { text: label }),
      h('dd', {}, h('code', { class: 'copyable', 'data-testid': testid || null, text: value }),
        copyButton(value)),
    ])),
    extras,
    h('button', { type: 'button', class: 'primary', text: t('done_saved'),
      onclick: () => { panel.remove(); onDone(); } }));
  return panel;
}

export function copyButton(text, node) {
  const button = h('button', { type: 'button', class: 'small', text: t('copy') });
  button.addEventListener('click', async () => {
    const ok = await copyText(text, node || button.previousElementSibling);
    button.textContent = ok ? t('copied') : t('copy_select');
  });
  return button;
}

export function codeBlock(label, text) {
  const pre = h('pre', { class: 'code', tabindex: 0 }, h('code', { text }));
  return h('div', { class: 'codeblock' }, h('div', { class: 'codehead' }, h('span', { text: label }), copyButton(text, pre)), pre);
}

export function credentialPanel(ctx, credential, onDone) {
  const { username, password, client_id: clientId, topic_prefix: prefix, broker_host: host, broker_port: port } = credential;
  const caFile = 'broker-ca.pem';
  // A publicly trusted broker certificate (no CA file configured) is verified by the device's own CA store.
  const systemCa = ctx.config.system_ca && !ctx.config.ca_url;
  const trust = systemCa ? '--tls-use-os-certs' : `--cafile ${caFile}`;
  const pub = `mosquitto_pub -h ${host} -p ${port} ${trust} -V mqttv5 -q 1 \\\n  -i '${clientId}' -u '${username}' -P '${password}' \\\n  -t '${prefix}/telemetry' -m '{"ts": '$(date +%s%3N)', "metrics": {"temp": 21.5}}'`;
  const python = [
    'import json, ssl, time',
    'import paho.mqtt.client as mqtt',
    `c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=${JSON.stringify(clientId)}, protocol=mqtt.MQTTv5)`,
    `c.username_pw_set(${JSON.stringify(username)}, ${JSON.stringify(password)})`,
    systemCa ? 'c.tls_set(cert_reqs=ssl.CERT_REQUIRED)' : `c.tls_set(ca_certs=${JSON.stringify(caFile)}, cert_reqs=ssl.CERT_REQUIRED)`,
    `c.connect(${JSON.stringify(host)}, ${port})`,
    'c.loop_start()',
    'reading = {"ts": int(time.time() * 1000), "metrics": {"temp": 21.5}}',
    `c.publish(${JSON.stringify(`${prefix}/telemetry`)}, json.dumps(reading), qos=1).wait_for_publish()`,
    'c.disconnect()',
  ].join('\n');
  const rows = [
    [t('cred_host'), String(host), 'cred-host'],
    [t('cred_port'), String(port), 'cred-port'],
    [t('cred_username'), username, 'cred-username'],
    [t('cred_client_id'), clientId, 'cred-client-id'],
    [t('cred_password'), password, 'cred-password'],
    [t('cred_topic'), `${prefix}/telemetry`, 'cred-topic'],
  ];
  const extras = [
    credential.broker_synced === false ? h('p', { class: 'warning', text: t('cred_not_synced') }) : null,
    ctx.config.ca_url
      ? h('p', {}, h('a', { href: ctx.config.ca_url, download: caFile, text: t('cred_ca_download') }))
      : h('p', { class: 'muted', text: t(systemCa ? 'cred_ca_system' : 'cred_ca_ask') }),
    codeBlock(t('cred_example_shell'), pub),
    codeBlock(t('cred_example_python'), python),
  ];
  return secretPanel('cred_title', rows, extras, onDone);
}

export function section(titleKey, ...children) {
  return h('section', { class: 'card' }, h('h2', { text: t(titleKey) }), children);
}


// uPlot's minified build is a classic script (a global); it is fetched once, when a chart is first
// drawn, so the fleet page does not pay for it.
let uPlotLoading = null;
export function loadUPlot() {
  if (!uPlotLoading) {
    uPlotLoading = new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = 'vendor/uplot/uPlot.iife.min.js';
      script.onload = () => resolve(window.uPlot);
      script.onerror = () => { uPlotLoading = null; reject(new Error('chart library failed to load')); };
      document.head.append(script);
    });
  }
  return uPlotLoading;
}
