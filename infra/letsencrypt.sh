#!/usr/bin/env bash
# Gets the broker a Let's Encrypt certificate for its host name and hands it to Mosquitto; safe to run again.
#
# On the VM (letsEncryptEmail set): cloud-init writes this to /opt/mqtt-saas/letsencrypt.sh and its settings to
# /etc/mqtt-saas/letsencrypt.env; setup-broker.sh runs it once Mosquitto is up on its temporary certificate (signed by
# the VM's own CA), and mqtt-saas-letsencrypt.timer runs it every 30 minutes, so a first attempt that failed (a
# custom name whose DNS record came later, Let's Encrypt unreachable) is retried without anyone logging in. Once the
# certificate exists a run only checks that Mosquitto serves it.
# On a broker deployed without it: install the deploy hook, then run this with the settings in the environment:
#   scp scripts/rotate_broker_cert azureuser@<brokerHost>: && ssh azureuser@<brokerHost> \
#       sudo install -m 0755 rotate_broker_cert /usr/local/sbin/rotate_broker_cert
#   ssh azureuser@<brokerHost> sudo LE_DOMAIN=<brokerHost> LE_EMAIL=<you@your.org> bash -s < infra/letsencrypt.sh
#   (and open 80/tcp in the NSG, which only a Let's Encrypt deployment has).
#
# HTTP-01 with certbot's own standalone server on port 80. ufw opens 80 only while certbot runs: its pre and post
# hooks, which certbot stores in /etc/letsencrypt/renewal/<name>.conf and runs again around every renewal that
# certbot.timer (twice a day, from the certbot package) makes; the trap below closes it too should certbot die
# before its post hook. The deploy hook (scripts/rotate_broker_cert certbot-hook) installs fullchain.pem and
# privkey.pem as Mosquitto's /etc/mosquitto/certs/server.crt and server.key (root:mosquitto, 0644 and 0640, an
# atomic rename, the old pair kept as *.prev), the paths infra/generated/mosquitto.conf names, and reloads
# Mosquitto, or restarts it when the key type changes (the temporary certificate is RSA, Let's Encrypt's ECDSA by
# default: a reload would keep serving the RSA one beside it).
#
# Until the first certificate is installed Mosquitto keeps serving the temporary one, so a failure here never takes
# the broker down; it is reported in STATUS_FILE (one line, which scripts/deploy prints), on stderr (the cloud-init
# log) and in /var/log/letsencrypt/letsencrypt.log. Exit 0 when Mosquitto has the certificate, 1 when not.
#
# Environment: LE_DOMAIN, LE_EMAIL (required); LE_KEY_TYPE=ecdsa|rsa (default ecdsa); LE_STAGING=true for Let's
# Encrypt's staging server (untrusted certificates, generous limits: for trying the setup out). For tests and odd
# layouts: STATUS_FILE, LIVE_DIR=/etc/letsencrypt/live, CERT_DIR=/etc/mosquitto/certs,
# DEPLOY_HOOK="/usr/local/sbin/rotate_broker_cert certbot-hook".
set -euo pipefail

LE_KEY_TYPE="${LE_KEY_TYPE:-ecdsa}"
STATUS_FILE="${STATUS_FILE:-/var/lib/mqtt-saas/letsencrypt-status}"
LIVE_DIR="${LIVE_DIR:-/etc/letsencrypt/live}"
CERT_DIR="${CERT_DIR:-/etc/mosquitto/certs}"
DEPLOY_HOOK="${DEPLOY_HOOK:-/usr/local/sbin/rotate_broker_cert certbot-hook}"
# ufw as certbot's hooks run it: the same words open and close the port, so a renewal leaves nothing behind.
OPEN_80="ufw allow 80/tcp"
CLOSE_80="ufw delete allow 80/tcp"

report() {
    # $1 ok|failed, $2 the reason: one line for people and for scripts/deploy.
    mkdir -p "$(dirname "$STATUS_FILE")"
    printf '%s %s: %s\n' "$1" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$2" >"$STATUS_FILE.new"
    chmod 0644 "$STATUS_FILE.new"
    mv -f "$STATUS_FILE.new" "$STATUS_FILE"
    if [ "$1" = ok ]; then echo "letsencrypt: $2"; else echo "LET'S ENCRYPT FAILED: $2" >&2; fi
}

[ -n "${LE_DOMAIN:-}" ] || { report failed "LE_DOMAIN is not set"; exit 1; }
[ -n "${LE_EMAIL:-}" ] || { report failed "LE_EMAIL is not set"; exit 1; }
case "$LE_KEY_TYPE" in
    ecdsa | rsa) ;;
    *) report failed "LE_KEY_TYPE must be ecdsa or rsa, not $LE_KEY_TYPE"; exit 1 ;;
esac
[ -x "${DEPLOY_HOOK%% *}" ] || { report failed "deploy hook ${DEPLOY_HOOK%% *} is missing"; exit 1; }

lineage="$LIVE_DIR/$LE_DOMAIN"
served() {
    # Mosquitto's file is the lineage's certificate (after a renewal both change together, by the deploy hook).
    [ -f "$CERT_DIR/server.crt" ] && [ -f "$lineage/fullchain.pem" ] \
        && cmp -s "$lineage/fullchain.pem" "$CERT_DIR/server.crt"
}
expiry() { openssl x509 -in "$lineage/fullchain.pem" -noout -enddate | sed 's/^notAfter=//'; }

if [ -f "$lineage/fullchain.pem" ]; then
    # Issued before: renewals are certbot.timer's. Only a deploy hook that failed after issuance is made good here.
    if ! served; then
        RENEWED_LINEAGE="$lineage" RENEWED_DOMAINS="$LE_DOMAIN" sh -c "$DEPLOY_HOOK" \
            || { report failed "certificate for $LE_DOMAIN exists but could not be installed for Mosquitto"; exit 1; }
    fi
    report ok "certificate for $LE_DOMAIN served by Mosquitto, valid until $(expiry); certbot.timer renews it"
    exit 0
fi

if ! command -v certbot >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends certbot >/dev/null \
        || { report failed "apt-get could not install certbot"; exit 1; }
fi

trap '$CLOSE_80 >/dev/null 2>&1 || true' EXIT
extra=()
if [ "${LE_STAGING:-false}" = true ]; then extra+=(--staging); fi
if certbot certonly --standalone --non-interactive --agree-tos --no-eff-email --email "$LE_EMAIL" \
        --domain "$LE_DOMAIN" --cert-name "$LE_DOMAIN" --key-type "$LE_KEY_TYPE" \
        --pre-hook "$OPEN_80" --post-hook "$CLOSE_80" --deploy-hook "$DEPLOY_HOOK" "${extra[@]}"; then
    if served; then
        report ok "certificate for $LE_DOMAIN served by Mosquitto, valid until $(expiry); certbot.timer renews it"
        exit 0
    fi
    report failed "certbot got a certificate for $LE_DOMAIN but the deploy hook did not install it (see above)"
    exit 1
fi
report failed "certbot could not get a certificate for $LE_DOMAIN (DNS name pointing here? 80/tcp open in the NSG? \
rate limits?): /var/log/letsencrypt/letsencrypt.log; Mosquitto keeps its temporary certificate; retried every 30 min"
exit 1
