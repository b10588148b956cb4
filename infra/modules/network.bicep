// The broker's network: a virtual network with one subnet, its NSG and a static public IP with a DNS label.
// Inbound: SSH (22) only from the admin's /32, MQTT over TLS (8883) from the Internet, MQTT over WebSockets
// (8884, TLS) only when enableWebsockets is true, HTTP (80) only when enableLetsEncrypt is true (certbot's HTTP-01
// challenge; the VM's ufw opens 80 only while certbot runs). Nothing opens 1883: the broker has no plain-text listener.

@description('Required. Base name of the resources, e.g. "mqtt-saas".')
param name string

@description('Optional. Location of the resources.')
param location string = resourceGroup().location

@description('Optional. Tags of the resources.')
param tags object = {}

@description('Required. Unique suffix for globally unique names (from uniqueString in main.bicep).')
param resourceToken string

@description('Required. The one source address allowed to SSH in, as a /32 CIDR, e.g. "203.0.113.7/32".')
@minLength(9)
param adminSourceCidr string

@description('Optional. Open 8884 (MQTT over WebSockets, TLS) from the Internet.')
param enableWebsockets bool = false

@description('Optional. Open 80 from the Internet for Let\'s Encrypt\'s HTTP-01 challenge (the broker VM\'s firewall opens it only while certbot runs).')
param enableLetsEncrypt bool = false

@description('Optional. DNS label of the public IP: the broker is then <label>.<region>.cloudapp.azure.com.')
param dnsLabel string = '${name}-${resourceToken}'

// Rules are declared inline (not built from variables) so that scanners such as checkov see each one.
resource networkSecurityGroup 'Microsoft.Network/networkSecurityGroups@2023-11-01' = {
  name: 'nsg-${name}-${resourceToken}'
  location: location
  tags: tags
  properties: {
    securityRules: [
      {
        name: 'allow-ssh-admin'
        properties: {
          description: 'SSH from the admin address only.'
          priority: 100
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: adminSourceCidr
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '22'
        }
      }
      {
        name: 'allow-mqtts-internet'
        properties: {
          description: 'MQTT v5 over TLS from devices anywhere.'
          priority: 110
          direction: 'Inbound'
          access: 'Allow'
          protocol: 'Tcp'
          sourceAddressPrefix: 'Internet'
          sourcePortRange: '*'
          destinationAddressPrefix: '*'
          destinationPortRange: '8883'
        }
      }
    ]
  }
}

resource websocketsRule 'Microsoft.Network/networkSecurityGroups/securityRules@2023-11-01' = if (enableWebsockets) {
  parent: networkSecurityGroup
  name: 'allow-mqtt-wss-internet'
  properties: {
    description: 'MQTT over WebSockets (TLS), only when enableWebsockets is true.'
    priority: 120
    direction: 'Inbound'
    access: 'Allow'
    protocol: 'Tcp'
    sourceAddressPrefix: 'Internet'
    sourcePortRange: '*'
    destinationAddressPrefix: '*'
    destinationPortRange: '8884'
  }
}

resource letsEncryptHttpRule 'Microsoft.Network/networkSecurityGroups/securityRules@2023-11-01' = if (enableLetsEncrypt) {
  #checkov:skip=CKV_AZURE_160:Port 80 exists only for Let's Encrypt's HTTP-01 challenge, whose validation servers have no published addresses; nothing listens on it but certbot, and the VM's ufw opens it only while certbot runs.
  parent: networkSecurityGroup
  name: 'allow-http01-letsencrypt'
  properties: {
    description: 'Let\'s Encrypt HTTP-01 challenge (certbot standalone), only when enableLetsEncrypt is true.'
    priority: 130
    direction: 'Inbound'
    access: 'Allow'
    protocol: 'Tcp'
    sourceAddressPrefix: 'Internet'
    sourcePortRange: '*'
    destinationAddressPrefix: '*'
    destinationPortRange: '80'
  }
  // One change at a time to the NSG's rules: two child rules written at once can conflict.
  dependsOn: [
    websocketsRule
  ]
}

resource virtualNetwork 'Microsoft.Network/virtualNetworks@2023-11-01' = {
  name: 'vnet-${name}-${resourceToken}'
  location: location
  tags: tags
  properties: {
    addressSpace: {
      addressPrefixes: [
        '10.20.0.0/24'
      ]
    }
    subnets: [
      {
        name: 'snet-broker'
        properties: {
          addressPrefix: '10.20.0.0/27'
          networkSecurityGroup: {
            id: networkSecurityGroup.id
          }
        }
      }
    ]
  }
}

resource publicIp 'Microsoft.Network/publicIPAddresses@2023-11-01' = {
  name: 'pip-${name}-${resourceToken}'
  location: location
  tags: tags
  sku: {
    name: 'Standard'
  }
  properties: {
    publicIPAllocationMethod: 'Static'
    publicIPAddressVersion: 'IPv4'
    dnsSettings: {
      domainNameLabel: dnsLabel
    }
  }
}

@description('Resource ID of the broker subnet.')
output subnetId string = virtualNetwork.properties.subnets[0].id

@description('Resource ID of the NSG.')
output networkSecurityGroupId string = networkSecurityGroup.id

@description('Resource ID of the public IP.')
output publicIpId string = publicIp.id

@description('DNS name of the broker: <label>.<region>.cloudapp.azure.com.')
output brokerFqdn string = publicIp.properties.dnsSettings.fqdn

@description('Public IPv4 address of the broker.')
output brokerIpAddress string = publicIp.properties.ipAddress
