// The function app on Flex Consumption (FC1, Linux): its own host storage (timer leases, the deployment
// package container), the plan, the site with a system-assigned identity, every app setting shared/core/settings.py
// reads (secrets as Key Vault references), and the identity's role assignments.

@description('Required. Base name of the resources, e.g. "mqtt-saas".')
param name string

@description('Optional. Location of the resources.')
param location string = resourceGroup().location

@description('Optional. Tags of the resources.')
param tags object = {}

@description('Required. Unique suffix for globally unique names (from uniqueString in main.bicep).')
param resourceToken string

@description('Optional. Python version of the Flex Consumption runtime.')
@allowed([
  '3.11'
  '3.12'
])
param pythonVersion string = '3.11'

@description('Optional. Instance memory in MB. 512 covers the drain\'s peak memory (README, cost section) and costs a quarter of the 2048 MB default.')
@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 512

@description('Optional. Maximum number of instances the plan scales to.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@description('Required. Connection string of Application Insights.')
param applicationInsightsConnectionString string

@description('Required. Name of the Application Insights component (the identity gets Monitoring Metrics Publisher on it).')
param applicationInsightsName string

@description('Required. Name of the key vault holding the secrets.')
param keyVaultName string

@description('Required. Key Vault secret URIs keyed by app setting name (keyVault.bicep output secretUris).')
param secretUris object

@description('Required. Name of the archive storage account (the identity gets Storage Blob Data Contributor on it).')
param archiveStorageAccountName string

@description('Required. Blob endpoint of the archive storage account (STORAGE_ACCOUNT_URL), reached with the managed identity.')
param archiveBlobEndpoint string

@description('Required. Container of the cold archive (ARCHIVE_CONTAINER); its blobs are the ones the lifecycle rule tiers.')
param archiveContainerName string

@description('Required. Container of the export files (EXPORT_CONTAINER).')
param exportContainerName string

@description('Required. Host name of the broker (MQTT_HOST).')
param mqttHost string

@description('Optional. TLS port of the broker (MQTT_PORT).')
param mqttPort int = 8883

@description('Optional. Path of the broker CA certificate inside the deployed app (MQTT_CA_FILE). Copy the VM\'s ca.crt there before publishing. Empty: the system CA store (a Let\'s Encrypt broker).')
param mqttCaFile string = '/home/site/wwwroot/certs/broker-ca.crt'

@description('Optional. NCRONTAB schedule of mqtt_ingest (INGEST_SCHEDULE). Every 60 s, the README\'s cost choice.')
param ingestSchedule string = '0 */1 * * * *'

@description('Optional. Time budget of one drain run in seconds (INGEST_TIME_BUDGET_S), below the schedule interval.')
param ingestTimeBudgetSeconds int = 50

@description('Optional. NCRONTAB schedule of the alert evaluator timer (ALERT_SCHEDULE); the host cannot index the timer without it.')
param alertSchedule string = '30 */1 * * * *'

@description('Optional. NCRONTAB schedule of the rollup timer (ROLLUP_SCHEDULE); the host cannot index the timer without it.')
param rollupSchedule string = '0 */5 * * * *'

@description('Optional. NCRONTAB schedule of the blob archiver timer (ARCHIVE_SCHEDULE); the host cannot index the timer without it.')
param archiveSchedule string = '0 15 * * * *'

@description('Optional. Issuer of the external identity provider\'s tokens (AUTH_EXTERNAL_ISSUER). Empty: external sign-in is off.')
param authExternalIssuer string = ''

@description('Optional. Audience of the external identity provider\'s tokens (AUTH_EXTERNAL_AUDIENCE).')
param authExternalAudience string = ''

@description('Optional. JWKS address of the external identity provider (AUTH_EXTERNAL_JWKS_URL); empty when it signs with a shared secret.')
param authExternalJwksUri string = ''

@description('Optional. Dotted claim path of the tenant in external tokens (AUTH_EXTERNAL_TENANT_CLAIM).')
param authExternalTenantClaim string = 'app_metadata.tenant'

@description('Optional. Dotted claim path of the role in external tokens (AUTH_EXTERNAL_ROLE_CLAIM).')
param authExternalRoleClaim string = 'app_metadata.role'

@description('Optional. Dotted claim path of the e-mail address in external tokens (AUTH_EXTERNAL_EMAIL_CLAIM).')
param authExternalEmailClaim string = 'email'

@description('Optional. The external provider\'s sign-in (authorization) URL the dashboard sends readers to (AUTH_EXTERNAL_SIGN_IN_URL). Empty: no such button.')
param authExternalSignInUri string = ''

// Built-in role definition IDs.
var storageBlobDataOwnerRoleId = 'b7e6dc6d-f1e8-4753-bfe8-cba1d4a0bbd0'
var storageBlobDataContributorRoleId = 'ba92f5b4-2d11-453d-a403-e96b0029c9fe'
var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var monitoringMetricsPublisherRoleId = '3913510d-42f4-4e42-8a64-420c390055eb'

var hostStorageName = take(toLower('stfn${replace(name, '-', '')}${resourceToken}'), 24)
var deploymentContainerName = 'app-package-${resourceToken}'

resource hostStorage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  #checkov:skip=CKV_AZURE_43:The name is built from the resource token (take(..., 24) of lower-case letters and digits); the check cannot evaluate interpolation.
  #checkov:skip=CKV_AZURE_59:Flex Consumption without VNet integration reaches its host storage over the public endpoint; shared keys are off, so access needs Entra ID.
  #checkov:skip=CKV_AZURE_35:Same reason as CKV_AZURE_59.
  #checkov:skip=CKV_AZURE_206:Host storage holds leases and a redeployable package; LRS is enough.
  name: hostStorageName
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource hostBlobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: hostStorage
  name: 'default'
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: hostBlobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  #checkov:skip=CKV_AZURE_225:Zone redundancy is not needed for a drain that catches up on the next run (messages wait on the broker).
  name: 'plan-${name}-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

// Secrets come from Key Vault; everything else is a plain value. Keep in step with shared/core/settings.py:
// tests/infra/test_bicep.py fails when a setting the app reads is missing here or one set here is read by nobody.
var appSettings = [
  {
    name: 'AzureWebJobsStorage__accountName'
    value: hostStorage.name
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: applicationInsightsConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'Authorization=AAD'
  }
  {
    name: 'DATABASE_URL'
    value: '@Microsoft.KeyVault(SecretUri=${secretUris.DATABASE_URL})'
  }
  {
    name: 'DATABASE_POOL_MAX'
    value: '4'
  }
  {
    name: 'INGEST_DATABASE_URL'
    value: '@Microsoft.KeyVault(SecretUri=${secretUris.INGEST_DATABASE_URL})'
  }
  {
    name: 'MQTT_HOST'
    value: mqttHost
  }
  {
    name: 'MQTT_PORT'
    value: string(mqttPort)
  }
  {
    name: 'MQTT_CA_FILE'
    value: mqttCaFile
  }
  {
    name: 'MQTT_INGEST_USERNAME'
    value: 'mqtt-saas-ingest'
  }
  {
    name: 'MQTT_INGEST_PASSWORD'
    value: '@Microsoft.KeyVault(SecretUri=${secretUris.MQTT_INGEST_PASSWORD})'
  }
  {
    name: 'MQTT_INGEST_CLIENT_ID'
    value: 'mqtt-saas-ingest'
  }
  {
    name: 'MQTT_PROVISIONER_USERNAME'
    value: 'mqtt-saas-provisioner'
  }
  {
    name: 'MQTT_PROVISIONER_PASSWORD'
    value: '@Microsoft.KeyVault(SecretUri=${secretUris.MQTT_PROVISIONER_PASSWORD})'
  }
  {
    name: 'MQTT_COMMANDER_USERNAME'
    value: 'mqtt-saas-commander'
  }
  {
    name: 'MQTT_COMMANDER_PASSWORD'
    value: '@Microsoft.KeyVault(SecretUri=${secretUris.MQTT_COMMANDER_PASSWORD})'
  }
  {
    name: 'MQTT_COMMAND_TIMEOUT_S'
    value: '5'
  }
  {
    name: 'MQTT_COMMAND_EXPIRY_S'
    value: '3600'
  }
  {
    name: 'INGEST_SCHEDULE'
    value: ingestSchedule
  }
  {
    name: 'INGEST_BATCH_SIZE'
    value: '5000'
  }
  {
    name: 'INGEST_FLUSH_INTERVAL_S'
    value: '1.0'
  }
  {
    name: 'INGEST_TIME_BUDGET_S'
    value: string(ingestTimeBudgetSeconds)
  }
  {
    name: 'INGEST_IDLE_EXIT_S'
    value: '3'
  }
  {
    name: 'INGEST_DB_RETRY_S'
    value: '30'
  }
  {
    name: 'INGEST_SESSION_EXPIRY_S'
    value: '604800'
  }
  {
    name: 'INGEST_MAX_PAYLOAD_BYTES'
    value: '65536'
  }
  {
    name: 'INGEST_MAX_METRICS'
    value: '100'
  }
  {
    name: 'INGEST_MAX_RECORDS'
    value: '1000'
  }
  {
    name: 'INGEST_MAX_PAST_DAYS'
    value: '30'
  }
  {
    name: 'INGEST_MAX_FUTURE_S'
    value: '3600'
  }
  {
    name: 'AUTH_JWT_SECRET'
    value: '@Microsoft.KeyVault(SecretUri=${secretUris.AUTH_JWT_SECRET})'
  }
  {
    name: 'AUTH_JWT_ISSUER'
    value: 'mqtt-saas'
  }
  {
    name: 'AUTH_JWT_AUDIENCE'
    value: 'mqtt-saas-api'
  }
  {
    name: 'AUTH_ACCESS_TOKEN_TTL_S'
    value: '900'
  }
  {
    name: 'AUTH_REFRESH_TOKEN_TTL_S'
    value: '2592000'
  }
  {
    name: 'AUTH_LOGIN_WINDOW_S'
    value: '900'
  }
  {
    name: 'AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT'
    value: '5'
  }
  {
    name: 'AUTH_LOGIN_MAX_FAILURES_PER_SOURCE'
    value: '50'
  }
  {
    name: 'AUTH_EXTERNAL_ISSUER'
    value: authExternalIssuer
  }
  {
    name: 'AUTH_EXTERNAL_AUDIENCE'
    value: authExternalAudience
  }
  {
    // Empty when main.bicep got no authExternalSecret: keyVault.bicep stores no empty secret.
    name: 'AUTH_EXTERNAL_SECRET'
    value: empty(secretUris.AUTH_EXTERNAL_SECRET) ? '' : '@Microsoft.KeyVault(SecretUri=${secretUris.AUTH_EXTERNAL_SECRET})'
  }
  {
    name: 'AUTH_EXTERNAL_JWKS_URL'
    value: authExternalJwksUri
  }
  {
    name: 'AUTH_EXTERNAL_JWKS_TIMEOUT_S'
    value: '5'
  }
  {
    name: 'AUTH_EXTERNAL_JWKS_CACHE_S'
    value: '300'
  }
  {
    name: 'AUTH_EXTERNAL_TENANT_CLAIM'
    value: authExternalTenantClaim
  }
  {
    name: 'AUTH_EXTERNAL_ROLE_CLAIM'
    value: authExternalRoleClaim
  }
  {
    name: 'AUTH_EXTERNAL_EMAIL_CLAIM'
    value: authExternalEmailClaim
  }
  {
    name: 'AUTH_EXTERNAL_SIGN_IN_URL'
    value: authExternalSignInUri
  }
  {
    name: 'PLATFORM_JWT_AUDIENCE'
    value: 'mqtt-saas-platform'
  }
  {
    name: 'PLATFORM_ACCESS_TOKEN_TTL_S'
    value: '900'
  }
  {
    name: 'MAINTENANCE_DATABASE_URL'
    value: '@Microsoft.KeyVault(SecretUri=${secretUris.MAINTENANCE_DATABASE_URL})'
  }
  {
    name: 'ROLLUP_SCHEDULE'
    value: rollupSchedule
  }
  {
    name: 'ALERT_SCHEDULE'
    value: alertSchedule
  }
  {
    name: 'WEBHOOK_ALLOW_HTTP'
    value: 'false'
  }
  {
    name: 'WEBHOOK_ALLOW_PRIVATE_TARGETS'
    value: 'false'
  }
  {
    name: 'WEBHOOK_TIMEOUT_S'
    value: '5'
  }
  {
    name: 'WEBHOOK_DELIVERY_BUDGET_S'
    value: '20'
  }
  {
    name: 'WEBHOOK_MAX_ATTEMPTS'
    value: '10'
  }
  {
    name: 'ROLLUP_TIME_BUDGET_S'
    value: '240'
  }
  {
    name: 'ROLLUP_LAG_S'
    value: '120'
  }
  {
    name: 'ROLLUP_CHUNK_S'
    value: '900'
  }
  {
    name: 'ROLLUP_1M_RETENTION_DAYS'
    value: '400'
  }
  {
    name: 'ROLLUP_1H_RETENTION_DAYS'
    value: '3650'
  }
  {
    name: 'ARCHIVE_SCHEDULE'
    value: archiveSchedule
  }
  {
    name: 'ARCHIVE_TIME_BUDGET_S'
    value: '480'
  }
  {
    name: 'ARCHIVE_CONTAINER'
    value: archiveContainerName
  }
  {
    name: 'PARTITION_AHEAD_DAYS'
    value: '7'
  }
  {
    // The managed identity, no key: the account refuses shared keys (modules/storage.bicep).
    name: 'STORAGE_ACCOUNT_URL'
    value: archiveBlobEndpoint
  }
  {
    name: 'EXPORT_CONTAINER'
    value: exportContainerName
  }
  {
    name: 'EXPORT_LINK_TTL_S'
    value: '3600'
  }
  {
    name: 'EXPORT_MAX_DAYS'
    value: '31'
  }
]

resource functionApp 'Microsoft.Web/sites@2024-04-01' = {
  #checkov:skip=CKV_AZURE_17:The app's only HTTP callers are the admin API's clients; client certificates are not part of its auth.
  #checkov:skip=CKV_AZURE_212:Flex Consumption scales itself; a minimum instance count does not apply.
  #checkov:skip=CKV_AZURE_222:Public network access: devices never call it, but the admin API is reached over the Internet.
  #checkov:skip=CKV_AZURE_213:No health check path: the drain is a timer, and Flex Consumption replaces unhealthy instances itself.
  name: 'func-${name}-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp,linux'
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: 'SystemAssigned'
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: appSettings
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${hostStorage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'SystemAssignedIdentity'
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: pythonVersion
      }
    }
  }
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource archiveStorage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: archiveStorageAccountName
}

// Timer leases and the deployment package: the host's own storage, identity-based (no shared key).
resource hostStorageRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(hostStorage.id, functionApp.id, storageBlobDataOwnerRoleId)
  scope: hostStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwnerRoleId)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

// The archive, rollup retention and exports read and write blobs with the identity; export links are user
// delegation SAS, whose key (generateUserDelegationKey) this role includes as well.
resource archiveStorageRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(archiveStorage.id, functionApp.id, storageBlobDataContributorRoleId)
  scope: archiveStorage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataContributorRoleId)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource keyVaultSecretsRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, functionApp.id, keyVaultSecretsUserRoleId)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// Application Insights has local (key) auth disabled: telemetry is sent with the identity.
resource monitoringPublisherRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, functionApp.id, monitoringMetricsPublisherRoleId)
  scope: applicationInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisherRoleId)
    principalId: functionApp.identity.principalId
    principalType: 'ServicePrincipal'
  }
}

@description('Name of the function app.')
output functionAppName string = functionApp.name

@description('HTTPS base URL of the function app (HTTP routes are under /api).')
output functionAppUrl string = 'https://${functionApp.properties.defaultHostName}'

@description('Object ID of the function app\'s system-assigned identity.')
output principalId string = functionApp.identity.principalId
