// The broker VM itself, created once. modules/brokerVm.bicep deploys this only while the VM does not exist: Azure
// refuses to change customData (cloud-init) on an existing VM (PropertyChangeNotAllowed), and cloud-init reads it on
// the first boot only. A module of its own rather than a conditional resource so that checkov (3.3.30 does not look
// inside `= if (...)` resources) still checks the VM.

@description('Required. Name of the VM.')
param vmName string

@description('Optional. Location of the VM.')
param location string = resourceGroup().location

@description('Optional. Tags of the VM (brokerVm.bicep adds what the VM was created with: mqtt-saas-cloud-init, mqtt-saas-broker-certificate).')
param tags object = {}

@description('Required. Name of the VM\'s OS disk.')
param osDiskName string

@description('Required. Resource ID of the broker\'s network interface.')
param networkInterfaceId string

@description('Optional. VM size. B1s (1 vCPU, 1 GiB) carries one Mosquitto for a small fleet.')
param vmSize string = 'Standard_B1s'

@description('Optional. Name of the SSH admin user.')
param adminUsername string = 'azureuser'

@description('Required. SSH public key of the admin user (password login is disabled).')
@minLength(80)
param adminSshPublicKey string

@description('Required. The rendered cloud-init, base64 (osProfile.customData; no secret in it).')
param customData string

resource virtualMachine 'Microsoft.Compute/virtualMachines@2024-03-01' = {
  #checkov:skip=CKV_AZURE_97:Encryption at host needs the EncryptionAtHost feature registered on the subscription; the OS disk is encrypted at rest by the platform.
  #checkov:skip=CKV_AZURE_151:Azure Disk Encryption is a Windows/BitLocker check; the Linux OS disk uses platform-managed encryption at rest.
  #checkov:skip=CKV_AZURE_50:No VM extensions are installed; cloud-init does the setup. The check cannot tell a cloud-init VM from one with extensions.
  name: vmName
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    hardwareProfile: {
      vmSize: vmSize
    }
    osProfile: {
      computerName: 'mqtt-broker'
      adminUsername: adminUsername
      customData: customData
      linuxConfiguration: {
        disablePasswordAuthentication: true
        ssh: {
          publicKeys: [
            {
              path: '/home/${adminUsername}/.ssh/authorized_keys'
              keyData: adminSshPublicKey
            }
          ]
        }
        patchSettings: {
          patchMode: 'ImageDefault'
        }
      }
    }
    storageProfile: {
      imageReference: {
        publisher: 'Canonical'
        offer: 'ubuntu-24_04-lts'
        sku: 'server'
        version: 'latest'
      }
      osDisk: {
        name: osDiskName
        createOption: 'FromImage'
        diskSizeGB: 30
        managedDisk: {
          storageAccountType: 'StandardSSD_LRS'
        }
        deleteOption: 'Delete'
      }
    }
    networkProfile: {
      networkInterfaces: [
        {
          id: networkInterfaceId
          properties: {
            deleteOption: 'Delete'
          }
        }
      ]
    }
    diagnosticsProfile: {
      bootDiagnostics: {
        enabled: true
      }
    }
  }
}

@description('Resource ID of the VM.')
output vmId string = virtualMachine.id

@description('Object ID of the VM\'s system-assigned identity.')
output principalId string = virtualMachine.identity.principalId
