{{/* The chart's name. */}}
{{- define "understudy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<chart>, or the release name if it already contains the chart's. */}}
{{- define "understudy.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "understudy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "understudy.labels" -}}
helm.sh/chart: {{ include "understudy.chart" . }}
{{ include "understudy.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: understudy
{{- end }}

{{/* Labels selecting the operator's pods. */}}
{{- define "understudy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "understudy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "understudy.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "understudy.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
What the operator reads and writes; the same rules as deploy/02-rbac.yaml. Bound cluster-wide
(ClusterRole) or per watched namespace (Role), see watchNamespaces.
*/}}
{{- define "understudy.operatorRules" -}}
# The four custom resources, watched and updated by their controllers.
- apiGroups: ["understudy.dev"]
  resources: ["haclusters", "failoverrequests", "shardfailovers", "protectiongroups"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["understudy.dev"]
  resources: ["haclusters/status", "failoverrequests/status", "shardfailovers/status", "protectiongroups/status"]
  verbs: ["get", "patch", "update"]
# The switchover that moves the primary off a member before it restarts (spec.instances) is a
# ShardFailover, the audited path a user would take.
- apiGroups: ["understudy.dev"]
  resources: ["shardfailovers"]
  verbs: ["create"]
# Credentials of the managed services, read by the name an HaCluster (or a ProtectionGroup's
# remote site) gives: get only, never listed or watched.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Routing: Services and EndpointSlices pointing at the current primary, written by server-side
# apply (which the API server authorizes as create for a new object and patch otherwise),
# read by name; a cluster's own stale EndpointSlices are listed by label and deleted. Services
# are never deleted by the operator (owner references let the garbage collector do it).
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "create", "patch"]
- apiGroups: ["discovery.k8s.io"]
  resources: ["endpointslices"]
  verbs: ["get", "list", "create", "patch", "delete"]
# Stale Endpoints left behind when an earlier version's selector Service became
# selector-less (the mirroring controller would keep routing to them).
- apiGroups: [""]
  resources: ["endpoints"]
  verbs: ["get", "delete"]
# The role label (understudy.dev/role) on member pods; an unreachable old primary's pod
# is deleted (grace period 0) to fence it during a failover (spec.failover.fencing).
# Members of spec.instances clusters are pods the operator creates, owns and deletes (one at
# a time, never the primary), with a volume each and a PodDisruptionBudget of one. Whoever
# may edit an HaCluster may so have pods run in its namespace, as with a Deployment; the
# pods get the namespace's default service account and pass its pod security admission.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# A member's new resources (spec.instances.resources), given in place where the node can.
- apiGroups: [""]
  resources: ["pods/resize"]
  verbs: ["patch"]
# Volumes grow when spec.instances.storage.size does (patch), where the StorageClass
# allows it; otherwise a member is rebuilt onto a new one.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create"]
{{- if has "*" .Values.redirectNamespaces }}
{{ include "understudy.redirectRule" . }}
{{- end }}
# Client access: spec.acls becomes a NetworkPolicy (read by name, server-side applied; the
# garbage collector removes it with its HaCluster).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "patch"]
{{- if .Values.allowWorkloadRestarts }}
# Restarts of the workloads an HaCluster's redirect lists, after a role change.
- apiGroups: ["apps"]
  resources: ["deployments", "statefulsets", "daemonsets"]
  verbs: ["get", "patch"]
{{- end }}
# An Event for every role change.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* Redirect ConfigMaps: nowhere (default), everywhere the operator works ("*"), or only in the listed namespaces. */}}
{{- define "understudy.redirectRule" -}}
# Redirect configuration (agent engine): the ConfigMap key holding the primary's address,
# read by name and server-side applied; never listed, watched or deleted.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
{{- end }}
