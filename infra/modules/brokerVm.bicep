// The Mosquitto VM: Ubuntu 24.04, SSH keys only, configured on first boot by ../cloud-init.yaml, whose
// mosquitto.conf is ../generated/mosquitto.conf (rendered from shared/broker/contract.py by
// infra/render_broker_conf.py; tests/infra/test_bicep.py keeps the two identical). Its TLS certificate comes from a
// CA generated on the VM, or, with letsEncryptEmail, from Let's Encrypt (../letsencrypt.sh).
//
// Azure never changes a VM's customData once the VM exists (osProfile.customData: "cannot be updated after the VM is
// created"; a PUT with another value fails with PropertyChangeNotAllowed), and cloud-init reads it on the first boot
// only. So with brokerVmExists the VM (./brokerVmInstance.bicep) is not deployed: it is referenced as `existing`, the
// NIC and the outputs still resolve, and nothing of cloud-init is reapplied (scripts/deploy says so and how to roll
// broker changes: docs/runbook.md 6.8). The VM keeps the hash of the cloud-init it was created with (tag
// mqtt-saas-cloud-init) and its certificate mode (tag mqtt-saas-broker-certificate); output cloudInitHash is the hash
// of what this template would give a new VM, so a redeploy can tell whether the broker runs the repository's.

@description('Required. Base name of the resources, e.g. "mqtt-saas".')
param name string

@description('Optional. Location of the resources.')
param location string = resourceGroup().location

@description('Optional. Tags of the resources.')
param tags object = {}

@description('Required. Unique suffix for globally unique names (from uniqueString in main.bicep).')
param resourceToken string

@description('Required. Resource ID of the subnet the VM joins.')
param subnetId string

@description('Required. Resource ID of the public IP of the broker.')
param publicIpId string

@description('Required. Host name of the broker (the public IP\'s DNS name, or a custom name pointing at it); it goes into the server certificate.')
param brokerFqdn string

@description('Optional. VM size. B1s (1 vCPU, 1 GiB) carries one Mosquitto for a small fleet.')
param vmSize string = 'Standard_B1s'

@description('Optional. Name of the SSH admin user.')
param adminUsername string = 'azureuser'

@description('Required. SSH public key of the admin user (password login is disabled).')
@minLength(80)
param adminSshPublicKey string

@description('Required. URI of the key vault holding mqtt-ingest-password, mqtt-provisioner-password and mqtt-commander-password, ending in "/".')
param keyVaultUri string

@description('Optional. Add an MQTT-over-WebSockets (TLS) listener on 8884.')
param enableWebsockets bool = false

@description('Optional. E-mail address of the Let\'s Encrypt account. Set: ../letsencrypt.sh gets the broker a Let\'s Encrypt certificate for brokerFqdn (HTTP-01 on port 80, open only while certbot runs). Empty: the generated CA only.')
param letsEncryptEmail string = ''

@description('Optional. The VM exists already (scripts/deploy checks): it is referenced, not redeployed, since Azure refuses any change of its customData (cloud-init) and cloud-init would not run again anyway. vmSize, adminSshPublicKey and the cloud-init parameters then change nothing on it.')
param brokerVmExists bool = false

@description('Optional. Key type of the Let\'s Encrypt certificate: ecdsa (P-256) or rsa (2048).')
@allowed([
  'ecdsa'
  'rsa'
])
param letsEncryptKeyType string = 'ecdsa'

// One replace per placeholder: pycep (checkov's parser) reads a function call only on one line.
var cloudInitTemplate = loadTextContent('../cloud-init.yaml')
var mosquittoConfBase64 = loadFileAsBase64('../generated/mosquitto.conf')
var cloudInitWithConf = replace(cloudInitTemplate, '__MOSQUITTO_CONF_B64__', mosquittoConfBase64)
var cloudInitWithFqdn = replace(cloudInitWithConf, '__BROKER_FQDN__', brokerFqdn)
var cloudInitWithWebsockets = replace(cloudInitWithFqdn, '__ENABLE_WEBSOCKETS__', enableWebsockets ? 'true' : 'false')
var cloudInitWithAdmin = replace(cloudInitWithWebsockets, '__ADMIN_USERNAME__', adminUsername)
var dynsecBootstrapBase64 = loadFileAsBase64('../generated/dynsec-bootstrap.sh')
var cloudInitWithDynsec = replace(cloudInitWithAdmin, '__DYNSEC_BOOTSTRAP_B64__', dynsecBootstrapBase64)
var cloudInitWithKeyVault = replace(cloudInitWithDynsec, '__KEY_VAULT_URI__', keyVaultUri)
// Written in both modes: certbot's deploy hook with Let's Encrypt, the yearly rotation with the generated CA.
var rotateBrokerCertBase64 = loadFileAsBase64('../../scripts/rotate_broker_cert')
var cloudInitWithRotate = replace(cloudInitWithKeyVault, '__ROTATE_BROKER_CERT_B64__', rotateBrokerCertBase64)
var letsEncryptScriptBase64 = loadFileAsBase64('../letsencrypt.sh')
var cloudInitWithLetsEncrypt = replace(cloudInitWithRotate, '__LETSENCRYPT_SH_B64__', letsEncryptScriptBase64)
var cloudInitWithEmail = replace(cloudInitWithLetsEncrypt, '__LETSENCRYPT_EMAIL__', letsEncryptEmail)
var cloudInit = replace(cloudInitWithEmail, '__LETSENCRYPT_KEY_TYPE__', letsEncryptKeyType)
// Identifies the cloud-init a VM was created with (13 characters; any change of the rendered text changes it).
var cloudInitHash = uniqueString(cloudInit)
var vmName = 'vm-${name}-${resourceToken}'

resource networkInterface 'Microsoft.Network/networkInterfaces@2023-11-01' = {
  name: 'nic-${name}-${resourceToken}'
  location: location
  tags: tags
  properties: {
    ipConfigurations: [
      {
        name: 'ipconfig1'
        properties: {
          privateIPAllocationMethod: 'Dynamic'
          subnet: {
            id: subnetId
          }
          publicIPAddress: {
            id: publicIpId
          }
        }
      }
    ]
  }
}

module virtualMachine 'brokerVmInstance.bicep' = if (!brokerVmExists) {
  name: 'broker-vm-instance-${resourceToken}'
  params: {
    vmName: vmName
    location: location
    // What the VM was created with, kept on it: the VM is never redeployed, so these stay true of its first boot
    // (scripts/deploy compares them with what the template renders now).
    tags: union(tags, {
      'mqtt-saas-cloud-init': cloudInitHash
      'mqtt-saas-broker-certificate': empty(letsEncryptEmail) ? 'generated-ca' : 'letsencrypt'
    })
    osDiskName: 'osdisk-${name}-${resourceToken}'
    networkInterfaceId: networkInterface.id
    vmSize: vmSize
    adminUsername: adminUsername
    adminSshPublicKey: adminSshPublicKey
    customData: base64(cloudInit)
  }
}

// Read only when brokerVmExists; ARM's if() evaluates the branch it takes only, so a new VM is never looked up.
resource existingVirtualMachine 'Microsoft.Compute/virtualMachines@2024-03-01' existing = if (brokerVmExists) {
  name: vmName
}

@description('Resource ID of the VM (the CPU alert watches it).')
output vmId string = brokerVmExists ? existingVirtualMachine.id : virtualMachine.outputs.vmId

@description('Name of the VM (az vm run-command invoke -n, az vm show -n).')
output vmName string = vmName

@description('Object ID of the VM\'s system-assigned identity (Key Vault Secrets User on the broker\'s three passwords).')
output principalId string = brokerVmExists ? existingVirtualMachine.identity.principalId : virtualMachine.outputs.principalId

@description('Hash of the cloud-init this template gives a new VM; a VM created with it carries the same in its tag mqtt-saas-cloud-init.')
output cloudInitHash string = cloudInitHash
