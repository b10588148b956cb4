// mqtt-saas on Azure: one small Mosquitto VM (MQTT v5 over TLS on 8883, dynamic security), a Flex Consumption
// function app draining it into PostgreSQL, a Blob archive, Key Vault for every secret, monitoring and alerts.
// Deploy into a resource group:
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.parameters.json -p adminSshPublicKey=@~/.ssh/id_ed25519.pub ...
// Each module declares its resources directly, so scanners (checkov) see all of them.

targetScope = 'resourceGroup'

@description('Optional. Base name of every resource.')
@minLength(3)
@maxLength(16)
param name string = 'mqtt-saas'

@description('Optional. Location of every resource.')
param location string = resourceGroup().location

@description('Optional. Tags of every resource.')
param tags object = {
  application: 'mqtt-saas'
}

@description('Required. The one address allowed to SSH to the broker, as a /32 CIDR, e.g. "203.0.113.7/32".')
@minLength(9)
param adminSourceCidr string

@description('Optional. SSH user of the broker VM.')
param adminUsername string = 'azureuser'

@description('Required. SSH public key of the admin user (the VM has no password login).')
@minLength(80)
param adminSshPublicKey string

@description('Optional. Size of the broker VM.')
param vmSize string = 'Standard_B1s'

@description('Optional. Also accept MQTT over WebSockets (TLS) on 8884.')
param enableWebsockets bool = false

@description('Optional. E-mail address of the Let\'s Encrypt account. Set: the broker gets a publicly trusted Let\'s Encrypt certificate for its host name (HTTP-01: port 80 open in the NSG, and in the VM\'s firewall only while certbot runs; renewed by certbot\'s timer), devices and the app verify it with their system CA store (MQTT_CA_FILE empty). Empty: cloud-init generates a private CA whose ca.crt devices and the app need.')
param letsEncryptEmail string = ''

@description('Optional. DNS label of the broker\'s public IP: Azure then provides the name <label>.<region>.cloudapp.azure.com (no DNS of your own needed). Empty: "<name>-<resourceToken>".')
@maxLength(63)
param brokerDnsLabel string = ''

@description('Optional. A host name you control, e.g. "mqtt.example.org", as a CNAME to <label>.<region>.cloudapp.azure.com (output brokerAzureHost) or an A record to brokerIpAddress: devices, the app and the certificate use it instead of Azure\'s name. Set letsEncryptEmail with it (scripts/deploy refuses it without). Empty: Azure\'s name.')
param brokerCustomDnsName string = ''

@description('Optional. Key type of the Let\'s Encrypt certificate: ecdsa (P-256: cheaper TLS handshakes, docs/capacity.md) or rsa (2048, for device TLS stacks without ECDSA).')
@allowed([
  'ecdsa'
  'rsa'
])
param letsEncryptKeyType string = 'ecdsa'

@description('Optional. The broker VM exists already (scripts/deploy sets this after az vm list finds it): the VM is referenced, not redeployed, because Azure refuses to change an existing VM\'s cloud-init (customData: PropertyChangeNotAllowed). Its network, identity and every output stay as they are; cloud-init changes are rolled as docs/runbook.md 6.8 says.')
param brokerVmExists bool = false

@description('Required. E-mail address the alerts go to.')
@minLength(3)
param alertEmail string

@description('Optional. Instance memory of the function app in MB (512: README, cost section).')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512

@description('Optional. NCRONTAB schedule of the drain (INGEST_SCHEDULE).')
param ingestSchedule string = '0 */1 * * * *'

@description('Optional. NCRONTAB schedule of the alert evaluator (ALERT_SCHEDULE).')
param alertSchedule string = '30 */1 * * * *'

@description('Optional. NCRONTAB schedule of the rollups (ROLLUP_SCHEDULE).')
param rollupSchedule string = '0 */5 * * * *'

@description('Optional. NCRONTAB schedule of the blob archiver (ARCHIVE_SCHEDULE): partitions, archive, retention.')
param archiveSchedule string = '0 15 * * * *'

@description('Optional. Issuer of an external identity provider\'s tokens, e.g. "https://<project>.supabase.co/auth/v1" (AUTH_EXTERNAL_ISSUER). Empty: external sign-in is off.')
param authExternalIssuer string = ''

@description('Optional. Audience of the external provider\'s tokens, e.g. "authenticated" (AUTH_EXTERNAL_AUDIENCE).')
param authExternalAudience string = ''

@description('Optional. JWKS address of the external provider (AUTH_EXTERNAL_JWKS_URL); leave empty when it signs with a shared secret (authExternalSecret). Exactly one of the two.')
param authExternalJwksUri string = ''

@description('Optional. Dotted claim path of the tenant (slug or id) in external tokens (AUTH_EXTERNAL_TENANT_CLAIM).')
param authExternalTenantClaim string = 'app_metadata.tenant'

@description('Optional. Dotted claim path of the role in external tokens (AUTH_EXTERNAL_ROLE_CLAIM); it only narrows our stored role.')
param authExternalRoleClaim string = 'app_metadata.role'

@description('Optional. Dotted claim path of the e-mail address in external tokens (AUTH_EXTERNAL_EMAIL_CLAIM).')
param authExternalEmailClaim string = 'email'

@description('Optional. The external provider\'s sign-in (authorization) URL for the dashboard (AUTH_EXTERNAL_SIGN_IN_URL): the page adds state and redirect_uri, or fills a {state} placeholder. Empty: no provider sign-in button.')
param authExternalSignInUri string = ''

@description('Required. PostgreSQL URL of the application role mqtt_saas_app (DATABASE_URL), e.g. postgresql://mqtt_saas_app:...@host:5432/mqtt_saas?sslmode=require.')
@secure()
param databaseUrl string

@description('Required. PostgreSQL URL of the drain\'s role mqtt_saas_ingest (INGEST_DATABASE_URL).')
@secure()
param ingestDatabaseUrl string

@description('Required. Broker password of the drain\'s client mqtt-saas-ingest (MQTT_INGEST_PASSWORD).')
@secure()
param mqttIngestPassword string

@description('Required. Broker password of the provisioning client mqtt-saas-provisioner (MQTT_PROVISIONER_PASSWORD).')
@secure()
param mqttProvisionerPassword string

@description('Required. Broker password of the admin API\'s commands-only client mqtt-saas-commander (MQTT_COMMANDER_PASSWORD).')
@secure()
param mqttCommanderPassword string

@description('Required. Signing key of the admin API\'s access tokens (AUTH_JWT_SECRET), at least 32 bytes, e.g. openssl rand -hex 32.')
@secure()
@minLength(32)
param authJwtSecret string

@description('Required. PostgreSQL URL of the maintenance timers\' role mqtt_saas_maintenance (MAINTENANCE_DATABASE_URL): rollups, retention, archive.')
@secure()
param maintenanceDatabaseUrl string

@description('Optional. Shared HS256 secret of the external identity provider, at least 32 bytes (AUTH_EXTERNAL_SECRET). Empty: none (JWKS, or no external provider).')
@secure()
param authExternalSecret string = ''

@description('Optional. Create an Azure Database for PostgreSQL flexible server (Burstable). Off: bring your own PostgreSQL.')
param deployPostgres bool = false

@description('Optional. Administrator password of the PostgreSQL server; required when deployPostgres is true.')
@secure()
param postgresAdministratorPassword string = ''

var resourceToken = toLower(uniqueString(subscription().id, resourceGroup().id, name, location))
// Key vault names: 3-24 letters, digits and hyphens. Computed here: the broker VM's cloud-init needs the URI.
var keyVaultName = take('kv-${name}-${resourceToken}', 24)
var keyVaultUri = 'https://${keyVaultName}${environment().suffixes.keyvaultDns}/'
var letsEncrypt = !empty(letsEncryptEmail)
// The one name devices, the app and the certificate use.
var brokerHost = empty(brokerCustomDnsName) ? network.outputs.brokerFqdn : brokerCustomDnsName

module network 'modules/network.bicep' = {
  name: 'network-${resourceToken}'
  params: {
    name: name
    location: location
    tags: tags
    resourceToken: resourceToken
    adminSourceCidr: adminSourceCidr
    enableWebsockets: enableWebsockets
    enableLetsEncrypt: letsEncrypt
    dnsLabel: empty(brokerDnsLabel) ? '${name}-${resourceToken}' : brokerDnsLabel
  }
}

module brokerVm 'modules/brokerVm.bicep' = {
  name: 'broker-vm-${resourceToken}'
  params: {
    name: name
    location: location
    tags: tags
    resourceToken: resourceToken
    subnetId: network.outputs.subnetId
    publicIpId: network.outputs.publicIpId
    brokerFqdn: brokerHost
    vmSize: vmSize
    adminUsername: adminUsername
    adminSshPublicKey: adminSshPublicKey
    enableWebsockets: enableWebsockets
    keyVaultUri: keyVaultUri
    letsEncryptEmail: letsEncryptEmail
    letsEncryptKeyType: letsEncryptKeyType
    brokerVmExists: brokerVmExists
  }
}

module storage 'modules/storage.bicep' = {
  name: 'storage-${resourceToken}'
  params: {
    name: name
    location: location
    tags: tags
    resourceToken: resourceToken
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring-${resourceToken}'
  params: {
    name: name
    location: location
    tags: tags
    resourceToken: resourceToken
    alertEmail: alertEmail
    brokerVmId: brokerVm.outputs.vmId
  }
}

module keyVault 'modules/keyVault.bicep' = {
  name: 'key-vault-${resourceToken}'
  params: {
    name: name
    location: location
    tags: tags
    vaultName: keyVaultName
    brokerPrincipalId: brokerVm.outputs.principalId
    databaseUrl: databaseUrl
    ingestDatabaseUrl: ingestDatabaseUrl
    mqttIngestPassword: mqttIngestPassword
    mqttProvisionerPassword: mqttProvisionerPassword
    mqttCommanderPassword: mqttCommanderPassword
    authJwtSecret: authJwtSecret
    maintenanceDatabaseUrl: maintenanceDatabaseUrl
    authExternalSecret: authExternalSecret
  }
}

module functionApp 'modules/functionApp.bicep' = {
  name: 'function-app-${resourceToken}'
  params: {
    name: name
    location: location
    tags: tags
    resourceToken: resourceToken
    instanceMemoryMB: instanceMemoryMB
    ingestSchedule: ingestSchedule
    rollupSchedule: rollupSchedule
    alertSchedule: alertSchedule
    archiveSchedule: archiveSchedule
    authExternalIssuer: authExternalIssuer
    authExternalAudience: authExternalAudience
    authExternalJwksUri: authExternalJwksUri
    authExternalTenantClaim: authExternalTenantClaim
    authExternalRoleClaim: authExternalRoleClaim
    authExternalEmailClaim: authExternalEmailClaim
    authExternalSignInUri: authExternalSignInUri
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    applicationInsightsName: monitoring.outputs.applicationInsightsName
    keyVaultName: keyVault.outputs.keyVaultName
    secretUris: keyVault.outputs.secretUris
    archiveStorageAccountName: storage.outputs.storageAccountName
    archiveBlobEndpoint: storage.outputs.blobEndpoint
    archiveContainerName: storage.outputs.archiveContainerName
    exportContainerName: storage.outputs.exportContainerName
    mqttHost: brokerHost
    // Empty: the system CA store verifies Let's Encrypt's certificate.
    mqttCaFile: letsEncrypt ? '' : '/home/site/wwwroot/certs/broker-ca.crt'
  }
}

module postgres 'modules/postgres.bicep' = if (deployPostgres) {
  name: 'postgres-${resourceToken}'
  params: {
    name: name
    location: location
    tags: tags
    resourceToken: resourceToken
    administratorPassword: postgresAdministratorPassword
  }
}

@description('Host name devices and the drain connect to (MQTT v5 over TLS, port 8883; no plain-text port): brokerCustomDnsName when given, else Azure\'s name.')
output brokerHost string = brokerHost

@description('Azure\'s DNS name of the broker\'s public IP (<label>.<region>.cloudapp.azure.com): the target of brokerCustomDnsName\'s CNAME.')
output brokerAzureHost string = network.outputs.brokerFqdn

@description('Who signed the broker\'s certificate: "letsencrypt" (devices use their system CA store) or "generated-ca" (devices need ca.crt).')
output brokerCertificate string = letsEncrypt ? 'letsencrypt' : 'generated-ca'

@description('Public IPv4 address of the broker.')
output brokerIpAddress string = network.outputs.brokerIpAddress

@description('Name of the broker VM (az vm run-command invoke -g <rg> -n <brokerVmName>).')
output brokerVmName string = brokerVm.outputs.vmName

@description('Whether this deployment left an existing broker VM as it was (brokerVmExists): its cloud-init was not reapplied.')
output brokerVmReused bool = brokerVmExists

@description('Hash of the cloud-init a broker VM created from this template gets; an existing VM\'s tag mqtt-saas-cloud-init says which one it was created with.')
output brokerCloudInitHash string = brokerVm.outputs.cloudInitHash

@description('How to get the broker\'s CA certificate. Generated CA: cloud-init generates a private CA on the VM; fetch it over SSH from the admin address, then ship it with each device\'s credentials and into the app package at certs/broker-ca.crt (MQTT_CA_FILE). Let\'s Encrypt: nothing to fetch for devices with a CA store; the same file holds ISRG Root X1 and X2 for devices without one.')
output brokerCaCertificateCommand string = 'scp ${adminUsername}@${brokerHost}:ca.crt ./broker-ca.crt'

@description('Where the dynamic-security admin password is: generated on the VM, readable by root only. cloud-init creates the drain\'s, the provisioner\'s and the API commander\'s clients with the passwords in the key vault.')
output brokerAdminPasswordLocation string = 'ssh ${adminUsername}@${brokerHost} sudo cat /root/mosquitto-admin-password'

@description('HTTPS base URL of the function app (HTTP routes under /api).')
output functionAppUrl string = functionApp.outputs.functionAppUrl

@description('Name of the function app (for func azure functionapp publish).')
output functionAppName string = functionApp.outputs.functionAppName

@description('Name of the key vault holding the app\'s secrets.')
output keyVaultName string = keyVault.outputs.keyVaultName

@description('Archive storage account and container.')
output archiveLocation string = '${storage.outputs.storageAccountName}/${storage.outputs.archiveContainerName}'

@description('Blob endpoint of the archive storage account (STORAGE_ACCOUNT_URL; identity only, no shared keys): scripts/pg_backup.py --account-url, scripts/restore_archive.')
output storageAccountUrl string = storage.outputs.blobEndpoint

@description('Host name of the PostgreSQL flexible server; empty when deployPostgres is false.')
output postgresHost string = deployPostgres ? postgres.outputs.fqdn : ''
