// Logs and alerts: a Log Analytics workspace, workspace-based Application Insights, an e-mail action group and
// alert rules for failed function executions, drain runs that fail or stop, and the broker VM's CPU.

@description('Required. Base name of the resources, e.g. "mqtt-saas".')
param name string

@description('Optional. Location of the resources.')
param location string = resourceGroup().location

@description('Optional. Tags of the resources.')
param tags object = {}

@description('Required. Unique suffix for globally unique names (from uniqueString in main.bicep).')
param resourceToken string

@description('Required. E-mail address the alerts go to.')
@minLength(3)
param alertEmail string

@description('Optional. Days Log Analytics keeps data.')
@minValue(30)
param retentionInDays int = 30

@description('Optional. Resource ID of the broker VM; when empty, no CPU alert is created.')
param brokerVmId string = ''

@description('Optional. Average CPU percentage of the broker VM over 15 minutes that raises an alert.')
@minValue(1)
@maxValue(100)
param vmCpuThresholdPercent int = 80

resource logAnalytics 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-${name}-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-${name}-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logAnalytics.id
    DisableLocalAuth: true
  }
}

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = {
  name: 'ag-${name}-${resourceToken}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'mqttsaas'
    enabled: true
    emailReceivers: [
      {
        name: 'operator'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

// Any failed function execution in the last 15 minutes (requests is where the Functions host records each one).
resource functionFailuresAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-function-failures-${resourceToken}'
  location: location
  tags: tags
  properties: {
    displayName: 'Function executions failed'
    description: 'At least one function execution failed in the last 15 minutes.'
    severity: 2
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: 'requests | where success == false'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// Every drain run logs one "ingest.summary {json}" line (shared/ingest/drain.py). A run with status "failed".
resource drainFailedAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-drain-failed-${resourceToken}'
  location: location
  tags: tags
  properties: {
    displayName: 'Drain runs failed'
    description: 'A mqtt_ingest run reported status "failed" in its ingest.summary line in the last 15 minutes.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      allOf: [
        {
          query: 'traces | where message startswith "ingest.summary " | extend d = parse_json(substring(message, strlen("ingest.summary "))) | where tostring(d.status) == "failed"'
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

// The timer stopped (app down, deployment broken, lease stuck): no ingest.summary line for 10 minutes while
// the schedule is every minute.
resource drainAbsentAlert 'Microsoft.Insights/scheduledQueryRules@2023-03-15-preview' = {
  name: 'alert-drain-absent-${resourceToken}'
  location: location
  tags: tags
  properties: {
    displayName: 'Drain runs absent'
    description: 'No mqtt_ingest run logged ingest.summary in the last 10 minutes.'
    severity: 1
    enabled: true
    scopes: [
      applicationInsights.id
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT10M'
    criteria: {
      allOf: [
        {
          query: 'traces | where message startswith "ingest.summary "'
          timeAggregation: 'Count'
          operator: 'LessThan'
          threshold: 1
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    actions: {
      actionGroups: [
        actionGroup.id
      ]
    }
  }
}

resource vmCpuAlert 'Microsoft.Insights/metricAlerts@2018-03-01' = if (!empty(brokerVmId)) {
  name: 'alert-broker-cpu-${resourceToken}'
  location: 'global'
  tags: tags
  properties: {
    description: 'The broker VM averaged more than ${vmCpuThresholdPercent}% CPU over 15 minutes (B-series: credits running out).'
    severity: 2
    enabled: true
    scopes: [
      brokerVmId
    ]
    evaluationFrequency: 'PT5M'
    windowSize: 'PT15M'
    criteria: {
      'odata.type': 'Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria'
      allOf: [
        {
          criterionType: 'StaticThresholdCriterion'
          name: 'cpu'
          metricNamespace: 'Microsoft.Compute/virtualMachines'
          metricName: 'Percentage CPU'
          operator: 'GreaterThan'
          threshold: vmCpuThresholdPercent
          timeAggregation: 'Average'
        }
      ]
    }
    actions: [
      {
        actionGroupId: actionGroup.id
      }
    ]
  }
}

@description('Name of the Application Insights component.')
output applicationInsightsName string = applicationInsights.name

@description('Connection string of Application Insights (not a secret: with local auth disabled it only names the resource).')
output applicationInsightsConnectionString string = applicationInsights.properties.ConnectionString

@description('Resource ID of the Log Analytics workspace.')
output logAnalyticsId string = logAnalytics.id
