// Optional (main.bicep deployPostgres): Azure Database for PostgreSQL flexible server, Burstable tier, with the
// app's database. The app's roles (mqtt_saas_app, mqtt_saas_ingest) are created by sql/migrations, not here.

@description('Required. Base name of the resources, e.g. "mqtt-saas".')
param name string

@description('Optional. Location of the resources.')
param location string = resourceGroup().location

@description('Optional. Tags of the resources.')
param tags object = {}

@description('Required. Unique suffix for globally unique names (from uniqueString in main.bicep).')
param resourceToken string

@description('Optional. Administrator login of the server (runs the migrations).')
param administratorLogin string = 'mqttsaasadmin'

@description('Required. Administrator password of the server.')
@secure()
@minLength(12)
param administratorPassword string

@description('Optional. Burstable SKU of the server.')
@allowed([
  'Standard_B1ms'
  'Standard_B2s'
  'Standard_B2ms'
])
param skuName string = 'Standard_B1ms'

@description('Optional. Storage size in GB.')
@minValue(32)
param storageSizeGB int = 32

@description('Optional. PostgreSQL major version.')
@allowed([
  '15'
  '16'
])
param postgresVersion string = '16'

@description('Optional. Name of the app\'s database.')
param databaseName string = 'mqtt_saas'

@description('Optional. Days of backups kept.')
@minValue(7)
@maxValue(35)
param backupRetentionDays int = 7

resource server 'Microsoft.DBforPostgreSQL/flexibleServers@2022-12-01' = {
  name: 'psql-${name}-${resourceToken}'
  location: location
  tags: tags
  sku: {
    name: skuName
    tier: 'Burstable'
  }
  properties: {
    version: postgresVersion
    administratorLogin: administratorLogin
    administratorLoginPassword: administratorPassword
    storage: {
      storageSizeGB: storageSizeGB
    }
    backup: {
      backupRetentionDays: backupRetentionDays
      geoRedundantBackup: 'Disabled'
    }
    highAvailability: {
      mode: 'Disabled'
    }
    network: {
      publicNetworkAccess: 'Enabled'
    }
  }
}

resource database 'Microsoft.DBforPostgreSQL/flexibleServers/databases@2022-12-01' = {
  parent: server
  name: databaseName
  properties: {
    charset: 'UTF8'
    collation: 'en_US.utf8'
  }
}

// 0.0.0.0-0.0.0.0 is Azure's "allow Azure services" rule: Flex Consumption has no fixed outbound addresses.
resource allowAzureServices 'Microsoft.DBforPostgreSQL/flexibleServers/firewallRules@2022-12-01' = {
  parent: server
  name: 'AllowAllAzureServicesAndResourcesWithinAzureIps'
  properties: {
    startIpAddress: '0.0.0.0'
    endIpAddress: '0.0.0.0'
  }
}

@description('Host name of the server.')
output fqdn string = server.properties.fullyQualifiedDomainName

@description('Name of the app\'s database.')
output databaseName string = database.name
