// The cold archive and the exports: a storage account with two private containers. Archive blobs move to
// Cool and then Archive by a lifecycle rule; export files are deleted once every link to them has expired.
// No shared keys: the function app reaches it with its managed identity (Storage Blob Data Contributor,
// modules/functionApp.bicep) and signs export links as user delegation SAS; operators use --auth-mode login.

@description('Required. Base name of the resources, e.g. "mqtt-saas".')
param name string

@description('Optional. Location of the resources.')
param location string = resourceGroup().location

@description('Optional. Tags of the resources.')
param tags object = {}

@description('Required. Unique suffix for globally unique names (from uniqueString in main.bicep).')
param resourceToken string

@description('Optional. Name of the archive container.')
param archiveContainerName string = 'archive'

@description('Optional. Name of the exports container (EXPORT_CONTAINER).')
param exportContainerName string = 'exports'

@description('Optional. Days after which an export file is deleted; longer than the longest link (EXPORT_LINK_TTL_S, at most 7 days).')
@minValue(8)
param exportRetentionDays int = 8

@description('Optional. Days after the last modification before a blob moves to the Cool tier.')
@minValue(1)
param coolAfterDays int = 30

@description('Optional. Days after the last modification before a blob moves to the Archive tier.')
@minValue(2)
param archiveAfterDays int = 180

// Storage account names: 3-24 lower-case letters and digits.
var accountName = take(toLower('starc${replace(name, '-', '')}${resourceToken}'), 24)

resource storageAccount 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  #checkov:skip=CKV_AZURE_43:The name is built from the resource token (take(..., 24) of lower-case letters and digits); the check cannot evaluate interpolation.
  #checkov:skip=CKV_AZURE_59:Reached from a Flex Consumption app without VNet integration, so public network access stays on; no anonymous access (allowBlobPublicAccess false).
  #checkov:skip=CKV_AZURE_35:Same reason: the app reaches it over the public endpoint. Access needs an Entra ID role (shared keys are off).
  name: accountName
  location: location
  tags: tags
  kind: 'StorageV2'
  // Geo-redundant: the archive is the only copy of old readings once PostgreSQL has dropped them.
  sku: {
    name: 'Standard_GRS'
  }
  properties: {
    accessTier: 'Hot'
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: 'Allow'
    }
    encryption: {
      keySource: 'Microsoft.Storage'
      services: {
        blob: {
          enabled: true
        }
      }
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storageAccount
  name: 'default'
}

resource archiveContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: archiveContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource exportContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: exportContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource lifecyclePolicy 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storageAccount
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'archive-cool-then-archive'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${archiveContainerName}/'
              ]
            }
            actions: {
              baseBlob: {
                tierToCool: {
                  daysAfterModificationGreaterThan: coolAfterDays
                }
                tierToArchive: {
                  daysAfterModificationGreaterThan: archiveAfterDays
                }
              }
            }
          }
        }
        {
          name: 'exports-delete-after-links-expire'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                '${exportContainerName}/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: exportRetentionDays
                }
              }
            }
          }
        }
      ]
    }
  }
}

@description('Name of the archive storage account.')
output storageAccountName string = storageAccount.name

@description('Resource ID of the archive storage account.')
output storageAccountId string = storageAccount.id

@description('Name of the archive container.')
output archiveContainerName string = archiveContainer.name

@description('Name of the exports container.')
output exportContainerName string = exportContainer.name

@description('Blob endpoint of the archive storage account.')
output blobEndpoint string = storageAccount.properties.primaryEndpoints.blob
