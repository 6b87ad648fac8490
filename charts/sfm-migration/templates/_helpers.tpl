{{/*
Names, labels and images, defined once for every template.
*/}}

{{- define "sfm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* "<release>-sfm-migration", or the release name when it already contains the chart name. */}}
{{- define "sfm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects carry the namespace too, so two releases of the same name never collide. */}}
{{- define "sfm.clusterName" -}}
{{- printf "%s-%s" .root.Release.Namespace (include "sfm.fullname" .root) | trunc 52 | trimSuffix "-" -}}-{{ .component }}
{{- end -}}

{{- define "sfm.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "sfm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sfm-migration
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Labels of one component: call with (dict "root" $ "component" "operator"). */}}
{{- define "sfm.componentLabels" -}}
{{ include "sfm.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "sfm.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sfm.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The image of one component: (dict "root" $ "image" .Values.operator.image). */}}
{{- define "sfm.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "sfm.operatorName" -}}{{ include "sfm.fullname" . }}-operator{{- end -}}
{{- define "sfm.apiName" -}}{{ include "sfm.fullname" . }}-api{{- end -}}

{{/* Peers of the operator's and API's pods, from other namespaces' point of view. */}}
{{- define "sfm.componentPeer" -}}
- namespaceSelector:
    matchLabels:
      kubernetes.io/metadata.name: {{ .root.Release.Namespace }}
  podSelector:
    matchLabels:
      {{- include "sfm.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* Egress of a component: DNS, the Kubernetes API server, PostgreSQL. */}}
{{- define "sfm.commonEgress" -}}
{{- $np := .Values.networkPolicy -}}
- ports:
    - {protocol: UDP, port: 53}
    - {protocol: TCP, port: 53}
  {{- with $np.egress.dnsTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
- ports:
    {{- range $np.egress.kubeApiServer.ports }}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
  to:
    {{- range $np.egress.kubeApiServer.cidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
- ports:
    - {protocol: TCP, port: {{ $np.postgresql.port }}}
  {{- if or $np.postgresql.inCluster.enabled $np.postgresql.cidrs }}
  to:
    {{- if $np.postgresql.inCluster.enabled }}
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ $np.postgresql.inCluster.namespace | default .Release.Namespace }}
      podSelector:
        matchLabels:
          {{- toYaml $np.postgresql.inCluster.podLabels | nindent 10 }}
    {{- end }}
    {{- range $np.postgresql.cidrs }}
    - ipBlock: {cidr: {{ . | quote }}}
    {{- end }}
  {{- end }}
{{- end -}}

{{/* Checks the values cannot express alone. */}}
{{- define "sfm.validate" -}}
{{- if and .Values.operator.enabled (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) -}}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled=true: two operators must never reconcile at once" -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled .Values.networkPolicy.postgresql.inCluster.enabled (empty .Values.networkPolicy.postgresql.inCluster.podLabels) -}}
{{- fail "networkPolicy.postgresql.inCluster.podLabels must select the PostgreSQL pods" -}}
{{- end -}}
{{- if and .Values.api.enabled (empty .Values.api.decryptionKeys) -}}
{{- fail "api.decryptionKeys needs at least one Secret with the private key the FM export is encrypted to" -}}
{{- end -}}
{{- end -}}

{{/* The operator's rules in the namespaces it watches (cluster-wide unless operator.watchNamespace). */}}
{{- define "sfm.operatorRules" -}}
- apiGroups: [sfm.nhn.no]
  resources: [migrationdatabases]
  verbs: [get, list, watch, patch]
- apiGroups: [sfm.nhn.no]
  resources: [migrationdatabases/status, migrationkeys/status]
  verbs: [patch]
- apiGroups: [sfm.nhn.no]
  resources: [migrationkeys]
  verbs: [get, list, watch, patch]  # patch: the sfm.nhn.no/key-id label the API finds a key by
- apiGroups: [sfm.nhn.no]
  resources: [migrationdatabases/finalizers, migrationkeys/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}
