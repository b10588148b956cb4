// Key Vault holding every secret the function app reads; the app resolves them through Key Vault references
// (modules/functionApp.bicep) with its system-assigned identity, authorised by Azure RBAC.

@description('Required. Base name of the resources, e.g. "mqtt-saas".')
param name string

@description('Optional. Location of the resources.')
param location string = resourceGroup().location

@description('Optional. Tags of the resources.')
param tags object = {}

@description('Required. Name of the vault (main.bicep computes it once: the broker VM needs it too).')
@minLength(3)
@maxLength(24)
param vaultName string

@description('Required. Object ID of the broker VM\'s identity; it may read the three broker passwords, nothing else.')
param brokerPrincipalId string

@description('Required. PostgreSQL URL of the application role (DATABASE_URL).')
@secure()
param databaseUrl string

@description('Required. PostgreSQL URL of the drain\'s role (INGEST_DATABASE_URL).')
@secure()
param ingestDatabaseUrl string

@description('Required. Broker password of the drain\'s client (MQTT_INGEST_PASSWORD).')
@secure()
param mqttIngestPassword string

@description('Required. Broker password of the provisioning client (MQTT_PROVISIONER_PASSWORD).')
@secure()
param mqttProvisionerPassword string

@description('Required. Broker password of the admin API\'s commands-only client (MQTT_COMMANDER_PASSWORD).')
@secure()
param mqttCommanderPassword string

@description('Required. Signing key of the admin API\'s access tokens, at least 32 bytes (AUTH_JWT_SECRET).')
@secure()
@minLength(32)
param authJwtSecret string

@description('Required. PostgreSQL URL of the maintenance timers\' role (MAINTENANCE_DATABASE_URL).')
@secure()
param maintenanceDatabaseUrl string

@description('Optional. Shared HS256 secret of the external identity provider (AUTH_EXTERNAL_SECRET). Empty: no secret is stored (JWKS or no external provider).')
@secure()
param authExternalSecret string = ''

@description('Optional. Expiry of the secrets, as Unix time (seconds). Default: none set (0).')
param secretExpiry int = 0

var keyVaultSecretsUserRoleId = '4633458b-17de-408a-b874-0445c86b69e6'
var secretAttributes = secretExpiry > 0 ? {
  enabled: true
  exp: secretExpiry
} : {
  enabled: true
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  #checkov:skip=CKV_AZURE_109:The Flex Consumption app has no VNet integration here, so the vault takes requests from the Internet; every read needs an Entra ID token with an RBAC role.
  #checkov:skip=CKV_AZURE_189:Same reason as CKV_AZURE_109.
  name: vaultName
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
  }
}

resource databaseUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  #checkov:skip=CKV_AZURE_41:Expiry is optional (secretExpiry); a database URL is rotated with its password, not on a timer.
  parent: keyVault
  name: 'database-url'
  properties: {
    value: databaseUrl
    contentType: 'text/plain'
    attributes: secretAttributes
  }
}

resource ingestDatabaseUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  #checkov:skip=CKV_AZURE_41:Expiry is optional (secretExpiry), see database-url.
  parent: keyVault
  name: 'ingest-database-url'
  properties: {
    value: ingestDatabaseUrl
    contentType: 'text/plain'
    attributes: secretAttributes
  }
}

resource mqttIngestPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  #checkov:skip=CKV_AZURE_41:Expiry is optional (secretExpiry), see database-url.
  parent: keyVault
  name: 'mqtt-ingest-password'
  properties: {
    value: mqttIngestPassword
    contentType: 'text/plain'
    attributes: secretAttributes
  }
}

resource mqttProvisionerPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  #checkov:skip=CKV_AZURE_41:Expiry is optional (secretExpiry), see database-url.
  parent: keyVault
  name: 'mqtt-provisioner-password'
  properties: {
    value: mqttProvisionerPassword
    contentType: 'text/plain'
    attributes: secretAttributes
  }
}

resource mqttCommanderPasswordSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  #checkov:skip=CKV_AZURE_41:Expiry is optional (secretExpiry), see database-url.
  parent: keyVault
  name: 'mqtt-commander-password'
  properties: {
    value: mqttCommanderPassword
    contentType: 'text/plain'
    attributes: secretAttributes
  }
}

resource maintenanceDatabaseUrlSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  #checkov:skip=CKV_AZURE_41:Expiry is optional (secretExpiry), see database-url.
  parent: keyVault
  name: 'maintenance-database-url'
  properties: {
    value: maintenanceDatabaseUrl
    contentType: 'text/plain'
    attributes: secretAttributes
  }
}

// Only when given: a secret with an empty value breaks Key Vault reference resolution for the whole app
// (every reference then stays its literal @Microsoft.KeyVault(...) text), and the app reads an unset
// AUTH_EXTERNAL_SECRET as "no shared secret" anyway.
resource authExternalSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = if (!empty(authExternalSecret)) {
  #checkov:skip=CKV_AZURE_41:Expiry is optional (secretExpiry); the provider's shared secret is rotated with the provider.
  #checkov:skip=CKV_AZURE_114:contentType is set below; checkov does not read the body of a conditional resource.
  parent: keyVault
  name: 'auth-external-secret'
  properties: {
    value: authExternalSecret
    contentType: 'text/plain'
    attributes: secretAttributes
  }
}

resource authJwtSecretSecret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' = {
  #checkov:skip=CKV_AZURE_41:Expiry is optional (secretExpiry); rotating the signing key logs every user out.
  parent: keyVault
  name: 'auth-jwt-secret'
  properties: {
    value: authJwtSecret
    contentType: 'text/plain'
    attributes: secretAttributes
  }
}

// The broker VM reads the service clients' passwords at first boot to create their clients.
resource brokerIngestPasswordRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(mqttIngestPasswordSecret.id, brokerPrincipalId, keyVaultSecretsUserRoleId)
  scope: mqttIngestPasswordSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: brokerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource brokerProvisionerPasswordRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(mqttProvisionerPasswordSecret.id, brokerPrincipalId, keyVaultSecretsUserRoleId)
  scope: mqttProvisionerPasswordSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: brokerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

resource brokerCommanderPasswordRole 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(mqttCommanderPasswordSecret.id, brokerPrincipalId, keyVaultSecretsUserRoleId)
  scope: mqttCommanderPasswordSecret
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUserRoleId)
    principalId: brokerPrincipalId
    principalType: 'ServicePrincipal'
  }
}

@description('Name of the key vault.')
output keyVaultName string = keyVault.name

@description('Secret URIs (without version, so the app picks up rotations) keyed by app setting name.')
output secretUris object = {
  DATABASE_URL: databaseUrlSecret.properties.secretUri
  INGEST_DATABASE_URL: ingestDatabaseUrlSecret.properties.secretUri
  MQTT_INGEST_PASSWORD: mqttIngestPasswordSecret.properties.secretUri
  MQTT_PROVISIONER_PASSWORD: mqttProvisionerPasswordSecret.properties.secretUri
  MQTT_COMMANDER_PASSWORD: mqttCommanderPasswordSecret.properties.secretUri
  AUTH_JWT_SECRET: authJwtSecretSecret.properties.secretUri
  MAINTENANCE_DATABASE_URL: maintenanceDatabaseUrlSecret.properties.secretUri
  // Empty when no external secret is stored: the app setting is then empty too (modules/functionApp.bicep).
  AUTH_EXTERNAL_SECRET: empty(authExternalSecret) ? '' : authExternalSecretSecret.properties.secretUri
}
